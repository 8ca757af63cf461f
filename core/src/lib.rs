//! # ustad-core — what the trainer and the daemon must agree on
//!
//! `ustad-train` writes bundles and `ustad` runs them; both stand on this crate, so they can
//! never disagree on a network, the bundle format or a score. It links no hardware, service or
//! training crate. Layers, lowest first (no module imports one above it):
//!
//! - [`networks`]: architectures, weights and the reference executor.
//! - [`judge`]: preprocess → score → decide, the threshold rule and heatmap colouring.
//! - [`bundle`]: the manifest and its validating loader, the ONNX and int8 writers, and what
//!   the networks cost.
//! - [`engine`]: a bundle loaded into tract, judging frame after frame.
//!
//! Beside them, two helpers both sides use: [`images`] (one walker for image folders and the
//! MVTec AD layout) and [`plot`] (curves as PNG with no font or plotting stack). The tests of
//! every crate share one set of fixtures, `testing` (feature `testing`).

pub mod bundle;
pub mod engine;
pub mod images;
pub mod judge;
pub mod networks;
pub mod plot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
