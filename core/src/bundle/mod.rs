//! The model bundle: what the trainer exports and the daemon loads.
//!
//! A bundle is a directory with a `bundle.toml` manifest and the ONNX files it names:
//!
//! ```text
//! mtd-edge/
//!   bundle.toml
//!   p33-teacher.onnx      (teacher, μ/σ folded in)
//!   p33-student0.onnx …   (students)
//! ```
//!
//! [`Bundle::load`] validates everything the engine relies on before any network is built, and
//! refuses a bad bundle with an error that names the file and the field.
//!
//! The manifest composes the parameter types of the judging steps (input, image score,
//! decision), which live with the step that reads them in [`crate::judge`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::judge::decide::{Decision, ImageScoreRule};
use crate::judge::preprocess::InputSpec;
use crate::judge::score::{Calibration, ScaleRole};
use crate::networks::arch::{Architecture, DESCRIPTOR_DIM, INPUT_CHANNELS, Mode};

pub mod cost;
pub mod int8;
pub mod onnx;

/// The manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Manifest file name inside a bundle directory.
pub const MANIFEST: &str = "bundle.toml";

/// Why a bundle was refused.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: format_version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path} (named by `{field}`): {message}")]
    Network {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// One receptive field: a teacher, its students and their calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSpec {
    pub patch_size: usize,
    /// Output stride of the descriptor maps (1 = dense).
    pub stride: usize,
    /// The students' hidden widths are the paper's divided by this
    /// ([`Architecture::channel_divisor`]); absent means 1. The engine runs the ONNX files
    /// whatever their widths; benchmarks read this to count the students' layers.
    #[serde(
        default = "crate::networks::arch::paper_widths",
        skip_serializing_if = "crate::networks::arch::is_paper_widths"
    )]
    pub student_channel_divisor: usize,
    /// The scale sees the input reduced this many times on each side (a bilinear downscale at
    /// the start of its teacher graph), so a 512² input gives it a 128² view of the part. Its
    /// map is on the reduced input's grid at `stride`: `stride × reduction` input pixels apart.
    /// Absent means 1. Only a teacher scored alone can have one: students see the full input.
    #[serde(
        default = "ScaleSpec::full_view",
        skip_serializing_if = "ScaleSpec::is_full_view"
    )]
    pub reduction: usize,
    /// Whether the scale's map feeds the image score, the anomaly map or both (absent: both).
    #[serde(default, skip_serializing_if = "ScaleRole::is_both")]
    pub role: ScaleRole,
    /// Teacher ONNX file, relative to the bundle; its output is already `(y − μ)/σ`.
    pub teacher: String,
    /// Student ONNX files: at least two (the variance needs an ensemble), or none, where the
    /// teacher alone is scored by its distance from the good parts' mean
    /// ([`crate::judge::score::error_and_variance`]); a whitened teacher makes that distance
    /// the Mahalanobis distance.
    pub students: Vec<String>,
    /// Optional int8 (QOperator) versions of the same networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<NetworkFiles>,
    /// Teacher statistics μ, σ (folded into the teacher graph; kept to re-export and audit).
    pub teacher_mean: Vec<f32>,
    pub teacher_std: Vec<f32>,
    pub calibration: Calibration,
}

impl ScaleSpec {
    /// The `reduction` of a scale that sees the whole input.
    pub const fn full_view() -> usize {
        1
    }

    /// For `skip_serializing_if`.
    pub fn is_full_view(reduction: &usize) -> bool {
        *reduction == 1
    }

    /// Whether a view reduced `reduction` times fits a `height × width` input: a whole number
    /// of input pixels on each side of every view pixel. The bundle loader and the trainer's
    /// preset loader both refuse a reduction that does not.
    pub fn reduction_divides(reduction: usize, height: usize, width: usize) -> bool {
        reduction > 0 && height.is_multiple_of(reduction) && width.is_multiple_of(reduction)
    }

    /// Input pixels between two cells of the scale's map.
    pub fn map_stride(&self) -> usize {
        self.stride * self.reduction
    }

    /// The prefix of its networks' labels (`p65/teacher`, `p65-r4/teacher`).
    pub fn label(&self) -> String {
        scale_label(self.patch_size, self.reduction)
    }

    /// The students' architecture: the scale's patch network at the students' widths.
    pub fn student_architecture(&self) -> Result<Architecture, crate::networks::arch::ArchError> {
        Architecture::new(self.patch_size, self.student_channel_divisor)
    }
}

/// A scale's name in its network file names: `p65-s8`, or `p65-s8-r4` for a reduced view.
/// The exporter and the trainer's work files build it from the parts before a spec exists.
pub fn scale_name(patch_size: usize, stride: usize, reduction: usize) -> String {
    if reduction == 1 {
        format!("p{patch_size}-s{stride}")
    } else {
        format!("p{patch_size}-s{stride}-r{reduction}")
    }
}

/// [`ScaleSpec::label`] from its parts.
pub fn scale_label(patch_size: usize, reduction: usize) -> String {
    if reduction == 1 {
        format!("p{patch_size}")
    } else {
        format!("p{patch_size}-r{reduction}")
    }
}

/// A teacher file and its student files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFiles {
    pub teacher: String,
    pub students: Vec<String>,
}

/// Where the bundle came from. Free-form beyond the named fields, so the trainer can record
/// parity reports and losses without a format change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Provenance {
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub trainer_version: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, toml::Value>,
}

/// The parsed `bundle.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub input: InputSpec,
    pub scales: Vec<ScaleSpec>,
    #[serde(default)]
    pub image_score: ImageScoreRule,
    pub decision: Decision,
    #[serde(default)]
    pub provenance: Provenance,
    /// SHA-256 (hex) of every network file, by file name, written by [`Bundle::save_manifest`].
    /// Protobuf parsing and shape checks cannot see a tensor zeroed in place; a checksum can.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// Numeric precision of the networks the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// f32 graphs converted to f16 at load (fast on ARMv8.2 fp16 cores).
    F16,
    /// The bundle's QOperator graphs.
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            other => Err(format!(
                "unknown precision `{other}` (expected f32, f16 or int8)"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
        })
    }
}

/// A validated bundle: the manifest and where its files are.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads and validates `dir/bundle.toml` and checks that every network file exists, parses
    /// as ONNX, and has the input and output shapes the manifest implies.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        // Read the version first, so a future format is refused as such rather than as a
        // list of unknown fields.
        #[derive(Deserialize)]
        struct Version {
            format_version: Option<u32>,
        }
        let version: Version = toml::from_str(&text).map_err(|e| BundleError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        match version.format_version {
            Some(FORMAT_VERSION) => {}
            Some(found) => return Err(BundleError::UnsupportedVersion { path, found }),
            None => {
                return Err(BundleError::Field {
                    path,
                    field: "format_version".into(),
                    message: "missing".into(),
                });
            }
        }
        let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let bundle = Bundle {
            dir: dir.to_path_buf(),
            manifest,
        };
        bundle.validate()?;
        Ok(bundle)
    }

    /// Writes the manifest into `self.dir`, recording the checksum of every network file it
    /// names (the network files are written by the exporter before this).
    pub fn save_manifest(&mut self) -> Result<(), BundleError> {
        let mut checksums = BTreeMap::new();
        for name in self.network_file_names() {
            let digest = file_sha256(&self.file(name))?;
            checksums.insert(name.to_string(), digest);
        }
        self.manifest.checksums = checksums;
        let path = self.dir.join(MANIFEST);
        let text = toml::to_string_pretty(&self.manifest).map_err(|e| BundleError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let header =
            "# ustad model bundle. Written by ustad-train; see README.md for the fields.\n";
        std::fs::write(&path, format!("{header}{text}"))
            .map_err(|source| BundleError::Io { path, source })
    }

    /// Every network file the manifest names (f32 and int8), in manifest order.
    pub fn network_file_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        for scale in &self.manifest.scales {
            names.push(scale.teacher.as_str());
            names.extend(scale.students.iter().map(String::as_str));
            if let Some(int8) = &scale.int8 {
                names.push(int8.teacher.as_str());
                names.extend(int8.students.iter().map(String::as_str));
            }
        }
        names
    }

    /// Refuses a network file whose content is not what the exporter wrote.
    fn check_checksum(&self, name: &str, field: &str) -> Result<(), BundleError> {
        let path = self.file(name);
        let error = |message: String| BundleError::Network {
            path: path.clone(),
            field: field.to_string(),
            message,
        };
        let Some(expected) = self.manifest.checksums.get(name) else {
            return Err(error(format!(
                "no checksum recorded in {MANIFEST} (`checksums`) for this file"
            )));
        };
        let found = file_sha256(&path)?;
        if &found != expected {
            return Err(error(format!(
                "content changed since export: SHA-256 {found}, {MANIFEST} records {expected}"
            )));
        }
        Ok(())
    }

    /// Path of a file named in the manifest.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The descriptor-map size `(height, width)` of scale `index`.
    pub fn map_size(&self, index: usize) -> Option<(usize, usize)> {
        let scale = self.manifest.scales.get(index)?;
        let arch = Architecture::for_patch_size(scale.patch_size).ok()?;
        let k = scale.reduction.max(1);
        arch.output_size(
            Mode::Image {
                stride: scale.stride,
            },
            self.manifest.input.height / k,
            self.manifest.input.width / k,
        )
        .ok()
    }

    /// The teacher and student files of `scale` at `precision` (f16 uses the f32 files).
    pub fn networks<'a>(
        &self,
        scale: &'a ScaleSpec,
        precision: Precision,
    ) -> Option<(&'a str, &'a [String])> {
        match precision {
            Precision::F32 | Precision::F16 => Some((&scale.teacher, &scale.students)),
            Precision::Int8 => scale
                .int8
                .as_ref()
                .map(|n| (n.teacher.as_str(), n.students.as_slice())),
        }
    }

    fn validate(&self) -> Result<(), BundleError> {
        let path = self.dir.join(MANIFEST);
        let field = |field: String, message: String| BundleError::Field {
            path: path.clone(),
            field,
            message,
        };
        let m = &self.manifest;
        if m.input.width == 0 || m.input.height == 0 {
            return Err(field(
                "input".into(),
                "width and height must be positive".into(),
            ));
        }
        for (c, (&mean, &std)) in m.input.mean.iter().zip(&m.input.std).enumerate() {
            if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
                return Err(field(
                    format!("input.mean/std[{c}]"),
                    "must be finite with std > 0".into(),
                ));
            }
        }
        if m.scales.is_empty() {
            return Err(field(
                "scales".into(),
                "at least one scale is required".into(),
            ));
        }
        let roles: Vec<ScaleRole> = m.scales.iter().map(|s| s.role).collect();
        if let Some(output) = ScaleRole::unfed(&roles) {
            return Err(field(
                "scales.role".into(),
                format!("no scale feeds {output}"),
            ));
        }
        let rule = &m.image_score;
        if !(rule.smoothing_sigma.is_finite() && rule.smoothing_sigma >= 0.0) {
            return Err(field(
                "image_score.smoothing_sigma".into(),
                "must be finite and >= 0".into(),
            ));
        }
        if !(rule.top_fraction > 0.0 && rule.top_fraction <= 1.0) {
            return Err(field(
                "image_score.top_fraction".into(),
                "must be in (0, 1]".into(),
            ));
        }
        if 2 * rule.border >= m.input.width.min(m.input.height) {
            return Err(field(
                "image_score.border".into(),
                format!(
                    "{} px on each side leaves nothing of a {}×{} input",
                    rule.border, m.input.width, m.input.height
                ),
            ));
        }
        if !m.decision.threshold.is_finite() {
            return Err(field("decision.threshold".into(), "must be finite".into()));
        }
        for (index, scale) in m.scales.iter().enumerate() {
            let at = |name: &str| format!("scales[{index}].{name}");
            Architecture::for_patch_size(scale.patch_size)
                .map_err(|e| field(at("patch_size"), e.to_string()))?;
            let arch = scale
                .student_architecture()
                .map_err(|e| field(at("student_channel_divisor"), e.to_string()))?;
            let k = scale.reduction;
            if !ScaleSpec::reduction_divides(k, m.input.height, m.input.width) {
                return Err(field(
                    at("reduction"),
                    format!(
                        "{k} does not divide the {}×{} input",
                        m.input.width, m.input.height
                    ),
                ));
            }
            if k > 1 && !scale.students.is_empty() {
                return Err(field(
                    at("reduction"),
                    "a reduced view is for a teacher scored alone: its students would see the full input".into(),
                ));
            }
            let (map_h, map_w) = arch
                .output_size(
                    Mode::Image {
                        stride: scale.stride,
                    },
                    m.input.height / k,
                    m.input.width / k,
                )
                .map_err(|e| field(at("stride"), e.to_string()))?;
            if scale.students.len() == 1 {
                return Err(field(
                    at("students"),
                    "1 student: the variance needs at least 2 (or none, for the teacher alone)"
                        .into(),
                ));
            }
            for (name, values, positive) in [
                ("teacher_mean", &scale.teacher_mean, false),
                ("teacher_std", &scale.teacher_std, true),
            ] {
                if values.len() != DESCRIPTOR_DIM {
                    return Err(field(
                        at(name),
                        format!("{} values, expected {DESCRIPTOR_DIM}", values.len()),
                    ));
                }
                if let Some(i) = values
                    .iter()
                    .position(|v| !v.is_finite() || (positive && *v <= 0.0))
                {
                    return Err(field(
                        format!("{}[{i}]", at(name)),
                        format!("{} is not a valid statistic", values[i]),
                    ));
                }
            }
            if let Some(bad) = scale.calibration.invalid_field() {
                return Err(field(
                    at(&format!("calibration.{bad}")),
                    "must be finite (and > 0 for a deviation)".into(),
                ));
            }
            let input_shape = [1, INPUT_CHANNELS, m.input.height, m.input.width];
            let output_shape = [1, DESCRIPTOR_DIM, map_h, map_w];
            let mut files: Vec<(String, &String)> = vec![(at("teacher"), &scale.teacher)];
            files.extend(
                scale
                    .students
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (at(&format!("students[{i}]")), s)),
            );
            if let Some(int8) = &scale.int8 {
                if int8.students.len() != scale.students.len() {
                    return Err(field(
                        at("int8.students"),
                        "must list as many students as the f32 networks".into(),
                    ));
                }
                files.push((at("int8.teacher"), &int8.teacher));
                files.extend(
                    int8.students
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (at(&format!("int8.students[{i}]")), s)),
                );
            }
            for (field_name, file) in files {
                check_network_file(&self.file(file), &field_name, &input_shape, &output_shape)?;
                // Parsing and shapes cannot see a tensor damaged in place; the checksum can.
                if !m.checksums.is_empty() {
                    self.check_checksum(file, &field_name)?;
                }
            }
        }
        if m.checksums.is_empty() {
            log::warn!(
                "{}: no `checksums` (written by an older ustad-train): a network file damaged in place would go unnoticed; re-save it with `ustad-train calibrate`",
                path.display()
            );
        }
        Ok(())
    }
}

/// SHA-256 of a file's content, lower-case hex.
pub fn file_sha256(path: &Path) -> Result<String, BundleError> {
    use sha2::Digest;
    use std::io::Read;
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Parses an ONNX file's protobuf (not its weights' semantics: tract does that at load) and
/// checks its declared input and output shapes.
fn check_network_file(
    path: &Path,
    field: &str,
    input: &[usize; 4],
    output: &[usize; 4],
) -> Result<(), BundleError> {
    use tract_onnx::prelude::Framework;
    let error = |message: String| BundleError::Network {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    if !path.is_file() {
        return Err(error("file not found".into()));
    }
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| error(format!("not a readable ONNX model ({e:#})")))?;
    let graph = proto
        .graph
        .ok_or_else(|| error("ONNX model has no graph".into()))?;
    let dims = |values: &[tract_onnx::pb::ValueInfoProto],
                which: &str|
     -> Result<Vec<usize>, BundleError> {
        let info = values
            .first()
            .ok_or_else(|| error(format!("graph has no {which}")))?;
        let Some(tract_onnx::pb::type_proto::Value::TensorType(tensor)) =
            info.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(error(format!("{which} `{}` is not a tensor", info.name)));
        };
        let shape = tensor
            .shape
            .as_ref()
            .ok_or_else(|| error(format!("{which} `{}` has no shape", info.name)))?;
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v))
                    if v > 0 =>
                {
                    Ok(v as usize)
                }
                _ => Err(error(format!(
                    "{which} `{}` has a symbolic dimension: shapes must be pinned",
                    info.name
                ))),
            })
            .collect()
    };
    let found_input = dims(&graph.input, "input")?;
    if found_input != input {
        return Err(error(format!(
            "input shape {found_input:?}, the manifest implies {input:?}"
        )));
    }
    let found_output = dims(&graph.output, "output")?;
    if found_output != output {
        return Err(error(format!(
            "output shape {found_output:?}, the manifest implies {output:?}"
        )));
    }
    Ok(())
}
