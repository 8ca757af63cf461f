//! `ustad-train fit`: from a folder of good parts to a deployable bundle.
//!
//! Each step is one function, called in this order by [`fit`]:
//!
//! 1. `split_images`: `train/good` split (seeded) into fit, validation and spare images.
//! 2. `teacher_targets`: teacher statistics μ, σ per channel over every pixel of the fit images
//!    (streaming, Welford in f64), computed with tract on the same exported graph the daemon
//!    runs. A backbone teacher first fits its PCA projection on those images and takes one σ
//!    for all channels (see `common_scale`).
//! 3. `train_students`: M independently initialised students per scale regress `(T − μ)/σ`
//!    over all pixels, checkpointed every epoch (`resume_students` picks a run up again).
//! 4. `whiten_residuals` (presets that ask for it): each scale's residual whitened on good
//!    parts, folded into its teacher and students.
//! 5. `calibrate`: export, then e/v statistics and the threshold on the validation images by
//!    running the exported bundle itself, so the numbers in the bundle are the daemon's.
//! 6. `f32_parity`: the trainer's (burn) anomaly maps against the exported bundle run by tract.
//! 7. `record_fit`, `export_bundle`: the provenance, and the finished bundle in `--out`.
//! 8. `export_int8` (unless `--precision f32`): int8 graphs and their parity against f32.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

use crate::net::PatchNet;
use ustad_core::bundle::onnx::{
    ChannelNorm, FeatureTap, FeatureTeacher, GraphSpec, Projection, ScaleExport, TeacherExport,
    Whitening, network_graph, save_model, student_graph, teacher_graph, write_bundle,
};
use ustad_core::bundle::{Bundle, Provenance};
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::decide::{Decision, ImageScoreRule};
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::judge::score::{Calibration, RunningStats};
use ustad_core::judge::threshold::{ThresholdChoice, threshold_from_good};
use ustad_core::networks::arch::{DESCRIPTOR_DIM, Mode};
use ustad_core::networks::weights::NetworkWeights;

/// Which graphs `ustad-train fit` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExportPrecision {
    /// Only the f32 graphs.
    F32,
    /// f32 graphs (always needed) plus the int8 QOperator graphs.
    Int8,
    /// Same as `int8`: f32 and int8 graphs.
    #[default]
    Both,
}

impl ExportPrecision {
    /// Whether int8 graphs are written.
    pub fn int8(self) -> bool {
        matches!(self, Self::Int8 | Self::Both)
    }
}

/// A scale of a preset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetScale {
    pub patch_size: usize,
    pub stride: usize,
    /// What the students of this scale regress.
    #[serde(default)]
    pub teacher: TeacherKind,
    /// The students' hidden widths are the paper's divided by this (1, 2, 4, 8): a student
    /// must match the teacher's receptive field and grid, not its width.
    #[serde(default = "ustad_core::networks::arch::paper_widths")]
    pub student_channel_divisor: usize,
    /// For a backbone teacher: the backbone nodes whose maps it taps, in place of the sidecar's
    /// `dense.nodes` (which the distilled teachers were trained on). Deeper nodes describe
    /// more of the part at once; `scripts/tap_study.py` measures a choice on a dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_nodes: Option<Vec<String>>,
    /// For a backbone teacher: which principal components of its taps become the descriptor.
    #[serde(default)]
    pub teacher_components: crate::pca::Components,
}

impl PresetScale {
    /// `teacher_nodes` and `teacher_components` shape a backbone teacher only: on a distilled
    /// one they would be silently ignored, and an empty tap list has nothing to project.
    fn check_teacher_fields(&self) -> Result<()> {
        let backbone_only = self.teacher_nodes.is_some()
            || self.teacher_components != crate::pca::Components::default();
        if self.teacher == TeacherKind::Distilled && backbone_only {
            bail!("teacher_nodes and teacher_components apply to teacher = \"backbone\" only");
        }
        if self.teacher_nodes.as_ref().is_some_and(Vec::is_empty) {
            bail!("teacher_nodes must name at least one backbone node");
        }
        Ok(())
    }

    /// The architecture of this scale's students.
    pub fn student_architecture(
        &self,
    ) -> Result<ustad_core::networks::arch::Architecture, ustad_core::networks::arch::ArchError>
    {
        ustad_core::networks::arch::Architecture::new(self.patch_size, self.student_channel_divisor)
    }
}

/// The teacher of a scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    /// The distilled patch network `p{patch_size}.ustw` from `--teachers`.
    #[default]
    Distilled,
    /// The backbone's own feature maps (the sidecar's dense taps), projected to the
    /// descriptor by a PCA of the good parts: all of the backbone's knowledge, no distillation.
    Backbone,
}

/// A scale's teacher as the fit holds it.
enum FitTeacher {
    Distilled(NetworkWeights),
    Backbone(Box<FeatureTeacher>, Projection),
}

impl FitTeacher {
    fn export(&self) -> TeacherExport<'_> {
        match self {
            FitTeacher::Distilled(weights) => TeacherExport::Network(weights),
            FitTeacher::Backbone(teacher, projection) => TeacherExport::Features {
                teacher,
                projection,
            },
        }
    }

    /// The same teacher with its output normalised by `norm` and then mixed by `whitening`.
    fn whitened(&self, whitening: &Whitening, norm: &ChannelNorm) -> Result<FitTeacher> {
        Ok(match self {
            FitTeacher::Distilled(weights) => {
                FitTeacher::Distilled(whitening.network(weights, Some(norm))?)
            }
            FitTeacher::Backbone(teacher, projection) => {
                FitTeacher::Backbone(teacher.clone(), whitening.projection(projection, norm)?)
            }
        })
    }

    /// What the provenance records as this scale's teacher.
    fn describe(&self, options: &FitOptions, scale: &PresetScale) -> String {
        match self {
            FitTeacher::Distilled(_) => options
                .teachers
                .join(format!("p{}.ustw", scale.patch_size))
                .display()
                .to_string(),
            FitTeacher::Backbone(teacher, projection) => format!(
                "backbone {} nodes {} ({}×{} averaged), PCA {} -> {} ({})",
                teacher.source().display(),
                teacher.tap().nodes.join("+"),
                teacher.tap().neighbourhood,
                teacher.tap().neighbourhood,
                projection.inputs,
                projection.outputs(),
                scale.teacher_components.describe()
            ),
        }
    }
}

/// A named speed/accuracy setting (`config/presets/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub description: String,
    pub width: usize,
    pub height: usize,
    pub students: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub scales: Vec<PresetScale>,
    pub image_score: ImageScoreRule,
    /// Weight of the students' variance in the pixel score (`score::Calibration`): 1 is the
    /// paper's `e + v`, 0 scores by the regression error alone.
    #[serde(default = "Calibration::paper_variance_weight")]
    pub variance_weight: f32,
    /// Whiten each scale's residual (`ustad_core::bundle::onnx::whitening`): the error becomes the
    /// Mahalanobis distance of the students' residual on good parts.
    #[serde(default)]
    pub whiten_residual: bool,
    /// At most this many good images measure the whitening: held-out ones (left over by
    /// `max_fit_images`), or the fit images when there are none. A 128×128 covariance from a few
    /// dozen spatially correlated maps is noisy: on MTD the edge-shallow bundle scored image
    /// AUROC 0.841 whitened on 80 images and 0.846 on 400 (`ustad eval`). Held-out images
    /// beyond this many calibrate the threshold instead. Every map of the scale's networks
    /// is held while it is measured: about 210 MB for 400 images at p = 65/stride 8 on 128², four
    /// times that at stride 4.
    #[serde(default = "default_whitening_images")]
    pub whitening_images: usize,
    /// Train on at most this many fit images (0 = all): bounds the training time of CPU presets.
    #[serde(default)]
    pub max_fit_images: usize,
    /// How the learning rate moves over the run (constant when the preset does not say).
    #[serde(default)]
    pub schedule: Schedule,
}

/// Learning-rate schedule of the student training.
///
/// With small batches the gradient noise sets a floor under the loss at a constant rate;
/// decaying the rate towards the end lets the students settle below it without a longer run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The preset's learning rate for every step.
    #[default]
    Constant,
    /// Half a cosine from the preset's rate down to zero over all steps of the run
    /// (`epochs × steps per epoch`). A run resumed with the same epochs continues the same
    /// curve; more epochs on resume stretch the rest of it.
    Cosine,
}

impl Schedule {
    /// The learning rate of step `step` (0-based) out of `total` steps.
    pub fn rate(self, base: f64, step: usize, total: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let progress = step as f64 / total.max(1) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }
}

/// Presets compiled into the binary; a path to a `.toml` file works too.
const BUILTIN_PRESETS: [(&str, &str); 7] = [
    ("edge", include_str!("../../config/presets/edge.toml")),
    (
        "edge-fast",
        include_str!("../../config/presets/edge-fast.toml"),
    ),
    (
        "edge-shallow",
        include_str!("../../config/presets/edge-shallow.toml"),
    ),
    (
        "edge-p33",
        include_str!("../../config/presets/edge-p33.toml"),
    ),
    (
        "edge-distilled",
        include_str!("../../config/presets/edge-distilled.toml"),
    ),
    (
        "edge-p65",
        include_str!("../../config/presets/edge-p65.toml"),
    ),
    ("paper", include_str!("../../config/presets/paper.toml")),
];

fn default_whitening_images() -> usize {
    400
}

impl Preset {
    /// A built-in preset by name, or a preset file by path.
    pub fn load(name_or_path: &str) -> Result<Self> {
        let (origin, text) = match BUILTIN_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => (format!("built-in preset `{name}`"), text.to_string()),
            None if Path::new(name_or_path).is_file() => (
                name_or_path.to_string(),
                std::fs::read_to_string(name_or_path)
                    .with_context(|| format!("reading {name_or_path}"))?,
            ),
            None => bail!(
                "unknown preset `{name_or_path}` (built in: {}; or give a path to a preset .toml)",
                BUILTIN_PRESETS.map(|(n, _)| n).join(", ")
            ),
        };
        let preset: Preset =
            toml::from_str(&text).with_context(|| format!("{origin}: invalid preset"))?;
        if preset.whiten_residual && preset.whitening_images == 0 {
            bail!("{origin}: whitening_images = 0, but whiten_residual needs at least one image");
        }
        for scale in &preset.scales {
            scale
                .check_teacher_fields()
                .with_context(|| format!("{origin}: scale p = {}", scale.patch_size))?;
            let arch = scale.student_architecture().with_context(|| {
                format!(
                    "{origin}: scale p = {}: student_channel_divisor",
                    scale.patch_size
                )
            })?;
            arch.output_size(
                Mode::Image {
                    stride: scale.stride,
                },
                preset.height,
                preset.width,
            )
            .with_context(|| format!("{origin}: scale p = {}", scale.patch_size))?;
        }
        Ok(preset)
    }
}

/// Everything `ustad-train fit` can be told.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub preset: Preset,
    pub teachers: PathBuf,
    /// The backbone ONNX of `teacher = "backbone"` scales, and its sidecar (found by the
    /// ONNX stem when `None`).
    pub backbone: PathBuf,
    pub backbone_config: Option<PathBuf>,
    pub validation_fraction: f64,
    pub target_false_reject_rate: f64,
    pub margin: f32,
    pub weight_decay: f64,
    /// The part looks the same mirrored: train on flipped copies too.
    pub symmetric: bool,
    /// Use at most this many fit images (0 = all): for smoke runs.
    pub max_fit_images: usize,
    pub seed: u64,
    pub resume: bool,
    pub progress: bool,
    /// Which graphs to export (f32 always; int8 QOperator graphs too unless `F32`).
    pub precision: ExportPrecision,
}

/// What a fit measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitReport {
    pub preset: String,
    pub fit_images: usize,
    pub validation_images: usize,
    pub epochs: usize,
    pub final_student_losses: Vec<Vec<f32>>,
    pub calibration: Vec<Calibration>,
    pub threshold: f32,
    pub parity_max_abs: f32,
    pub parity_mean_abs: f32,
    pub seconds: f64,
}

/// The residual whitening of one scale: its teacher (normalised by `norm`) and students run by
/// tract on `inputs`, exactly as the bundle will run them.
fn measure_whitening(
    work: &Path,
    teacher: &FitTeacher,
    norm: &ChannelNorm,
    students: &[NetworkWeights],
    spec: &InputSpec,
    stride: usize,
    inputs: &[Vec<f32>],
) -> Result<(Whitening, crate::whiten::WhiteningSummary)> {
    let Some(patch_size) = students.first().map(|s| s.patch_size) else {
        bail!("no students to whiten");
    };
    let dir = work.join("whitening");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (height, width) = (spec.height, spec.width);
    let teacher_path = dir.join("teacher.onnx");
    save_model(
        &teacher_graph(teacher.export(), spec, patch_size, stride, norm)?,
        &teacher_path,
    )?;
    let teacher_maps = run_network(&teacher_path, inputs, height, width)?;
    let student_maps = students
        .iter()
        .enumerate()
        .map(|(k, student)| {
            let path = dir.join(format!("student{k}.onnx"));
            save_model(&student_graph(student, spec, stride)?, &path)?;
            run_network(&path, inputs, height, width)
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(crate::whiten::residual_whitening(
        &teacher_maps,
        &student_maps,
        DESCRIPTOR_DIM,
    )?)
}

struct Images {
    paths: Vec<PathBuf>,
    inputs: Vec<Vec<f32>>,
}

fn load_inputs(paths: &[PathBuf], spec: &InputSpec, bar: &ProgressBar) -> Result<Vec<Vec<f32>>> {
    paths
        .par_iter()
        .map(|path| {
            let image = image::open(path)
                .with_context(|| format!("{}: unreadable image", path.display()))?;
            bar.inc(1);
            Ok(ustad_core::judge::preprocess::to_input(&image, spec))
        })
        .collect()
}

fn bar(len: usize, progress: bool, template: &str) -> ProgressBar {
    let bar = if progress {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs an exported network on many inputs with tract, one state per worker.
fn run_network(
    path: &Path,
    inputs: &[Vec<f32>],
    height: usize,
    width: usize,
) -> Result<Vec<Vec<f32>>> {
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    inputs
        .par_iter()
        .map(|input| {
            let tensor = tract_onnx::prelude::Tensor::from_shape(&[1, 3, height, width], input)
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let out = plan
                .run(tvec![tensor.into_tvalue()])
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
            let view = out[0]
                .try_as_plain_ram()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
            Ok(view
                .as_slice::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?
                .to_vec())
        })
        .collect()
}

/// Per-channel mean and standard deviation over every pixel of every map.
pub fn channel_statistics(maps: &[Vec<f32>], channels: usize) -> ChannelNorm {
    let per_map: Vec<Vec<RunningStats>> = maps
        .par_iter()
        .map(|map| {
            let pixels = map.len() / channels;
            (0..channels)
                .map(|c| {
                    let mut s = RunningStats::default();
                    s.extend(&map[c * pixels..(c + 1) * pixels]);
                    s
                })
                .collect()
        })
        .collect();
    let mut total = vec![RunningStats::default(); channels];
    for stats in &per_map {
        for (t, s) in total.iter_mut().zip(stats) {
            t.merge(s);
        }
    }
    ChannelNorm {
        mean: total.iter().map(|s| s.mean() as f32).collect(),
        // A dead channel (σ = 0) would divide by zero: it carries no information, keep it at 1.
        std: total
            .iter()
            .map(|s| if s.std() > 1e-6 { s.std() as f32 } else { 1.0 })
            .collect(),
    }
}

/// The same centring with one σ for every channel (the root mean square of theirs).
///
/// A feature teacher's channels are principal components: a few carry most of the variance and
/// a hundred carry little more than noise. Scaled each to unit variance, those hundred make
/// most of the students' loss, and on MTD the students learned nothing (epoch-1 loss 127.5 of a
/// target variance of 128); one common σ keeps the components' relative weight, so the loss,
/// like the error map, is the features' plain Euclidean distance.
fn common_scale(norm: ChannelNorm) -> ChannelNorm {
    let rms = (norm.std.iter().map(|s| s * s).sum::<f32>() / norm.std.len().max(1) as f32).sqrt();
    ChannelNorm {
        std: vec![rms.max(1e-6); norm.std.len()],
        mean: norm.mean,
    }
}

/// The M students of one scale, trained together (independent weights, summed losses).
#[derive(Module, Debug)]
pub struct Ensemble {
    pub students: Vec<PatchNet>,
}

fn flip_input(input: &[f32], height: usize, width: usize, channels: usize) -> Vec<f32> {
    let mut out = vec![0.0; input.len()];
    for c in 0..channels {
        for y in 0..height {
            for x in 0..width {
                out[(c * height + y) * width + x] =
                    input[(c * height + y) * width + (width - 1 - x)];
            }
        }
    }
    out
}

#[derive(Debug, Serialize, Deserialize)]
struct FitCheckpoint {
    scale: usize,
    epoch: usize,
    seed: u64,
    /// The students' widths: resuming into other widths would load mismatched tensors.
    #[serde(default = "ustad_core::networks::arch::paper_widths")]
    student_channel_divisor: usize,
    losses: Vec<Vec<f32>>,
}

/// Fits students and writes a calibrated bundle to `options.out`: the steps of the module
/// documentation, one function each.
pub fn fit(options: &FitOptions, device: &Device) -> Result<FitReport> {
    let started = Instant::now();
    let preset = &options.preset;
    let spec = InputSpec::imagenet(preset.width, preset.height);
    let splits = split_images(options, &spec)?;
    let out = &options.out;
    let work = out.join(".work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    // Fit inputs, plus mirrored copies for symmetric parts.
    let mut train_inputs = splits.fit.inputs.clone();
    if options.symmetric {
        train_inputs.extend(
            splits
                .fit
                .inputs
                .iter()
                .map(|i| flip_input(i, spec.height, spec.width, 3)),
        );
    }

    let mut scales = Vec::new();
    let mut final_losses = Vec::new();
    device.seed(options.seed);
    for (scale_index, scale) in preset.scales.iter().enumerate() {
        let (teacher, norm, targets) =
            teacher_targets(options, &spec, &work, scale, &train_inputs)?;
        let (ensemble, losses) = train_students(
            options,
            device,
            &work.join(format!("scale{scale_index}")),
            scale_index,
            scale,
            &train_inputs,
            &targets,
        )?;
        final_losses.push(losses.last().cloned().unwrap_or_default());
        scales.push(FittedScale {
            teacher,
            norm,
            students: ensemble.students.iter().map(|s| s.to_weights()).collect(),
        });
    }

    let mut provenance = Provenance {
        dataset: options.data.display().to_string(),
        created: utc_now(),
        trainer_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    if preset.whiten_residual {
        let notes = whiten_residuals(preset, &work, &spec, &splits, &mut scales)?;
        provenance.extra.insert(
            "residual_whitening".into(),
            toml::Value::Array(notes.into_iter().map(toml::Value::String).collect()),
        );
    }
    // Calibration runs on a staging copy under `.work`, so `out` only ever holds a finished,
    // calibrated bundle (a daemon or test reading it meanwhile never sees threshold 0).
    let staging = work.join("staging");
    let (calibrations, choice, mut engine) = calibrate(
        options,
        &spec,
        &staging,
        &scales,
        &splits.validation.inputs,
        &provenance,
    )?;
    let parity = f32_parity(
        preset,
        device,
        &mut engine,
        &scales,
        &calibrations,
        &splits.validation.inputs,
    )?;
    record_fit(
        &mut provenance.extra,
        options,
        &splits,
        &scales,
        &final_losses,
        &parity,
        choice.false_reject_rate_on_calibration,
    )?;
    let decision = Decision {
        threshold: choice.threshold,
        rule: choice.describe(),
    };
    export_bundle(
        out,
        preset,
        &spec,
        &scales,
        &calibrations,
        decision,
        provenance,
    )?;
    std::fs::remove_dir_all(&staging).ok();
    if options.precision.int8() {
        export_int8(
            out,
            preset,
            &spec,
            &scales,
            &splits.fit.inputs,
            &splits.validation.inputs,
        )?;
    }
    for entry in std::fs::read_dir(&work)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "onnx") {
            std::fs::remove_file(entry.path()).ok();
        }
    }
    Ok(FitReport {
        preset: preset.name.clone(),
        fit_images: splits.fit.paths.len(),
        validation_images: splits.validation.paths.len(),
        epochs: preset.epochs,
        final_student_losses: final_losses,
        calibration: calibrations,
        threshold: choice.threshold,
        parity_max_abs: parity.max_abs,
        parity_mean_abs: parity.mean_abs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The good images of one fit, loaded at the preset's input size.
struct Splits {
    /// What the students learn from.
    fit: Images,
    /// Calibration and threshold (never trained on).
    validation: Images,
    /// Left over by `max_fit_images`: they measure the residual whitening.
    spare: Images,
}

/// Step 1: `train/good` split (seeded) into fit, validation and spare images, all loaded.
fn split_images(options: &FitOptions, spec: &InputSpec) -> Result<Splits> {
    let preset = &options.preset;
    let good = options.data.join("train/good");
    let mut paths = ustad_core::images::images_in(&good).with_context(|| {
        format!(
            "{}: expected MVTec AD layout (train/good)",
            options.data.display()
        )
    })?;
    if paths.len() < 4 {
        bail!(
            "{}: {} images; fitting needs at least 4 good images",
            good.display(),
            paths.len()
        );
    }
    if !(0.0..1.0).contains(&options.validation_fraction) || options.validation_fraction == 0.0 {
        bail!("--validation-fraction must be in (0, 1)");
    }
    if preset.students < 2 {
        bail!(
            "preset {}: at least 2 students are needed for the variance",
            preset.name
        );
    }
    paths.shuffle(&mut StdRng::seed_from_u64(options.seed));
    let n_val = ((paths.len() as f64 * options.validation_fraction).ceil() as usize)
        .clamp(1, paths.len() - 1);
    let mut val_paths = paths.split_off(paths.len() - n_val);
    // Images left over by the fit limit measure the residual whitening: unseen by the students
    // and apart from the threshold's validation images. Without any, the fit images do.
    let mut spare_paths = if options.max_fit_images > 0 && paths.len() > options.max_fit_images {
        paths.split_off(options.max_fit_images)
    } else {
        Vec::new()
    };
    let whitening = if preset.whiten_residual {
        preset.whitening_images
    } else {
        0
    };
    // What neither the students nor the whitening see joins the validation images: the
    // threshold is a high quantile of their scores, and on MTD 80 images put it at one
    // outlier's score (`validation_images` in the provenance counts them all).
    if spare_paths.len() > whitening {
        val_paths.extend(spare_paths.split_off(whitening));
    }
    let loading = bar(
        paths.len() + val_paths.len() + spare_paths.len(),
        options.progress,
        "loading {pos}/{len} {bar:30} {per_sec}",
    );
    let load = |paths: Vec<PathBuf>| -> Result<Images> {
        Ok(Images {
            inputs: load_inputs(&paths, spec, &loading)?,
            paths,
        })
    };
    let splits = Splits {
        fit: load(paths)?,
        validation: load(val_paths)?,
        spare: load(spare_paths)?,
    };
    loading.finish_and_clear();
    log::info!(
        "{} fit and {} validation images from {}, resized to {}×{}",
        splits.fit.paths.len(),
        splits.validation.paths.len(),
        good.display(),
        spec.width,
        spec.height
    );
    Ok(splits)
}

/// Step 2: one scale's teacher, its maps of the training inputs, their statistics μ, σ, and
/// the students' targets `(T − μ)/σ`.
fn teacher_targets(
    options: &FitOptions,
    spec: &InputSpec,
    work: &Path,
    scale: &PresetScale,
    train_inputs: &[Vec<f32>],
) -> Result<(FitTeacher, ChannelNorm, Vec<Vec<f32>>)> {
    let (height, width) = (spec.height, spec.width);
    let p = scale.patch_size;
    let mode = Mode::Image {
        stride: scale.stride,
    };
    let (mh, mw) = scale
        .student_architecture()?
        .output_size(mode, height, width)?;
    let graph_path = work.join(format!("p{p}-s{}-teacher-raw.onnx", scale.stride));
    let t0 = Instant::now();
    let (teacher, raw) = match scale.teacher {
        TeacherKind::Distilled => {
            let teacher_path = options.teachers.join(format!("p{p}.ustw"));
            let teacher = NetworkWeights::load(&teacher_path).with_context(|| {
                format!(
                    "loading the p = {p} teacher (train one with `ustad-train teacher --patch-size {p}`)"
                )
            })?;
            let graph = network_graph(
                &teacher,
                &GraphSpec {
                    height,
                    width,
                    mode,
                    output_norm: None,
                },
            )?;
            save_model(&graph, &graph_path)?;
            let raw = run_network(&graph_path, train_inputs, height, width)?;
            (FitTeacher::Distilled(teacher), raw)
        }
        TeacherKind::Backbone => {
            let teacher = feature_teacher(options, scale.teacher_nodes.as_deref(), height, width)?;
            save_model(
                &teacher.graph(spec, scale.stride, (mh, mw), None)?,
                &graph_path,
            )?;
            let features = run_network(&graph_path, train_inputs, height, width)?;
            let projection = crate::pca::principal_projection(
                &features,
                teacher.channels(),
                DESCRIPTOR_DIM,
                scale.teacher_components,
            )?;
            let raw = features.par_iter().map(|f| projection.apply(f)).collect();
            (FitTeacher::Backbone(Box::new(teacher), projection), raw)
        }
    };
    let norm = match teacher {
        FitTeacher::Distilled(_) => channel_statistics(&raw, DESCRIPTOR_DIM),
        FitTeacher::Backbone(..) => common_scale(channel_statistics(&raw, DESCRIPTOR_DIM)),
    };
    log::info!(
        "p = {p}: teacher maps and statistics of {} images in {:.1} s",
        raw.len(),
        t0.elapsed().as_secs_f64()
    );
    let pixels = raw[0].len() / DESCRIPTOR_DIM;
    let targets = raw
        .into_iter()
        .map(|mut map| {
            for c in 0..DESCRIPTOR_DIM {
                for v in &mut map[c * pixels..(c + 1) * pixels] {
                    *v = (*v - norm.mean[c]) / norm.std[c];
                }
            }
            map
        })
        .collect();
    Ok((teacher, norm, targets))
}

/// The students and optimizer of a scale as left by its last finished epoch in `ckpt`, with
/// that epoch and the loss history; refuses a checkpoint of another seed or width.
fn resume_students(
    options: &FitOptions,
    scale: &PresetScale,
    ckpt: &Path,
    ensemble: Ensemble,
    optimizer: ModuleOptimizer,
) -> Result<(Ensemble, ModuleOptimizer, usize, Vec<Vec<f32>>)> {
    let state: FitCheckpoint = serde_json::from_slice(&std::fs::read(ckpt.join("state.json"))?)
        .with_context(|| format!("{}: bad checkpoint", ckpt.display()))?;
    if state.seed != options.seed {
        bail!(
            "{}: checkpoint has seed {}, asked {}",
            ckpt.display(),
            state.seed,
            options.seed
        );
    }
    if state.student_channel_divisor != scale.student_channel_divisor {
        bail!(
            "{}: checkpoint has students at channel divisor {}, the preset asks {}",
            ckpt.display(),
            state.student_channel_divisor,
            scale.student_channel_divisor
        );
    }
    let ensemble = ensemble
        .try_load_file(ckpt.join("students.bpk"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("students.bpk").display()))?;
    let optimizer = optimizer
        .load(ckpt.join("optimizer.bpk"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("optimizer.bpk").display()))?;
    log::info!(
        "p = {}: resumed after epoch {}",
        scale.patch_size,
        state.epoch
    );
    Ok((ensemble, optimizer, state.epoch, state.losses))
}

/// Step 3: the M students of one scale regress `targets` together, checkpointed into `ckpt`
/// after every epoch. Returns them and their mean loss per epoch.
fn train_students(
    options: &FitOptions,
    device: &Device,
    ckpt: &Path,
    scale_index: usize,
    scale: &PresetScale,
    train_inputs: &[Vec<f32>],
    targets: &[Vec<f32>],
) -> Result<(Ensemble, Vec<Vec<f32>>)> {
    let preset = &options.preset;
    let (height, width) = (preset.height, preset.width);
    let p = scale.patch_size;
    let mode = Mode::Image {
        stride: scale.stride,
    };
    let student_arch = scale.student_architecture()?;
    let (mh, mw) = student_arch.output_size(mode, height, width)?;
    let pixels = mh * mw;
    let mut ensemble = Ensemble {
        students: (0..preset.students)
            .map(|_| PatchNet::from_architecture(student_arch, device))
            .collect(),
    };
    let mut optimizer = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(options.weight_decay as f32)))
        .init();
    let mut start_epoch = 0;
    let mut losses: Vec<Vec<f32>> = Vec::new();
    if options.resume && ckpt.join("state.json").is_file() {
        (ensemble, optimizer, start_epoch, losses) =
            resume_students(options, scale, ckpt, ensemble, optimizer)?;
    }
    let steps_per_epoch = train_inputs.len().div_ceil(preset.batch);
    let training = bar(
        preset.epochs * steps_per_epoch,
        options.progress,
        "students p={prefix} {pos}/{len} {bar:25} {per_sec} eta {eta} {msg}",
    );
    training.set_prefix(p.to_string());
    training.set_position((start_epoch * steps_per_epoch) as u64);
    let total_steps = preset.epochs * steps_per_epoch;
    for epoch in start_epoch..preset.epochs {
        let mut order: Vec<usize> = (0..train_inputs.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            options.seed ^ ((epoch as u64 + 1) * 0x9E37_79B9),
        ));
        let mut epoch_loss = vec![0.0f64; preset.students];
        for (batch_index, batch) in order.chunks(preset.batch).enumerate() {
            let b = batch.len();
            let mut x = Vec::with_capacity(b * 3 * width * height);
            let mut y = Vec::with_capacity(b * DESCRIPTOR_DIM * pixels);
            for &i in batch {
                x.extend_from_slice(&train_inputs[i]);
                y.extend_from_slice(&targets[i]);
            }
            let x: Tensor<4> = Tensor::from_data(TensorData::new(x, [b, 3, height, width]), device);
            let y: Tensor<4> =
                Tensor::from_data(TensorData::new(y, [b, DESCRIPTOR_DIM, mh, mw]), device);
            let mut total: Option<Tensor<1>> = None;
            let mut values = Vec::with_capacity(preset.students);
            for student in &ensemble.students {
                let s = student.forward(x.clone(), mode)?;
                // Mean over pixels (and batch) of the squared L2 distance of descriptors.
                let loss = (s - y.clone()).powi_scalar(2).sum_dim(1).mean();
                values.push(crate::teacher::scalar(loss.clone()));
                total = Some(match total {
                    Some(t) => t + loss,
                    None => loss,
                });
            }
            let Some(total) = total else {
                bail!("no students")
            };
            let grads = GradientsParams::from_grads(total.backward(), &ensemble);
            let step = epoch * steps_per_epoch + batch_index;
            let rate = preset
                .schedule
                .rate(preset.learning_rate, step, total_steps);
            ensemble = optimizer.step(rate, ensemble, grads);
            if values.iter().any(|v| !v.is_finite()) {
                bail!(
                    "p = {p}: student training diverged in epoch {} (losses {values:?})",
                    epoch + 1
                );
            }
            for (e, v) in epoch_loss.iter_mut().zip(&values) {
                *e += *v as f64 * b as f64;
            }
            training.set_message(format!(
                "epoch {} lr {rate:.1e} loss {:.3}",
                epoch + 1,
                values.iter().sum::<f32>() / values.len() as f32
            ));
            training.inc(1);
        }
        losses.push(
            epoch_loss
                .iter()
                .map(|l| (*l / train_inputs.len() as f64) as f32)
                .collect(),
        );
        std::fs::create_dir_all(ckpt)?;
        ensemble
            .clone()
            .save_file(ckpt.join("students.bpk"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.display()))?;
        optimizer
            .save(ckpt.join("optimizer.bpk"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.display()))?;
        let state = FitCheckpoint {
            scale: scale_index,
            epoch: epoch + 1,
            seed: options.seed,
            student_channel_divisor: scale.student_channel_divisor,
            losses: losses.clone(),
        };
        std::fs::write(ckpt.join("state.json"), serde_json::to_vec(&state)?)?;
        log::info!(
            "p = {p}: epoch {} student losses {:?}",
            epoch + 1,
            losses.last()
        );
    }
    training.finish_and_clear();
    Ok((ensemble, losses))
}

/// One scale as it is exported: the teacher, the statistics its output is normalised by, and
/// the students' weights.
struct FittedScale {
    teacher: FitTeacher,
    norm: ChannelNorm,
    students: Vec<NetworkWeights>,
}

/// Step 4 (presets with `whiten_residual`): each scale's residual whitened on the spare images
/// (the fit images when there are none), folded into its teacher and students. Returns what
/// the provenance records.
fn whiten_residuals(
    preset: &Preset,
    work: &Path,
    spec: &InputSpec,
    splits: &Splits,
    scales: &mut [FittedScale],
) -> Result<Vec<String>> {
    let held_out = !splits.spare.inputs.is_empty();
    let images = if held_out { &splits.spare } else { &splits.fit };
    // The held-out images were already cut to `whitening_images` before loading; this bounds
    // the fit images standing in for them.
    let inputs = &images.inputs[..images.inputs.len().min(preset.whitening_images)];
    let mut notes = Vec::new();
    for (fitted, scale) in scales.iter_mut().zip(&preset.scales) {
        let (whitening, summary) = measure_whitening(
            work,
            &fitted.teacher,
            &fitted.norm,
            &fitted.students,
            spec,
            scale.stride,
            inputs,
        )?;
        fitted.teacher = fitted.teacher.whitened(&whitening, &fitted.norm)?;
        fitted.students = fitted
            .students
            .iter()
            .map(|s| whitening.network(s, None))
            .collect::<Result<_, _>>()?;
        fitted.norm = ChannelNorm::identity(DESCRIPTOR_DIM);
        log::info!(
            "p = {}: residual whitened on {} images (its 8 largest directions held {:.0} %)",
            scale.patch_size,
            summary.images,
            summary.top8_share * 100.0
        );
        notes.push(format!(
            "p{}-s{}: Σ^-1/2 of the residual on {} {} images, shrinkage {}, top 8 of {} directions {:.1} %",
            scale.patch_size,
            scale.stride,
            summary.images,
            if held_out { "held-out" } else { "fit" },
            crate::whiten::SHRINKAGE,
            DESCRIPTOR_DIM,
            summary.top8_share * 100.0
        ));
    }
    Ok(notes)
}

/// Writes the bundle of `scales` to `target` with the given calibrations and decision.
fn export_bundle(
    target: &Path,
    preset: &Preset,
    spec: &InputSpec,
    scales: &[FittedScale],
    calibrations: &[Calibration],
    decision: Decision,
    provenance: Provenance,
) -> Result<Bundle> {
    let exports: Vec<ScaleExport<'_>> = preset
        .scales
        .iter()
        .zip(scales)
        .zip(calibrations)
        .map(|((s, fitted), calibration)| ScaleExport {
            stride: s.stride,
            teacher: fitted.teacher.export(),
            students: &fitted.students,
            teacher_norm: fitted.norm.clone(),
            calibration: *calibration,
        })
        .collect();
    Ok(write_bundle(
        target,
        spec.clone(),
        &exports,
        preset.image_score,
        decision,
        provenance,
    )?)
}

/// Step 5: exported to `staging` with identity calibration, e and v measured on the
/// validation images by the exported bundle itself, re-exported calibrated, and the threshold
/// chosen from its scores. Returns the calibrations, the threshold and the calibrated engine.
fn calibrate(
    options: &FitOptions,
    spec: &InputSpec,
    staging: &Path,
    scales: &[FittedScale],
    validation: &[Vec<f32>],
    provenance: &Provenance,
) -> Result<(Vec<Calibration>, ThresholdChoice, Engine)> {
    let preset = &options.preset;
    let identity = vec![Calibration::IDENTITY; preset.scales.len()];
    let placeholder = Decision {
        threshold: 0.0,
        rule: "uncalibrated".into(),
    };
    let export = |calibrations: &[Calibration]| {
        export_bundle(
            staging,
            preset,
            spec,
            scales,
            calibrations,
            placeholder.clone(),
            provenance.clone(),
        )
    };
    let mut engine = Engine::load(export(&identity)?, EngineOptions::default())?;
    let mut e_stats = vec![RunningStats::default(); preset.scales.len()];
    let mut v_stats = vec![RunningStats::default(); preset.scales.len()];
    let calibrating = bar(
        validation.len() * 2,
        options.progress,
        "calibrating {pos}/{len} {bar:30} {per_sec}",
    );
    for input in validation {
        engine.analyze_input(input)?;
        for (i, maps) in engine.scale_maps().iter().enumerate() {
            e_stats[i].extend(maps.error);
            v_stats[i].extend(maps.variance);
        }
        calibrating.inc(1);
    }
    let calibrations: Vec<Calibration> = e_stats
        .iter()
        .zip(&v_stats)
        .map(|(e, v)| Calibration::from_statistics(e, v, preset.variance_weight))
        .collect();
    let mut engine = Engine::load(export(&calibrations)?, EngineOptions::default())?;
    let mut scores = Vec::with_capacity(validation.len());
    for input in validation {
        scores.push(engine.analyze_input(input)?.score);
        calibrating.inc(1);
    }
    calibrating.finish_and_clear();
    let choice = threshold_from_good(&scores, options.target_false_reject_rate, options.margin)?;
    Ok((calibrations, choice, engine))
}

/// How far the trainer's own anomaly maps (burn) are from the exported bundle's (tract).
struct Parity {
    max_abs: f32,
    mean_abs: f32,
    images: usize,
}

/// Step 6: parity of the trainer's forward pass (burn) against the calibrated bundle run by
/// tract, on up to 3 validation images.
fn f32_parity(
    preset: &Preset,
    device: &Device,
    engine: &mut Engine,
    scales: &[FittedScale],
    calibrations: &[Calibration],
    validation: &[Vec<f32>],
) -> Result<Parity> {
    let (height, width) = (preset.height, preset.width);
    let images = validation.len().min(3);
    let mut max_abs = 0.0f32;
    let mut sum = 0.0f64;
    let mut count = 0usize;
    for input in &validation[..images] {
        engine.analyze_input(input)?;
        let maps: Vec<(Vec<f32>, Vec<f32>)> = engine
            .scale_maps()
            .iter()
            .map(|m| (m.error.to_vec(), m.variance.to_vec()))
            .collect();
        for (i, (scale, fitted)) in preset.scales.iter().zip(scales).enumerate() {
            let mode = Mode::Image {
                stride: scale.stride,
            };
            let x: Tensor<4> = Tensor::from_data(
                TensorData::new(input.clone(), [1, 3, height, width]),
                device,
            );
            let t: Vec<f32> = match &fitted.teacher {
                FitTeacher::Distilled(weights) => {
                    let teacher = PatchNet::from_weights(weights, device)?;
                    let t = crate::net::to_vec(teacher.forward(x.clone(), mode)?);
                    let pixels = t.len() / DESCRIPTOR_DIM;
                    let norm = &fitted.norm;
                    t.iter()
                        .enumerate()
                        .map(|(k, v)| (v - norm.mean[k / pixels]) / norm.std[k / pixels])
                        .collect()
                }
                // burn has no backbone: the students' parity is checked against tract's
                // teacher, whose graph a test checks against the distillation targets.
                FitTeacher::Backbone(..) => {
                    let label = format!("p{}/teacher", scale.patch_size);
                    engine
                        .network_outputs()
                        .into_iter()
                        .find(|(l, _)| *l == label)
                        .map(|(_, t)| t.to_vec())
                        .with_context(|| format!("the engine has no network `{label}`"))?
                }
            };
            let pixels = t.len() / DESCRIPTOR_DIM;
            // The exported weights (whitened, where the preset says so) run by burn.
            let students: Vec<Vec<f32>> = fitted
                .students
                .iter()
                .map(|w| -> Result<Vec<f32>> {
                    let student = PatchNet::from_weights(w, device)?;
                    Ok(crate::net::to_vec(student.forward(x.clone(), mode)?))
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&[f32]> = students.iter().map(|s| s.as_slice()).collect();
            let (mut e, mut v) = (vec![0.0; pixels], vec![0.0; pixels]);
            ustad_core::judge::score::error_and_variance(&t, &refs, DESCRIPTOR_DIM, &mut e, &mut v);
            let c = calibrations[i];
            for k in 0..pixels {
                let ours = c.normalise(e[k], v[k]);
                let theirs = c.normalise(maps[i].0[k], maps[i].1[k]);
                let d = (ours - theirs).abs();
                max_abs = max_abs.max(d);
                sum += d as f64;
                count += 1;
            }
        }
    }
    Ok(Parity {
        max_abs,
        mean_abs: (sum / count.max(1) as f64) as f32,
        images,
    })
}

/// Step 7: what the fit was, into the bundle's provenance.
fn record_fit(
    extra: &mut BTreeMap<String, toml::Value>,
    options: &FitOptions,
    splits: &Splits,
    scales: &[FittedScale],
    final_losses: &[Vec<f32>],
    parity: &Parity,
    validation_false_reject_rate: f64,
) -> Result<()> {
    let preset = &options.preset;
    let int = |n: usize| toml::Value::Integer(n as i64);
    extra.insert("preset".into(), toml::Value::String(preset.name.clone()));
    extra.insert("fit_images".into(), int(splits.fit.paths.len()));
    extra.insert(
        "validation_images".into(),
        int(splits.validation.paths.len()),
    );
    extra.insert("epochs".into(), int(preset.epochs));
    extra.insert("batch".into(), int(preset.batch));
    extra.insert(
        "learning_rate".into(),
        toml::Value::Float(preset.learning_rate),
    );
    extra.insert("schedule".into(), toml::Value::try_from(preset.schedule)?);
    extra.insert("symmetric".into(), toml::Value::Boolean(options.symmetric));
    extra.insert("seed".into(), toml::Value::Integer(options.seed as i64));
    extra.insert(
        "teachers".into(),
        toml::Value::Array(
            preset
                .scales
                .iter()
                .zip(scales)
                .map(|(s, f)| toml::Value::String(f.teacher.describe(options, s)))
                .collect(),
        ),
    );
    extra.insert(
        "final_student_losses".into(),
        toml::Value::Array(
            final_losses
                .iter()
                .flatten()
                .map(|l| toml::Value::Float(*l as f64))
                .collect(),
        ),
    );
    extra.insert(
        "parity_f32_max_abs".into(),
        toml::Value::Float(parity.max_abs as f64),
    );
    extra.insert(
        "parity_f32_mean_abs".into(),
        toml::Value::Float(parity.mean_abs as f64),
    );
    extra.insert("parity_images".into(), int(parity.images));
    extra.insert(
        "validation_false_reject_rate".into(),
        toml::Value::Float(validation_false_reject_rate),
    );
    Ok(())
}

/// Step 8: int8 QOperator graphs (`ustad_core::bundle::int8`) calibrated on up to 32 fit
/// images, added to the bundle at `out` and validated by `Bundle::load`, then a parity report
/// (the f32 and int8 bundles, both run by tract) into its provenance.
fn export_int8(
    out: &Path,
    preset: &Preset,
    spec: &InputSpec,
    scales: &[FittedScale],
    fit: &[Vec<f32>],
    validation: &[Vec<f32>],
) -> Result<()> {
    use ustad_core::bundle::NetworkFiles;
    use ustad_core::bundle::int8::{activation_ranges, int8_graph};
    let (height, width) = (spec.height, spec.width);
    let calibration = &fit[..fit.len().min(32)];
    let mut bundle = Bundle::load(out)?;
    for (i, (scale, fitted)) in preset.scales.iter().zip(scales).enumerate() {
        let (p, s) = (scale.patch_size, scale.stride);
        let graph_spec = |norm: Option<ChannelNorm>| GraphSpec {
            height,
            width,
            mode: Mode::Image { stride: s },
            output_norm: norm,
        };
        let write = |weights: &NetworkWeights, graph: GraphSpec, file: String| -> Result<String> {
            let ranges = activation_ranges(weights, &graph, calibration)?;
            save_model(&int8_graph(weights, &graph, &ranges)?, &out.join(&file))?;
            Ok(file)
        };
        let teacher = match &fitted.teacher {
            FitTeacher::Distilled(weights) => write(
                weights,
                graph_spec(Some(fitted.norm.clone())),
                format!("p{p}-s{s}-teacher-int8.onnx"),
            )?,
            // No int8 backbone: the int8 students run beside the f32 feature teacher.
            FitTeacher::Backbone(..) => bundle.manifest.scales[i].teacher.clone(),
        };
        let students = fitted
            .students
            .iter()
            .enumerate()
            .map(|(k, w)| {
                write(
                    w,
                    graph_spec(None),
                    format!("p{p}-s{s}-student{k}-int8.onnx"),
                )
            })
            .collect::<Result<_>>()?;
        bundle.manifest.scales[i].int8 = Some(NetworkFiles { teacher, students });
    }
    bundle.save_manifest()?;
    int8_parity(
        Bundle::load(out)?,
        &validation[..validation.len().min(8)],
        calibration.len(),
    )
}

/// The int8 bundle's maps and scores against the f32 ones on `images`, into the provenance.
fn int8_parity(bundle: Bundle, images: &[Vec<f32>], calibration_images: usize) -> Result<()> {
    use ustad_core::bundle::Precision;
    let mut f32_engine = Engine::load(bundle.clone(), EngineOptions::default())?;
    let mut int8_engine = Engine::load(
        bundle.clone(),
        EngineOptions {
            precision: Precision::Int8,
            ..EngineOptions::default()
        },
    )?;
    let (mut map_max, mut map_sum, mut count, mut score_max) = (0.0f32, 0.0f64, 0usize, 0.0f32);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for input in images {
        let a = f32_engine.analyze_input(input)?;
        let (a_map, a_score) = (a.map.to_vec(), a.score);
        let b = int8_engine.analyze_input(input)?;
        score_max = score_max.max((a_score - b.score).abs());
        for (x, y) in a_map.iter().zip(b.map) {
            let d = (x - y).abs();
            map_max = map_max.max(d);
            map_sum += d as f64;
            lo = lo.min(*x);
            hi = hi.max(*x);
        }
        count += a_map.len();
    }
    let map_mean = (map_sum / count.max(1) as f64) as f32;
    let spread = (hi - lo).max(f32::MIN_POSITIVE);
    let mut bundle = bundle;
    let extra = &mut bundle.manifest.provenance.extra;
    for (key, value) in [
        ("parity_int8_map_max_abs", map_max),
        ("parity_int8_map_mean_abs", map_mean),
        ("parity_int8_map_max_rel_spread", map_max / spread),
        ("parity_int8_map_mean_rel_spread", map_mean / spread),
        ("parity_int8_score_max_abs", score_max),
    ] {
        extra.insert(key.into(), toml::Value::Float(value as f64));
    }
    extra.insert(
        "parity_int8_images".into(),
        toml::Value::Integer(images.len() as i64),
    );
    extra.insert(
        "int8_calibration_images".into(),
        toml::Value::Integer(calibration_images as i64),
    );
    bundle.save_manifest()?;
    log::info!(
        "int8 parity on {} images: map max {map_max:.4} mean {map_mean:.4} (f32 map spread {spread:.4}), score max {score_max:.4}",
        images.len()
    );
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` without a date crate (civil-from-days, H. Hinnant).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The feature teacher of `options.backbone`, tapping `nodes` or else its sidecar's dense taps.
fn feature_teacher(
    options: &FitOptions,
    nodes: Option<&[String]>,
    height: usize,
    width: usize,
) -> Result<FeatureTeacher> {
    let sidecar = match &options.backbone_config {
        Some(path) => path.clone(),
        None => crate::backbone::BackboneConfig::find(&options.backbone)?,
    };
    let config = crate::backbone::BackboneConfig::load(&sidecar)?;
    let Some(dense) = config.dense else {
        bail!(
            "{}: no [dense] taps; a backbone teacher reads the nodes that section names",
            sidecar.display()
        );
    };
    let tap = FeatureTap {
        input: config.input,
        mean: config.mean,
        std: config.std,
        nodes: nodes.map_or(dense.nodes, <[String]>::to_vec),
        neighbourhood: dense.neighbourhood,
    };
    Ok(FeatureTeacher::load(&options.backbone, tap, height, width)?)
}
