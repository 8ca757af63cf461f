//! Evaluation of anomaly maps and image scores against ground truth (DESIGN.md §3).
//!
//! - [`metrics`]: image AUROC, ROC curves, pixel AUROC, AU-PRO and the confusion counts at a
//!   deployed threshold — all exact, with ties counted one half.
//! - [`components`]: 8-connected labelling of ground-truth masks, the "regions" AU-PRO averages
//!   over.
//! - [`run`]: the `ustad eval` pipeline: MVTec test split → engine → report, curves, overlays.
//!
//! `ustad eval` is the consumer: it scores a test split, builds one [`PixelEval`] from all maps,
//! and writes the numbers and the plots (drawn by [`ustad_core::plot`], which the trainer's loss
//! curves share).

pub mod components;
pub mod metrics;
pub mod run;

pub use components::{Components, connected_components};
pub use metrics::{
    AurocInterval, CurvePoint, MapSample, Mask, MetricError, Mistakes, PixelEval, ThresholdReport,
    area_under, au_pro, image_auroc, image_auroc_interval, mistakes, pixel_auroc, roc_curve,
};
