//! Hand-written ONNX graphs for teachers and students.
//!
//! The graph is written directly as protobuf with the `onnx` messages that `tract-onnx` already
//! compiles (`tract_onnx::pb`), so the exporter is small, has no Python in the loop, and writes
//! exactly the layers of [`Architecture::plan`]: the dense rewrite, any output stride, and the
//! teacher normalisation folded into the last convolution.

use std::path::{Path, PathBuf};

use prost::Message;
use thiserror::Error;
use tract_onnx::pb;

use crate::networks::arch::{
    ArchError, DESCRIPTOR_DIM, INPUT_CHANNELS, LEAKY_SLOPE, Mode, PlannedLayer,
};
use crate::networks::weights::{NetworkWeights, WeightsError};

pub mod features;
pub mod whitening;

pub use features::{FeatureTap, FeatureTeacher, FeatureTeacherError, Projection};
pub use whitening::Whitening;

/// Name of the graph input: `[1, 3, H, W]` f32, preprocessed as the bundle says.
pub const INPUT_NAME: &str = "image";
/// Name of the graph output: `[1, 128, H/s, W/s]` f32 descriptors.
pub const OUTPUT_NAME: &str = "descriptors";
const OPSET: i64 = 13;
const IR_VERSION: i64 = 8;

/// Problems while exporting.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("normalisation has {found} channels, the descriptor has {DESCRIPTOR_DIM}")]
    NormalisationSize { found: usize },
    #[error("normalisation channel {channel} has standard deviation {std}: must be finite and > 0")]
    BadStd { channel: usize, std: f32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    FeatureTeacher(#[from] FeatureTeacherError),
    #[error(
        "a p = {student} student cannot learn from a p = {teacher} teacher: their grids differ"
    )]
    StudentPatchSize { teacher: usize, student: usize },
    #[error("a whitening of {matrix} entries cannot map a layer of {outputs} outputs")]
    WhiteningSize { matrix: usize, outputs: usize },
    #[error(
        "a scale with a reduced view (reduction {reduction}) must be a backbone teacher scored alone"
    )]
    ReducedView { reduction: usize },
}

/// Per-channel affine normalisation `(y − mean) / std` of the network output.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ChannelNorm {
    /// `y` unchanged: the statistics of a teacher whose normalisation is already folded in.
    pub fn identity(channels: usize) -> Self {
        Self {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }
}

/// What graph to write for a network.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphSpec {
    /// Input height and width, pinned in the graph so tract can plan concrete shapes.
    pub height: usize,
    pub width: usize,
    pub mode: Mode,
    /// Folded into the last convolution (teacher statistics μ, σ); `None` for students.
    pub output_norm: Option<ChannelNorm>,
}

/// Builds the ONNX model of `weights` evaluated as `spec` says.
pub fn network_graph(
    weights: &NetworkWeights,
    spec: &GraphSpec,
) -> Result<pb::ModelProto, ExportError> {
    let arch = weights.validate("export")?;
    let plan = arch.plan(spec.mode)?;
    let (out_h, out_w) = arch.output_size(spec.mode, spec.height, spec.width)?;
    if let Some(norm) = &spec.output_norm {
        if norm.mean.len() != DESCRIPTOR_DIM || norm.std.len() != DESCRIPTOR_DIM {
            return Err(ExportError::NormalisationSize {
                found: norm.mean.len().min(norm.std.len()),
            });
        }
        if let Some((channel, &std)) = norm
            .std
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return Err(ExportError::BadStd { channel, std });
        }
    }

    let mut graph = GraphWriter::default();
    let mut current = INPUT_NAME.to_string();
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
                let Some((conv_index, conv)) = convs.next() else {
                    unreachable!("validated weights have one entry per planned conv");
                };
                let (weight, bias) =
                    conv_parameters(weights, conv_index, spec.output_norm.as_ref());
                let w_name = format!("conv{conv_index}.weight");
                let b_name = format!("conv{conv_index}.bias");
                graph.initializer(
                    &w_name,
                    &[conv.out_channels, conv.in_channels, kernel, kernel],
                    weight,
                );
                graph.initializer(&b_name, &[conv.out_channels], bias);
                let out = format!("conv{conv_index}");
                graph.node(
                    "Conv",
                    &[&current, &w_name, &b_name],
                    &out,
                    vec![
                        ints("kernel_shape", &[kernel, kernel]),
                        ints("dilations", &[dilation, dilation]),
                        ints("strides", &[1, 1]),
                        ints("pads", &padding),
                    ],
                );
                current = out;
                if activation {
                    let out = format!("act{conv_index}");
                    graph.node(
                        "LeakyRelu",
                        &[&current],
                        &out,
                        vec![float("alpha", LEAKY_SLOPE)],
                    );
                    current = out;
                }
            }
            PlannedLayer::MaxPool { stride, dilation } => {
                let out = format!("pool{layer_index}");
                graph.max_pool(&current, &out, stride, dilation);
                current = out;
            }
        }
    }
    // Rename the last value to the public output name.
    if let Some(last) = graph.nodes.last_mut() {
        last.output = vec![OUTPUT_NAME.to_string()];
    }

    let graph = pb::GraphProto {
        name: format!("ustad_p{}", weights.patch_size),
        node: graph.nodes,
        initializer: graph.initializers,
        input: vec![value_info(
            INPUT_NAME,
            &[1, INPUT_CHANNELS, spec.height, spec.width],
        )],
        output: vec![value_info(OUTPUT_NAME, &[1, DESCRIPTOR_DIM, out_h, out_w])],
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "ustad".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    })
}

/// Serialises a model to `path`.
pub fn save_model(model: &pb::ModelProto, path: &Path) -> Result<(), ExportError> {
    std::fs::write(path, model.encode_to_vec()).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Weights and bias of conv `index` as exported: with the output normalisation folded into the
/// last conv. The f32 and the int8 graphs both take their parameters from here.
pub(crate) fn conv_parameters(
    weights: &NetworkWeights,
    index: usize,
    norm: Option<&ChannelNorm>,
) -> (Vec<f32>, Vec<f32>) {
    let conv = &weights.convs[index];
    match norm {
        Some(norm) if index + 1 == weights.convs.len() => {
            fold_normalisation(&conv.weight, &conv.bias, norm)
        }
        _ => (conv.weight.clone(), conv.bias.clone()),
    }
}

/// `(W·x + b − μ) / σ` per output channel is a conv with weights `W/σ` and bias `(b − μ)/σ`.
fn fold_normalisation(weight: &[f32], bias: &[f32], norm: &ChannelNorm) -> (Vec<f32>, Vec<f32>) {
    let per_channel = weight.len() / bias.len();
    let weight = weight
        .chunks_exact(per_channel)
        .zip(&norm.std)
        .flat_map(|(w, s)| w.iter().map(move |v| v / s))
        .collect();
    let bias = bias
        .iter()
        .zip(norm.mean.iter().zip(&norm.std))
        .map(|(b, (m, s))| (b - m) / s)
        .collect();
    (weight, bias)
}

/// Accumulates nodes and initialisers.
#[derive(Default)]
pub(crate) struct GraphWriter {
    pub(crate) nodes: Vec<pb::NodeProto>,
    pub(crate) initializers: Vec<pb::TensorProto>,
}

impl GraphWriter {
    pub(crate) fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<pb::AttributeProto>,
    ) {
        self.nodes.push(pb::NodeProto {
            name: output.to_string(),
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute,
            ..Default::default()
        });
    }

    /// The architecture's 2×2 max pool (unpadded) at `stride` and `dilation`; the f32 and
    /// int8 graphs use the same node (on u8 in the latter).
    pub(crate) fn max_pool(&mut self, input: &str, output: &str, stride: usize, dilation: usize) {
        self.node(
            "MaxPool",
            &[input],
            output,
            vec![
                ints("kernel_shape", &[2, 2]),
                ints("strides", &[stride, stride]),
                ints("dilations", &[dilation, dilation]),
                ints("pads", &[0, 0, 0, 0]),
            ],
        );
    }

    pub(crate) fn initializer(&mut self, name: &str, dims: &[usize], data: Vec<f32>) {
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: data,
            ..Default::default()
        });
    }
}

pub(crate) fn ints(name: &str, values: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

pub(crate) fn float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

pub(crate) fn value_info(name: &str, dims: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a scale's teacher is.
#[derive(Debug, Clone, Copy)]
pub enum TeacherExport<'a> {
    /// A distilled patch network; μ, σ are folded into its last convolution.
    Network(&'a NetworkWeights),
    /// The backbone's own features through a fitted projection; μ, σ are folded into it.
    Features {
        teacher: &'a FeatureTeacher,
        projection: &'a Projection,
        /// The scale's receptive field, which sets its output grid: the features have none of
        /// their own, and a scale may have no students to take it from.
        patch_size: usize,
    },
}

impl TeacherExport<'_> {
    /// The patch size of the scale this teacher belongs to.
    pub fn patch_size(&self) -> usize {
        match self {
            TeacherExport::Network(weights) => weights.patch_size,
            TeacherExport::Features { patch_size, .. } => *patch_size,
        }
    }
}

/// The networks and statistics of one scale, ready to be written into a bundle.
#[derive(Debug, Clone)]
pub struct ScaleExport<'a> {
    pub stride: usize,
    /// [`crate::bundle::ScaleSpec::reduction`]: 1 for a scale that sees the whole input.
    pub reduction: usize,
    pub role: crate::judge::score::ScaleRole,
    pub teacher: TeacherExport<'a>,
    pub students: &'a [NetworkWeights],
    /// Teacher statistics μ, σ: folded into the teacher graph and recorded in the manifest.
    pub teacher_norm: ChannelNorm,
    pub calibration: crate::judge::score::Calibration,
}

/// The ONNX graph of a scale's teacher at `stride` on `input` reduced `reduction` times, its
/// output normalised by `norm` (folded into its last layer).
pub fn teacher_graph(
    teacher: TeacherExport<'_>,
    input: &crate::judge::preprocess::InputSpec,
    (stride, reduction): (usize, usize),
    norm: &ChannelNorm,
) -> Result<pb::ModelProto, ExportError> {
    let mode = Mode::Image { stride };
    match teacher {
        TeacherExport::Network(_) if reduction != 1 => Err(ExportError::ReducedView { reduction }),
        TeacherExport::Network(weights) => network_graph(
            weights,
            &GraphSpec {
                height: input.height,
                width: input.width,
                mode,
                output_norm: Some(norm.clone()),
            },
        ),
        TeacherExport::Features {
            teacher,
            projection,
            patch_size,
        } => {
            let arch = crate::networks::arch::Architecture::for_patch_size(patch_size)?;
            let grid = arch.output_size(mode, input.height / reduction, input.width / reduction)?;
            let head = projection.then_normalise(norm);
            Ok(teacher.graph(input, stride, grid, Some(&head))?)
        }
    }
}

/// The ONNX graph of a student at `stride` on `input`: the raw descriptor map, which the
/// engine compares with the teacher's normalised one.
pub fn student_graph(
    weights: &NetworkWeights,
    input: &crate::judge::preprocess::InputSpec,
    stride: usize,
) -> Result<pb::ModelProto, ExportError> {
    network_graph(
        weights,
        &GraphSpec {
            height: input.height,
            width: input.width,
            mode: Mode::Image { stride },
            output_norm: None,
        },
    )
}

/// Writes a complete f32 bundle into `dir` (created if needed): one teacher and its students
/// per scale as ONNX, and the manifest. Returns the bundle as [`crate::bundle::Bundle::load`]
/// reads it back, so a bundle that does not validate is never reported as written.
pub fn write_bundle(
    dir: &Path,
    input: crate::judge::preprocess::InputSpec,
    scales: &[ScaleExport<'_>],
    image_score: crate::judge::decide::ImageScoreRule,
    decision: crate::judge::decide::Decision,
    provenance: crate::bundle::Provenance,
) -> Result<crate::bundle::Bundle, BundleExportError> {
    use crate::bundle::{Bundle, FORMAT_VERSION, Manifest, ScaleSpec};
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut specs = Vec::with_capacity(scales.len());
    for scale in scales {
        let p = scale.teacher.patch_size();
        if let Some(student) = scale.students.iter().find(|s| s.patch_size != p) {
            return Err(ExportError::StudentPatchSize {
                teacher: p,
                student: student.patch_size,
            }
            .into());
        }
        if scale.reduction != 1 && !scale.students.is_empty() {
            return Err(ExportError::ReducedView {
                reduction: scale.reduction,
            }
            .into());
        }
        let name = crate::bundle::scale_name(p, scale.stride, scale.reduction);
        let teacher_file = format!("{name}-teacher.onnx");
        let model = teacher_graph(
            scale.teacher,
            &input,
            (scale.stride, scale.reduction),
            &scale.teacher_norm,
        )?;
        save_model(&model, &dir.join(&teacher_file))?;
        let mut student_files = Vec::new();
        for (i, student) in scale.students.iter().enumerate() {
            let file = format!("{name}-student{i}.onnx");
            save_model(
                &student_graph(student, &input, scale.stride)?,
                &dir.join(&file),
            )?;
            student_files.push(file);
        }
        specs.push(ScaleSpec {
            patch_size: p,
            stride: scale.stride,
            student_channel_divisor: scale.students.first().map_or(1, |s| s.channel_divisor),
            reduction: scale.reduction,
            role: scale.role,
            teacher: teacher_file,
            students: student_files,
            int8: None,
            teacher_mean: scale.teacher_norm.mean.clone(),
            teacher_std: scale.teacher_norm.std.clone(),
            calibration: scale.calibration,
        });
    }
    let mut bundle = Bundle {
        dir: dir.to_path_buf(),
        manifest: Manifest {
            format_version: FORMAT_VERSION,
            input,
            scales: specs,
            image_score,
            decision,
            provenance,
            checksums: Default::default(),
        },
    };
    bundle.save_manifest()?;
    Ok(Bundle::load(dir)?)
}

/// Writing a bundle fails either while exporting a graph or when the result does not validate.
#[derive(Debug, Error)]
pub enum BundleExportError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
}
