//! Judging a frame, in the order a frame travels: each step owns the parameters it reads from
//! the bundle ([`preprocess::InputSpec`], [`decide::ImageScoreRule`], [`decide::Decision`]), and
//! the bundle composes them.
//!
//! - [`preprocess`]: image → network input tensor.
//! - [`score`]: regression error, predictive variance, calibration and multi-scale fusion.
//! - [`decide`]: from an anomaly map to an image score and a verdict.
//! - [`threshold`]: the reject threshold chosen from the scores of good parts.
//! - [`heatmap`]: colour overlays of anomaly maps for people to look at.

pub mod decide;
pub mod heatmap;
pub mod preprocess;
pub mod score;
pub mod threshold;
