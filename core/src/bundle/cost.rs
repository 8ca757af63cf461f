//! What a bundle's networks cost: multiply-accumulates per network, counted from the graph
//! files, and per conv layer of each scale's students, counted from their architecture.
//!
//! `ustad bench` reports these beside its timings (which layer bounds the speed), and the
//! trainer's presets are chosen on them, so the count lives with the bundle both read.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use super::Bundle;
use crate::networks::arch::Mode;

/// A network whose cost cannot be counted: its graph does not load, or its geometry does not
/// fit the bundle's input.
#[derive(Debug, Error)]
#[error("scale {scale}: {message}")]
pub struct CostError {
    pub scale: usize,
    pub message: String,
}

/// Multiply-accumulates per network of `bundle` for one frame, in engine order (per scale:
/// teacher, then students), counted from the f32 graph files themselves: a backbone teacher is
/// not a patch network, so the architecture's count would be wrong for it.
pub fn network_macs(bundle: &Bundle) -> Result<Vec<u64>, CostError> {
    let m = &bundle.manifest;
    let mut out = Vec::new();
    for (index, scale) in m.scales.iter().enumerate() {
        for file in std::iter::once(&scale.teacher).chain(&scale.students) {
            let path = bundle.file(file);
            let macs =
                graph_macs(&path, [1, 3, m.input.height, m.input.width]).map_err(|message| {
                    CostError {
                        scale: index,
                        message: format!("{}: {message}", path.display()),
                    }
                })?;
            out.push(macs);
        }
    }
    Ok(out)
}

/// Multiply-accumulates of one run of the ONNX graph at `path` on an input of `shape`: the sum
/// of tract's FMA cost over the nodes of the decluttered (not yet kernel-optimised) graph.
pub fn graph_macs(path: &Path, shape: [usize; 4]) -> Result<u64, String> {
    use tract_onnx::prelude::*;
    let error = |e: TractError| format!("{e:#}");
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .map_err(error)?;
    let mut total = 0u64;
    for node in model.nodes() {
        let inputs = model.node_input_facts(node.id).map_err(error)?;
        for (cost, count) in node.op.cost(&inputs).map_err(error)? {
            if matches!(cost, tract_onnx::tract_core::ops::Cost::FMA(_)) {
                let count = count.to_i64().map_err(|e| e.to_string())?;
                total += u64::try_from(count).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(total)
}

/// Multiply-accumulates of one conv layer of one network for one frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerMacs {
    /// e.g. `conv5x5 128->256 d2 @ 60x60` (kernel, channels, dilation, output size).
    pub layer: String,
    pub macs: u64,
    /// Share of the network's MACs.
    pub share: f64,
}

/// The arithmetic of one scale's network, layer by layer: which layer bounds the speed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleCost {
    pub patch_size: usize,
    pub stride: usize,
    /// Students of the scale; the per-layer list is one student's (a teacher may be another
    /// graph altogether, the backbone's: `ustad bench`'s per-network timing counts each file).
    pub students: usize,
    pub macs_per_student: u64,
    pub layers: Vec<LayerMacs>,
}

/// Per-layer MACs of every scale's students (same geometry walk as [`Architecture::macs`]), so
/// a report can say which layer dominates, not only which network.
pub fn scale_costs(bundle: &Bundle) -> Result<Vec<ScaleCost>, CostError> {
    let m = &bundle.manifest;
    let mut out = Vec::new();
    for (index, scale) in m.scales.iter().enumerate() {
        let geometry = |message: String| CostError {
            scale: index,
            message,
        };
        let arch = scale
            .student_architecture()
            .map_err(|e| geometry(e.to_string()))?;
        let mut layers: Vec<LayerMacs> = arch
            .conv_costs(
                Mode::Image {
                    stride: scale.stride,
                },
                m.input.height,
                m.input.width,
            )
            .map_err(|e| geometry(e.to_string()))?
            .into_iter()
            .map(|c| LayerMacs {
                layer: format!(
                    "conv{k}x{k} {}->{} d{} @ {}x{}",
                    c.in_channels,
                    c.out_channels,
                    c.dilation,
                    c.height,
                    c.width,
                    k = c.kernel
                ),
                macs: c.macs,
                share: 0.0,
            })
            .collect();
        let total: u64 = layers.iter().map(|l| l.macs).sum();
        for l in &mut layers {
            l.share = if total > 0 {
                l.macs as f64 / total as f64
            } else {
                0.0
            };
        }
        out.push(ScaleCost {
            patch_size: scale.patch_size,
            stride: scale.stride,
            students: scale.students.len(),
            macs_per_student: total,
            layers,
        });
    }
    Ok(out)
}
