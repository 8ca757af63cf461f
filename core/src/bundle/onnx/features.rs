//! The backbone's own features as a scale's teacher.
//!
//! A distilled teacher carries only as much of the ImageNet backbone as a CPU can distil into
//! it. This teacher *is* the backbone: the maps of the nodes that dense distillation regresses,
//! each averaged over its neighbourhood and resampled onto the students' grid, concatenated,
//! and projected to the descriptor by a 1×1 convolution that the trainer fits (a PCA of the
//! good parts' features) with the teacher statistics μ, σ folded in. The whole chain is one
//! ONNX graph, so the engine runs it like any other teacher and the bundle format is unchanged.
//!
//! Geometry (the same as the dense distillation targets): the students' cell `(i, j)` at
//! stride `s` sits on pixel `(i·s, j·s)`; a node at stride `t` has cell `a` centred on pixel
//! `a·t + (t − 1)/2`. Averaging (padding not counted) and bilinear resampling are both
//! separable, so each node becomes `M_y · X · M_xᵀ` with two constant matrices.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
use thiserror::Error;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::{ChannelNorm, GraphWriter, INPUT_NAME, IR_VERSION, OPSET, OUTPUT_NAME, value_info};
use crate::judge::preprocess::InputSpec;
use crate::networks::arch::INPUT_CHANNELS;

/// Problems while building a feature teacher.
#[derive(Debug, Error)]
pub enum FeatureTeacherError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable backbone model: {message}")]
    Model { path: PathBuf, message: String },
    #[error("{path}: no node output named `{node}` (dense.nodes in the backbone's sidecar)")]
    MissingNode { path: PathBuf, node: String },
    #[error("projection maps {found} channels, the backbone taps give {expected}")]
    ProjectionSize { found: usize, expected: usize },
    #[error(
        "the taps were measured on {loaded:?} (height, width) inputs, the bundle's are {asked:?}: \
         not the same size, nor a whole multiple of it on both sides"
    )]
    InputSize {
        loaded: (usize, usize),
        asked: (usize, usize),
    },
}

/// Which backbone maps make the teacher and how the backbone wants its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTap {
    /// Name of the backbone graph's image input.
    pub input: String,
    /// Per-channel `(pixel − mean) / std` on 0..255 pixels, as the backbone was trained.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Node outputs to read, concatenated in this order.
    pub nodes: Vec<String>,
    /// Side of the square averaging window on each node's own grid (odd, 1 = none).
    pub neighbourhood: usize,
}

/// The continuous source coordinate of grid cell `i` (stride `grid_stride`) on a node axis of
/// `len` cells at stride `node_stride`: `(low index, high index, weight of high)`.
pub fn source_coordinate(
    i: usize,
    grid_stride: usize,
    node_stride: f32,
    len: usize,
) -> (usize, usize, f32) {
    let centre = i as f32 * grid_stride as f32;
    let u = ((centre - (node_stride - 1.0) / 2.0) / node_stride).clamp(0.0, (len - 1) as f32);
    let low = u.floor() as usize;
    let high = (low + 1).min(len - 1);
    (low, high, u - low as f32)
}

/// `out_len × node_len` matrix of one axis: the box average over `neighbourhood` cells
/// (clipped at the border, divided by the cells covered), then the bilinear read of each grid
/// cell.
pub fn axis_matrix(
    out_len: usize,
    grid_stride: usize,
    input_len: usize,
    node_len: usize,
    neighbourhood: usize,
) -> Vec<f32> {
    let r = neighbourhood / 2;
    let average = |row: usize| -> Vec<f32> {
        let (lo, hi) = (row.saturating_sub(r), (row + r).min(node_len - 1));
        let weight = 1.0 / (hi - lo + 1) as f32;
        (0..node_len)
            .map(|k| if (lo..=hi).contains(&k) { weight } else { 0.0 })
            .collect()
    };
    let node_stride = input_len as f32 / node_len as f32;
    let mut matrix = Vec::with_capacity(out_len * node_len);
    for i in 0..out_len {
        let (low, high, f) = source_coordinate(i, grid_stride, node_stride, node_len);
        let (a, b) = (average(low), average(high));
        matrix.extend(a.iter().zip(&b).map(|(x, y)| x * (1.0 - f) + y * f));
    }
    matrix
}

/// A 1×1 convolution from the concatenated backbone channels to the descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// `outputs × inputs`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
}

impl Projection {
    pub fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// Applies the projection to a `inputs × cells` map, giving `outputs × cells`.
    pub fn apply(&self, map: &[f32]) -> Vec<f32> {
        let cells = map.len() / self.inputs;
        let mut out = vec![0.0f32; self.outputs() * cells];
        for (k, row) in self.weight.chunks_exact(self.inputs).enumerate() {
            let dst = &mut out[k * cells..(k + 1) * cells];
            dst.fill(self.bias[k]);
            for (c, &w) in row.iter().enumerate() {
                if w != 0.0 {
                    let src = &map[c * cells..(c + 1) * cells];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += w * s;
                    }
                }
            }
        }
        out
    }

    /// The same projection followed by `(y − mean) / std` per output channel (folded as a
    /// distilled teacher's last convolution is).
    pub fn then_normalise(&self, norm: &ChannelNorm) -> Projection {
        let (weight, bias) = super::fold_normalisation(&self.weight, &self.bias, norm);
        Projection {
            weight,
            bias,
            inputs: self.inputs,
        }
    }
}

/// The backbone cut after its tapped nodes, with the shapes those nodes have at one input size.
#[derive(Debug, Clone)]
pub struct FeatureTeacher {
    backbone: pb::ModelProto,
    tap: FeatureTap,
    height: usize,
    width: usize,
    /// `(channels, height, width)` of each tapped node, in `tap.nodes` order.
    shapes: Vec<(usize, usize, usize)>,
    source: PathBuf,
}

impl FeatureTeacher {
    /// Reads the backbone ONNX, keeps only what the tapped nodes need, and measures their map
    /// shapes for a `height × width` input.
    pub fn load(
        onnx: &Path,
        tap: FeatureTap,
        height: usize,
        width: usize,
    ) -> Result<Self, FeatureTeacherError> {
        let model_error = |message: String| FeatureTeacherError::Model {
            path: onnx.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(onnx).map_err(|source| FeatureTeacherError::Io {
            path: onnx.to_path_buf(),
            source,
        })?;
        let mut backbone = pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| model_error(format!("not ONNX protobuf: {e}")))?;
        let graph = backbone
            .graph
            .as_mut()
            .ok_or_else(|| model_error("no graph".into()))?;
        if !graph.input.iter().any(|i| i.name == tap.input) {
            return Err(model_error(format!("no graph input named `{}`", tap.input)));
        }
        prune(graph, &tap.nodes).map_err(|node| FeatureTeacherError::MissingNode {
            path: onnx.to_path_buf(),
            node,
        })?;
        let shapes = node_shapes(&backbone, &tap, height, width).map_err(model_error)?;
        Ok(Self {
            backbone,
            tap,
            height,
            width,
            shapes,
            source: onnx.to_path_buf(),
        })
    }

    /// Channels of the concatenated maps (the projection's inputs).
    pub fn channels(&self) -> usize {
        self.shapes.iter().map(|s| s.0).sum()
    }

    /// The tapped nodes' `(channels, height, width)`.
    pub fn shapes(&self) -> &[(usize, usize, usize)] {
        &self.shapes
    }

    pub fn tap(&self) -> &FeatureTap {
        &self.tap
    }

    /// The backbone file it was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The teacher graph on `input` (the bundle's pixels) at `stride`, with a
    /// `grid.0 × grid.1` output. Without `projection` it outputs the raw concatenated maps
    /// (`channels()` wide, for fitting the projection); with it, the descriptor.
    pub fn graph(
        &self,
        input: &InputSpec,
        stride: usize,
        grid: (usize, usize),
        projection: Option<&Projection>,
    ) -> Result<pb::ModelProto, FeatureTeacherError> {
        if let Some(p) = projection
            && p.inputs != self.channels()
        {
            return Err(FeatureTeacherError::ProjectionSize {
                found: p.inputs,
                expected: self.channels(),
            });
        }
        let reduction = input.height / self.height;
        if reduction == 0
            || (input.height, input.width) != (self.height * reduction, self.width * reduction)
        {
            return Err(FeatureTeacherError::InputSize {
                loaded: (self.height, self.width),
                asked: (input.height, input.width),
            });
        }
        let mut model = self.backbone.clone();
        let Some(backbone) = model.graph.take() else {
            unreachable!("load() refused a model without a graph");
        };
        let mut graph = GraphWriter::default();
        self.pixel_conversion(&mut graph, input, reduction);
        graph.nodes.extend(backbone.node);
        graph.initializers.extend(backbone.initializer);
        let mut concatenated = Vec::with_capacity(self.tap.nodes.len());
        for (node, &(_, h, w)) in self.tap.nodes.iter().zip(&self.shapes) {
            let rows = axis_matrix(grid.0, stride, self.height, h, self.tap.neighbourhood);
            let cols = axis_matrix(grid.1, stride, self.width, w, self.tap.neighbourhood);
            let cols_t = transpose(&cols, grid.1, w);
            let (rows_name, cols_name) = (format!("{node}.rows"), format!("{node}.cols"));
            graph.initializer(&rows_name, &[grid.0, h], rows);
            graph.initializer(&cols_name, &[w, grid.1], cols_t);
            let across = format!("{node}.across");
            graph.node("MatMul", &[node, &cols_name], &across, vec![]);
            let resampled = format!("{node}.resampled");
            graph.node("MatMul", &[&rows_name, &across], &resampled, vec![]);
            concatenated.push(resampled);
        }
        let refs: Vec<&str> = concatenated.iter().map(String::as_str).collect();
        let concat = if projection.is_some() {
            "features"
        } else {
            OUTPUT_NAME
        };
        graph.node("Concat", &refs, concat, vec![int("axis", 1)]);
        let out_channels = match projection {
            None => self.channels(),
            Some(p) => {
                graph.initializer(
                    "projection.weight",
                    &[p.outputs(), p.inputs, 1, 1],
                    p.weight.clone(),
                );
                graph.initializer("projection.bias", &[p.outputs()], p.bias.clone());
                graph.node(
                    "Conv",
                    &[concat, "projection.weight", "projection.bias"],
                    OUTPUT_NAME,
                    vec![super::ints("kernel_shape", &[1, 1])],
                );
                p.outputs()
            }
        };
        model.graph = Some(pb::GraphProto {
            name: "ustad_backbone_features".into(),
            node: graph.nodes,
            initializer: graph.initializers,
            input: vec![value_info(
                INPUT_NAME,
                &[1, INPUT_CHANNELS, input.height, input.width],
            )],
            output: vec![value_info(OUTPUT_NAME, &[1, out_channels, grid.0, grid.1])],
            ..Default::default()
        });
        model.ir_version = model.ir_version.max(IR_VERSION);
        if model.opset_import.iter().all(|o| !o.domain.is_empty()) {
            model.opset_import.push(pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            });
        }
        model.producer_name = "ustad".into();
        model.producer_version = env!("CARGO_PKG_VERSION").into();
        Ok(model)
    }

    /// The bundle's `(p/255 − m)/s` pixels turned into the backbone's `(p − m_b)/s_b`, which is
    /// the per-channel affine `x · 255 s / s_b + (255 m − m_b) / s_b`, writing the backbone's
    /// own input name so its first node reads it unchanged. With a `reduction` above 1 the
    /// converted pixels are then downscaled `reduction` times ([`downscale`]).
    fn pixel_conversion(&self, graph: &mut GraphWriter, input: &InputSpec, reduction: usize) {
        let scale: Vec<f32> = (0..3)
            .map(|c| 255.0 * input.std[c] / self.tap.std[c])
            .collect();
        let shift: Vec<f32> = (0..3)
            .map(|c| (255.0 * input.mean[c] - self.tap.mean[c]) / self.tap.std[c])
            .collect();
        graph.initializer("pixels.scale", &[1, 3, 1, 1], scale);
        graph.initializer("pixels.shift", &[1, 3, 1, 1], shift);
        graph.node(
            "Mul",
            &[INPUT_NAME, "pixels.scale"],
            "pixels.scaled",
            vec![],
        );
        if reduction == 1 {
            graph.node(
                "Add",
                &["pixels.scaled", "pixels.shift"],
                &self.tap.input,
                vec![],
            );
            return;
        }
        graph.node(
            "Add",
            &["pixels.scaled", "pixels.shift"],
            "pixels.converted",
            vec![],
        );
        downscale(
            graph,
            "pixels.converted",
            &self.tap.input,
            reduction,
            (input.height, input.width),
        );
    }
}

/// The `k × k`-times smaller image, as the engine's own resize of a frame would give it: the
/// triangle (bilinear) filter over `2k` source pixels around each output pixel, renormalised
/// where it runs past the border (as the `image` crate's `Triangle` resize does). A
/// depthwise convolution with zero padding, then a constant map of `1 / (weights inside)`.
/// The engine resizes every frame once, to the bundle's input; a scale with a reduced view
/// sees that input filtered down in its graph, so one resize serves every scale.
fn downscale(
    graph: &mut GraphWriter,
    input: &str,
    output: &str,
    k: usize,
    (height, width): (usize, usize),
) {
    let (weights, pad) = triangle_taps(k);
    let taps = weights.len();
    let kernel: Vec<f32> = (0..INPUT_CHANNELS)
        .flat_map(|_| {
            weights
                .iter()
                .flat_map(|&a| weights.iter().map(move |&b| a * b))
                .collect::<Vec<_>>()
        })
        .collect();
    graph.initializer(
        "pixels.downscale.weight",
        &[INPUT_CHANNELS, 1, taps, taps],
        kernel,
    );
    graph.node(
        "Conv",
        &[input, "pixels.downscale.weight"],
        "pixels.downscaled",
        vec![
            super::ints("kernel_shape", &[taps, taps]),
            super::ints("strides", &[k, k]),
            super::ints("pads", &[pad, pad, pad, pad]),
            int("group", INPUT_CHANNELS as i64),
        ],
    );
    // Sum of the taps inside the image, per output row and column (separable).
    let inside = |len: usize| -> Vec<f32> {
        (0..len / k)
            .map(|i| {
                (0..taps)
                    .filter(|&t| (k * i + t).checked_sub(pad).is_some_and(|j| j < len))
                    .map(|t| weights[t])
                    .sum()
            })
            .collect()
    };
    let (rows, cols) = (inside(height), inside(width));
    let norm: Vec<f32> = rows
        .iter()
        .flat_map(|r| cols.iter().map(move |c| 1.0 / (r * c)))
        .collect();
    graph.initializer(
        "pixels.downscale.norm",
        &[1, 1, height / k, width / k],
        norm,
    );
    graph.node(
        "Mul",
        &["pixels.downscaled", "pixels.downscale.norm"],
        output,
        vec![],
    );
}

/// The 1-D triangle filter of a `k`-times downscale and its padding: output pixel `i` is
/// centred on source pixel `k·i + (k − 1)/2` and weighs source pixel `j` by
/// `max(0, 1 − |j − centre| / k)`; tap `t` reads `j = k·i − pad + t`. Normalised to sum 1.
pub fn triangle_taps(k: usize) -> (Vec<f32>, usize) {
    let pad = k / 2;
    let taps = 2 * pad + k;
    let weights: Vec<f32> = (0..taps)
        .map(|t| {
            let d = t as f32 - pad as f32 - (k as f32 - 1.0) / 2.0;
            (1.0 - d.abs() / k as f32).max(0.0)
        })
        .collect();
    let sum: f32 = weights.iter().sum();
    (weights.iter().map(|w| w / sum).collect(), pad)
}

/// Keeps the nodes (and initialisers) that the outputs `keep` depend on; `Err(name)` names a
/// requested output that no node produces.
fn prune(graph: &mut pb::GraphProto, keep: &[String]) -> Result<(), String> {
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut needed: HashSet<usize> = HashSet::new();
    let mut stack = Vec::new();
    for name in keep {
        stack.push(*producer.get(name.as_str()).ok_or_else(|| name.clone())?);
    }
    while let Some(i) = stack.pop() {
        if needed.insert(i) {
            stack.extend(
                graph.node[i]
                    .input
                    .iter()
                    .filter_map(|input| producer.get(input.as_str()).copied()),
            );
        }
    }
    let nodes = std::mem::take(&mut graph.node);
    graph.node = nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| needed.contains(i))
        .map(|(_, n)| n)
        .collect();
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let initializers = std::mem::take(&mut graph.initializer);
    graph.initializer = initializers
        .into_iter()
        .filter(|t| used.contains(t.name.as_str()))
        .collect();
    graph.value_info.clear();
    graph.output = keep
        .iter()
        .map(|name| pb::ValueInfoProto {
            name: name.clone(),
            ..Default::default()
        })
        .collect();
    Ok(())
}

/// The tapped nodes' map shapes at `1 × 3 × height × width`, by running tract's shape analysis.
fn node_shapes(
    backbone: &pb::ModelProto,
    tap: &FeatureTap,
    height: usize,
    width: usize,
) -> Result<Vec<(usize, usize, usize)>, String> {
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(backbone)
        .map_err(|e| format!("{e:#}"))?;
    model
        .select_outputs_by_name(tap.nodes.iter().map(String::as_str))
        .map_err(|e| format!("{e:#}"))?;
    let model = model
        .with_input_fact(0, f32::fact([1, 3, height, width]).into())
        .and_then(|m| m.into_typed())
        .map_err(|e| format!("{e:#}"))?;
    tap.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let fact = model.output_fact(i).map_err(|e| format!("{e:#}"))?;
            match fact.shape.as_concrete() {
                Some(&[1, c, h, w]) => Ok((c, h, w)),
                other => Err(format!(
                    "node `{node}` has shape {other:?} on a {height}×{width} input, expected [1, C, H, W]"
                )),
            }
        })
        .collect()
}

fn transpose(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| matrix[r * cols + c]))
        .collect()
}

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_matrix_rows_are_convex_weights() {
        // 32 cells at stride 4 on 128 px reading a 16-cell stride-8 node with 3×3 averaging.
        let m = axis_matrix(32, 4, 128, 16, 3);
        for row in m.chunks_exact(16) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
            assert!(row.iter().all(|w| *w >= 0.0));
        }
    }

    #[test]
    fn axis_matrix_without_averaging_is_bilinear() {
        // Cell 3 at stride 4 reads u = (12 − 3.5) / 8 = 1.0625 on a stride-8 axis.
        let m = axis_matrix(8, 4, 64, 8, 1);
        let row = &m[3 * 8..4 * 8];
        assert!((row[1] - 0.9375).abs() < 1e-6 && (row[2] - 0.0625).abs() < 1e-6);
        assert_eq!(row.iter().filter(|w| **w != 0.0).count(), 2);
    }

    #[test]
    fn triangle_taps_are_the_bilinear_downscale_filter() {
        // Halving: output pixel 0 is centred between source pixels 0 and 1.
        let (w, pad) = triangle_taps(2);
        assert_eq!(pad, 1);
        let expected = [0.125, 0.375, 0.375, 0.125];
        assert!(
            w.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6),
            "{w:?}"
        );
        // Fifths: nine taps around source pixel 2, peaking there, symmetric, summing to 1.
        let (w, pad) = triangle_taps(5);
        assert_eq!((w.len(), pad), (9, 2));
        assert!(w[4] > w[3] && (w[0] - w[8]).abs() < 1e-7 && w[0] > 0.0);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn projection_folds_normalisation() {
        let p = Projection {
            weight: vec![1.0, 2.0, 0.5, -1.0],
            bias: vec![0.5, 1.0],
            inputs: 2,
        };
        let norm = ChannelNorm {
            mean: vec![1.0, -2.0],
            std: vec![2.0, 4.0],
        };
        let map = vec![1.0, 3.0, -1.0, 2.0]; // 2 channels × 2 cells
        let plain = p.apply(&map);
        let folded = p.then_normalise(&norm).apply(&map);
        for (k, (a, b)) in plain.iter().zip(&folded).enumerate() {
            let c = k / 2;
            assert!(((a - norm.mean[c]) / norm.std[c] - b).abs() < 1e-6);
        }
    }
}
