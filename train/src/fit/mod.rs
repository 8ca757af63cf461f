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
//!    over all pixels, checkpointed every epoch (`resume_students` picks a run up again). A
//!    preset of no students skips this step: its teacher is scored alone.
//! 4. `whiten_residuals` (presets that ask for it): each scale's residual whitened on good
//!    parts, folded into its teacher and students.
//! 5. `calibrate`: export, then e/v statistics and the threshold on the validation images by
//!    running the exported bundle itself, so the numbers in the bundle are the daemon's.
//! 6. `f32_parity`: the trainer's (burn) anomaly maps against the exported bundle run by tract.
//! 7. `record_fit`, `export_bundle`: the provenance, and the finished bundle in `--out`.
//! 8. `export_int8` (unless `--precision f32`): int8 graphs and their parity against f32.

mod export;
mod int8;
mod preset;
mod split;
mod students;

pub use preset::{Preset, PresetScale, Schedule, TeacherKind};
pub use students::{Ensemble, channel_statistics};

use export::{calibrate, export_bundle, f32_parity, record_fit, whiten_residuals};
use int8::{export_int8, int8_changes_nothing};
use split::{flip_input, split_images};
use students::{teacher_targets, train_students};

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

use ustad_core::bundle::Provenance;
use ustad_core::bundle::onnx::{ChannelNorm, FeatureTeacher, Projection, TeacherExport, Whitening};
use ustad_core::judge::decide::Decision;
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::judge::score::Calibration;
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

/// A scale's teacher as the fit holds it.
enum FitTeacher {
    Distilled(NetworkWeights),
    Backbone(Box<FeatureTeacher>, Projection),
}

impl FitTeacher {
    /// The teacher as a bundle exports it, on the grid of a `patch_size` scale.
    fn export(&self, patch_size: usize) -> TeacherExport<'_> {
        match self {
            FitTeacher::Distilled(weights) => TeacherExport::Network(weights),
            FitTeacher::Backbone(teacher, projection) => TeacherExport::Features {
                teacher,
                projection,
                patch_size,
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
        // A preset of no students scores its teacher alone: nothing to train.
        let (students, losses) = if preset.students == 0 {
            (Vec::new(), Vec::new())
        } else {
            let (ensemble, losses) = train_students(
                options,
                device,
                &work.join(format!("scale{scale_index}")),
                scale_index,
                scale,
                &train_inputs,
                &targets,
            )?;
            (
                ensemble.students.iter().map(|s| s.to_weights()).collect(),
                losses,
            )
        };
        final_losses.push(losses.last().cloned().unwrap_or_default());
        scales.push(FittedScale {
            teacher,
            norm,
            students,
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
        if int8_changes_nothing(&scales) {
            log::info!("no int8 networks: the backbone teacher alone has no int8 graph");
        } else {
            export_int8(
                out,
                preset,
                &spec,
                &scales,
                &splits.fit.inputs,
                &splits.validation.inputs,
            )?;
        }
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

/// One scale as it is exported: the teacher, the statistics its output is normalised by, and
/// the students' weights.
struct FittedScale {
    teacher: FitTeacher,
    norm: ChannelNorm,
    students: Vec<NetworkWeights>,
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
