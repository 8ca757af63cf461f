//! # ustad — student–teacher visual anomaly detection on the production line
//!
//! This crate is the line and the measuring tools. What the trainer and the daemon must agree
//! on (the networks, the judging math, the bundle format and the engine) is the `ustad-core`
//! crate beneath it, which `ustad-train` links alone. In the order a frame travels:
//!
//! ```text
//! capture ─▶ core: preprocess ─▶ engine (networks) ─▶ score ─▶ decide ─▶ actuate
//! ```
//!
//! - [`clock`]: one monotonic time base shared with kernel frame and GPIO timestamps.
//! - [`capture`]: frame sources (V4L2 cameras, replay folders) and the one strict, bounded
//!   decoder that the daemon, `score`, `eval` and `bench` all read images with.
//! - `ustad_core::judge` and `ustad_core::engine`: a frame becomes a map, a score and a verdict.
//! - [`actuate`]: the reject-pulse scheduler, GPIO lines and part-present triggers.
//! - [`config`]: the daemon configuration (`ustad.toml`), strictly validated with line numbers;
//!   it builds the drivers' settings.
//! - [`daemon`]: `ustad run` itself: the threaded pipeline with budgets and fail-safe, systemd
//!   integration, metrics, the live page and the archive.
//!
//! The measuring tools:
//!
//! - [`eval`]: image/pixel AUROC, AU-PRO, confusion counts at a threshold, ROC/PRO plots.
//! - [`bench`]: per-frame latency per precision, per-network breakdown, precision advice.
//! - [`percentile`]: the one median and nearest-rank percentile of every timing above and of
//!   the daemon's latency summaries.

pub mod actuate;
pub mod bench;
pub mod capture;
pub mod clock;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod eval;
pub mod percentile;
