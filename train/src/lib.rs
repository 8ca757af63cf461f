//! `ustad-train`: teacher distillation, student ensembles, calibration and bundle export.
//!
//! Networks, bundle format and scoring math come from the `ustad` library; this crate adds
//! only what needs a training framework (burn) or a backbone CNN.

pub mod backbone;
pub mod calibrate;
pub mod corpus;
pub mod device;
pub mod fit;
pub mod net;
pub mod pca;
pub mod teacher;
pub mod whiten;
