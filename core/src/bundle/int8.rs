//! int8 export: calibrated QOperator graphs that tract runs with integer kernels.
//!
//! tract only reaches its int8 kernels through QOperator ops (`QLinearConv`); QDQ pairs around
//! an f32 `Conv` run in f32 with extra casts (DESIGN.md §5). The graph written here is, for every
//! network of [`crate::networks::arch::Architecture::plan`]:
//!
//! ```text
//! image (f32) → QuantizeLinear (u8)
//!   → QLinearConv (u8 x, int8 symmetric weights, per tensor but per channel in the last conv,
//!                  int32 bias, u8 y)
//!     → [activation] DequantizeLinear → LeakyRelu → QuantizeLinear   (tract: a u8 lookup table)
//!     → [pool] MaxPool on u8 (same strides and dilations as the f32 plan)
//!   → … → last QLinearConv → DequantizeLinear → descriptors (f32)
//! ```
//!
//! Activation scales come from [`activation_ranges`]: the f32 graph run by tract on calibration
//! inputs, with every conv output (pre-activation) and every activation output exposed as extra
//! graph outputs; a tensor's range is its plain min/max over all calibration inputs (no
//! percentile clipping: the networks are small, the descriptors are regressed, and clipping the
//! tails of the descriptor distribution would clip exactly the values anomalies produce).
//! u8 tensors are asymmetric: `scale = (max − min)/255` over the range widened to include 0,
//! `zero_point = round(−min/scale)`, so real 0 (conv zero padding) is exact.

use rayon::prelude::*;
use thiserror::Error;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::bundle::onnx::{
    ExportError, GraphSpec, GraphWriter, INPUT_NAME, OUTPUT_NAME, conv_parameters, float, ints,
    network_graph,
};
use crate::networks::arch::{INPUT_CHANNELS, LEAKY_SLOPE, PlannedLayer};
use crate::networks::weights::NetworkWeights;

/// Problems while calibrating or writing an int8 graph.
#[derive(Debug, Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("tract: {0}")]
    Tract(String),
    #[error("calibration needs at least one input")]
    NoInputs,
    #[error("calibration input has {found} values, expected {expected}")]
    InputSize { found: usize, expected: usize },
    #[error("no calibration range for tensor `{0}`")]
    MissingRange(String),
    #[error("tensor `{name}` has a non-finite range [{min}, {max}]")]
    BadRange { name: String, min: f32, max: f32 },
}

fn tract_error(e: TractError) -> QuantizeError {
    QuantizeError::Tract(format!("{e:#}"))
}

/// Observed value range of one tensor of the f32 graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// Tensor name in the f32 graph: `image`, `conv{i}` (pre-activation; the last conv is
    /// named `descriptors`), `act{i}`.
    pub name: String,
    pub min: f32,
    pub max: f32,
}

impl Range {
    /// Asymmetric u8 quantisation `(scale, zero_point)` of this range, widened to include 0.
    pub fn u8_params(&self) -> (f32, u8) {
        let min = self.min.min(0.0);
        let max = self.max.max(0.0);
        let scale = (max - min) / 255.0;
        let scale = if scale > f32::MIN_POSITIVE * 1e3 {
            scale
        } else {
            1.0
        };
        let zero_point = (-min / scale).round().clamp(0.0, 255.0) as u8;
        (scale, zero_point)
    }
}

/// Pre-activation u8 parameters when LeakyReLU follows: the negative tail is clipped at
/// `−NEGATIVE_CLIP · max`. LeakyReLU maps it to at most `LEAKY_SLOPE · |min|` (≈ 0.5 % of the
/// range) while the step of the positive side, which carries the signal, shrinks by up to 2×.
fn clip_negative_tail((scale, zero_point): (f32, u8)) -> (f32, u8) {
    let min = -(zero_point as f32) * scale;
    let max = min + 255.0 * scale;
    Range {
        name: String::new(),
        min: min.max(-NEGATIVE_CLIP * max),
        max,
    }
    .u8_params()
}

/// See [`clip_negative_tail`].
const NEGATIVE_CLIP: f32 = 0.25;

/// Names of the conv output (as the f32 graph of `network_graph` names it) and activation of
/// conv `index` out of `total`.
fn conv_names(index: usize, total: usize) -> (String, String) {
    let conv = if index + 1 == total {
        OUTPUT_NAME.to_string()
    } else {
        format!("conv{index}")
    };
    (conv, format!("act{index}"))
}

/// Runs the f32 graph of `weights` (as `spec` says, teacher normalisation included) on the
/// calibration `inputs` (`[1, 3, H, W]` each, preprocessed) and returns the min/max of the
/// input, of every conv output (pre-activation) and of every activation output.
pub fn activation_ranges(
    weights: &NetworkWeights,
    spec: &GraphSpec,
    inputs: &[Vec<f32>],
) -> Result<Vec<Range>, QuantizeError> {
    if inputs.is_empty() {
        return Err(QuantizeError::NoInputs);
    }
    let expected = INPUT_CHANNELS * spec.height * spec.width;
    if let Some(bad) = inputs.iter().find(|i| i.len() != expected) {
        return Err(QuantizeError::InputSize {
            found: bad.len(),
            expected,
        });
    }
    let mut model = network_graph(weights, spec)?;
    let total = weights.convs.len();
    let plan = weights
        .validate("quantize")
        .map_err(ExportError::from)?
        .plan(spec.mode)
        .map_err(ExportError::from)?;
    let mut names = vec![INPUT_NAME.to_string()];
    let mut conv_index = 0;
    for layer in &plan {
        if let PlannedLayer::Conv { activation, .. } = *layer {
            let (conv, act) = conv_names(conv_index, total);
            names.push(conv);
            if activation {
                names.push(act);
            }
            conv_index += 1;
        }
    }
    let graph = model.graph.as_mut().expect("network_graph writes a graph");
    for name in &names[1..] {
        if name != OUTPUT_NAME {
            graph.output.push(untyped_output(name));
        }
    }
    let runnable = tract_onnx::onnx()
        .model_for_proto_model(&model)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(tract_error)?;
    let output_names: Vec<String> = graph_output_names(&model);
    let per_input: Vec<Vec<(f32, f32)>> = inputs
        .par_iter()
        .map(|input| -> Result<_, QuantizeError> {
            let tensor = Tensor::from_shape(&[1, INPUT_CHANNELS, spec.height, spec.width], input)
                .map_err(tract_error)?;
            let outputs = runnable
                .run(tvec![tensor.into_tvalue()])
                .map_err(tract_error)?;
            let mut ranges = vec![min_max(input)];
            for name in &names[1..] {
                let slot = output_names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| QuantizeError::MissingRange(name.clone()))?;
                let view = outputs[slot].try_as_plain_ram().map_err(tract_error)?;
                ranges.push(min_max(view.as_slice::<f32>().map_err(tract_error)?));
            }
            Ok(ranges)
        })
        .collect::<Result<_, _>>()?;
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(k, name)| Range {
            name,
            min: per_input
                .iter()
                .map(|r| r[k].0)
                .fold(f32::INFINITY, f32::min),
            max: per_input
                .iter()
                .map(|r| r[k].1)
                .fold(f32::NEG_INFINITY, f32::max),
        })
        .collect())
}

fn graph_output_names(model: &pb::ModelProto) -> Vec<String> {
    model
        .graph
        .iter()
        .flat_map(|g| g.output.iter().map(|o| o.name.clone()))
        .collect()
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// A graph output with an element type and no shape (tract infers it).
fn untyped_output(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn raw_tensor(
    name: &str,
    dims: &[usize],
    data_type: pb::tensor_proto::DataType,
    raw: Vec<u8>,
) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// Symmetric int8 quantisation of OIHW weights with one scale per run of `weight.len() /
/// scales` values: `(weights, scales)`. `scales = 1` is per-tensor, `scales = out_channels`
/// per output channel.
///
/// # Panics
/// If `scales` is zero or does not divide the weight count.
pub fn quantize_weights(weight: &[f32], scales: usize) -> (Vec<i8>, Vec<f32>) {
    assert!(
        scales > 0 && weight.len().is_multiple_of(scales),
        "{} weights do not split into {scales} runs",
        weight.len()
    );
    let run = weight.len() / scales;
    let mut quantized = Vec::with_capacity(weight.len());
    let mut scale_of_run = Vec::with_capacity(scales);
    for w in weight.chunks_exact(run) {
        let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        quantized.extend(
            w.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
        scale_of_run.push(scale);
    }
    (quantized, scale_of_run)
}

/// int32 biases at the scale of the conv's accumulator, `x_scale × w_scale` of each output
/// channel (`w_scales` holds one scale per run of channels, as [`quantize_weights`] returns).
fn quantize_bias(bias: &[f32], x_scale: f32, w_scales: &[f32]) -> Vec<i32> {
    let per_scale = bias.len() / w_scales.len();
    bias.iter()
        .enumerate()
        .map(|(c, b)| {
            let accumulator = f64::from(x_scale) * f64::from(w_scales[c / per_scale]);
            (f64::from(*b) / accumulator)
                .round()
                .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        })
        .collect()
}

/// How many weight scales conv `i` of `total` gets.
///
/// Hidden convs get one (per-tensor): tract (0.23) fuses a `QLinearConv`'s requantisation
/// (scale, zero point, clamp) into its matrix-product kernel only when the weight scale is a
/// scalar; with per-channel scales it runs the scale, the clamp and the zero-point corrections as
/// separate element-wise passes over each i32 output. An `edge` student's int8 graph took 98 ms
/// single-threaded, against 32 ms for the same graph rewritten with one scale per tensor and 43
/// for its f32 graph (`examples/profile_network.rs`), almost all of the difference in the
/// full-resolution first convs.
/// The last conv keeps one scale per output channel: the teacher normalisation and the residual
/// whitening folded into it give its channels very different ranges, and its output is the
/// smallest map of the network, so the unfused passes cost little there.
fn weight_scales(i: usize, total: usize, out_channels: usize) -> usize {
    if i + 1 == total { out_channels } else { 1 }
}

/// The QOperator int8 graph of `weights` as `spec` says, with activation scales from `ranges`
/// (see [`activation_ranges`], computed with the same `spec`). Same input and output names and
/// shapes as [`network_graph`]; the teacher normalisation is folded into the last conv before
/// its weights are quantised.
pub fn int8_graph(
    weights: &NetworkWeights,
    spec: &GraphSpec,
    ranges: &[Range],
) -> Result<pb::ModelProto, QuantizeError> {
    use pb::tensor_proto::DataType;
    // Validates weights, stride and normalisation, and gives the f32 graph's shell.
    let mut model = network_graph(weights, spec)?;
    let plan = weights
        .validate("quantize")
        .map_err(ExportError::from)?
        .plan(spec.mode)
        .map_err(ExportError::from)?;
    let range = |name: &str| -> Result<(f32, u8), QuantizeError> {
        let r = ranges
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| QuantizeError::MissingRange(name.to_string()))?;
        if !(r.min.is_finite() && r.max.is_finite()) {
            return Err(QuantizeError::BadRange {
                name: name.to_string(),
                min: r.min,
                max: r.max,
            });
        }
        Ok(r.u8_params())
    };

    let mut graph = GraphWriter::default();
    let mut raw = Vec::new();
    // Scale/zero-point initialiser pair of a u8 tensor.
    let qparams = |graph: &mut GraphWriter,
                   raw: &mut Vec<pb::TensorProto>,
                   tensor: &str,
                   (scale, zp): (f32, u8)| {
        let (s, z) = (format!("{tensor}.scale"), format!("{tensor}.zero_point"));
        graph.initializer(&s, &[], vec![scale]);
        raw.push(raw_tensor(&z, &[], DataType::Uint8, vec![zp]));
        (s, z)
    };

    let input_q = range(INPUT_NAME)?;
    let mut x_scale_value = input_q.0;
    let (mut x_scale, mut x_zp) = qparams(&mut graph, &mut raw, INPUT_NAME, input_q);
    let mut current = format!("{INPUT_NAME}.q");
    graph.node(
        "QuantizeLinear",
        &[INPUT_NAME, &x_scale, &x_zp],
        &current,
        vec![],
    );
    let total = weights.convs.len();
    let mut convs = weights.convs.iter().enumerate();
    for (layer_index, layer) in plan.iter().enumerate() {
        match *layer {
            PlannedLayer::Conv {
                kernel,
                dilation,
                padding,
                activation,
                ..
            } => {
                let Some((i, conv)) = convs.next() else {
                    unreachable!("validated weights have one entry per planned conv");
                };
                let (weight, bias) = conv_parameters(weights, i, spec.output_norm.as_ref());
                let scales = weight_scales(i, total, conv.out_channels);
                let (wq, w_scales) = quantize_weights(&weight, scales);
                let bias_q = quantize_bias(&bias, x_scale_value, &w_scales);
                let (w, ws, wz, b) = (
                    format!("conv{i}.weight"),
                    format!("conv{i}.weight.scale"),
                    format!("conv{i}.weight.zero_point"),
                    format!("conv{i}.bias"),
                );
                raw.push(raw_tensor(
                    &w,
                    &[conv.out_channels, conv.in_channels, kernel, kernel],
                    DataType::Int8,
                    wq.iter().map(|&v| v as u8).collect(),
                ));
                // A scalar scale and zero point, not length-1 vectors: tract fuses only scalars.
                let scale_shape: &[usize] = if scales == 1 { &[] } else { &[scales] };
                graph.initializer(&ws, scale_shape, w_scales);
                raw.push(raw_tensor(
                    &wz,
                    scale_shape,
                    DataType::Int8,
                    vec![0; scales],
                ));
                raw.push(raw_tensor(
                    &b,
                    &[conv.out_channels],
                    DataType::Int32,
                    bias_q.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
                let (conv_name, act_name) = conv_names(i, total);
                let y = if activation {
                    clip_negative_tail(range(&conv_name)?)
                } else {
                    range(&conv_name)?
                };
                let (y_scale, y_zp) = qparams(&mut graph, &mut raw, &format!("conv{i}"), y);
                let out = format!("conv{i}.q");
                graph.node(
                    "QLinearConv",
                    &[&current, &x_scale, &x_zp, &w, &ws, &wz, &y_scale, &y_zp, &b],
                    &out,
                    vec![
                        ints("kernel_shape", &[kernel, kernel]),
                        ints("dilations", &[dilation, dilation]),
                        ints("strides", &[1, 1]),
                        ints("pads", &padding),
                    ],
                );
                (current, x_scale, x_zp, x_scale_value) = (out, y_scale, y_zp, y.0);
                if activation {
                    let deq = format!("conv{i}.dq");
                    graph.node(
                        "DequantizeLinear",
                        &[&current, &x_scale, &x_zp],
                        &deq,
                        vec![],
                    );
                    let act = format!("act{i}");
                    graph.node(
                        "LeakyRelu",
                        &[&deq],
                        &act,
                        vec![float("alpha", LEAKY_SLOPE)],
                    );
                    let a = range(&act_name)?;
                    let (a_scale, a_zp) = qparams(&mut graph, &mut raw, &act, a);
                    let out = format!("act{i}.q");
                    graph.node("QuantizeLinear", &[&act, &a_scale, &a_zp], &out, vec![]);
                    (current, x_scale, x_zp, x_scale_value) = (out, a_scale, a_zp, a.0);
                }
            }
            PlannedLayer::MaxPool { stride, dilation } => {
                let out = format!("pool{layer_index}.q");
                graph.max_pool(&current, &out, stride, dilation);
                current = out;
            }
        }
    }
    graph.node(
        "DequantizeLinear",
        &[&current, &x_scale, &x_zp],
        OUTPUT_NAME,
        vec![],
    );

    let shell = model.graph.take().expect("network_graph writes a graph");
    let mut initializer = graph.initializers;
    initializer.extend(raw);
    model.graph = Some(pb::GraphProto {
        name: format!("{}_int8", shell.name),
        node: graph.nodes,
        initializer,
        input: shell.input,
        output: shell.output,
        ..Default::default()
    });
    model.producer_name = "ustad-quantize".into();
    Ok(model)
}
