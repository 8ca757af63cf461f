//! # ustad — student–teacher visual anomaly detection on the production line
//!
//! The library is the edge side of ustad, laid out in the order a frame travels:
//!
//! ```text
//! capture → preprocess → infer → score → decide → actuate
//! ```
//!
//! - [`arch`]: the three patch networks of *Uninformed Students* (p = 17, 33, 65) as plain data,
//!   shared by the trainer (which builds them in burn) and the exporter (which writes ONNX).
//! - [`weights`]: framework-free network weights and their on-disk format.
//! - [`export`]: hand-written ONNX graphs for image-mode inference at any output stride.
//! - [`bundle`]: the model bundle (`bundle.toml` + ONNX files) and its validating loader.
//! - [`preprocess`]: image → network input tensor.
//! - [`infer`]: the tract-backed engine that runs teacher and students of every scale.
//! - [`score`]: regression error, predictive variance, calibration and multi-scale fusion.
//! - [`decide`]: from an anomaly map to an image score and a verdict.
//! - [`heatmap`]: colour overlays of anomaly maps for people to look at.
//! - [`eval`]: image/pixel AUROC, AU-PRO, confusion counts at a threshold, ROC/PRO plots.
//! - [`bench`]: per-frame latency per precision, per-network breakdown, precision advice.
//!
//! Around them, the edge daemon's hardware side:
//!
//! - [`config`]: the daemon configuration (`ustad.toml`), strictly validated with line numbers.
//! - [`clock`]: one monotonic time base shared with kernel frame and GPIO timestamps.
//! - [`capture`]: frame sources (V4L2 cameras, replay folders) and frame decoding.
//! - [`actuate`]: the reject-pulse scheduler, GPIO lines and part-present triggers.
//! - [`daemon`]: `ustad run` itself: the threaded pipeline with budgets and fail-safe, systemd
//!   integration, metrics, the live page and the archive.
//!
//! The trainer (`ustad-train`, a separate workspace member) links this library for all of the
//! above, so the daemon and the trainer can never disagree on the network or the scoring math.

pub mod actuate;
pub mod arch;
pub mod bench;
pub mod bundle;
pub mod calibrate;
pub mod capture;
pub mod clock;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod dataset;
pub mod decide;
pub mod eval;
pub mod export;
pub mod heatmap;
pub mod infer;
pub mod preprocess;
pub mod quantize;
pub mod reference;
pub mod score;
pub mod weights;
