//! `ustad-train`: the workstation trainer.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use ustad_train::device::{DeviceKind, training_device};
use ustad_train::teacher::{Distillation, TeacherOptions, train_teacher};

#[derive(Parser)]
#[command(
    name = "ustad-train",
    version,
    about = "Train ustad teachers and students, export bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain a teacher by distillation from an ImageNet CNN on a folder of natural images.
    Teacher(Box<TeacherArgs>),
    /// Train students on good parts, calibrate, and export a bundle.
    Fit(Box<FitArgs>),
    /// Re-derive a bundle's threshold from new good (and optionally bad) images.
    Calibrate(CalibrateArgs),
    /// Print the architectures and their cost per 256×256 image.
    Arch,
}

/// The ImageNet backbone: the distillation source of `teacher`, the teacher itself of
/// `teacher = "backbone"` scales in `fit`.
#[derive(Args)]
struct BackboneArgs {
    /// Pretrained backbone ONNX.
    #[arg(
        long,
        default_value = "../shared/models/efficientnet_lite0_imagenet.onnx"
    )]
    backbone: PathBuf,
    /// Backbone sidecar (input normalisation, outputs, dense taps); default: found by the ONNX
    /// stem.
    #[arg(long)]
    backbone_config: Option<PathBuf>,
}

#[derive(Args)]
struct FitArgs {
    /// Dataset in MVTec AD layout; only train/good is used.
    #[arg(long)]
    data: PathBuf,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
    /// Built-in preset (edge, edge-teacher, edge-map, edge-fast, edge-shallow, edge-p33, edge-distilled, edge-p65, paper) or a preset .toml file.
    #[arg(long, default_value = "edge-map")]
    preset: String,
    /// Folder with the pretrained teachers p17.ustw, p33.ustw, p65.ustw.
    #[arg(long, default_value = "models/teachers")]
    teachers: PathBuf,
    /// Override every scale's teacher: a distilled network or the backbone's own features.
    #[arg(long, value_enum)]
    teacher: Option<ustad_train::fit::TeacherKind>,
    #[command(flatten)]
    backbone: BackboneArgs,
    /// Override the preset's number of students per scale.
    #[arg(long)]
    students: Option<usize>,
    /// Override the preset's epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Override the preset's batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Override the preset's learning rate.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Override the preset's learning-rate schedule.
    #[arg(long, value_enum)]
    schedule: Option<ustad_train::fit::Schedule>,
    #[arg(long, default_value_t = 1e-5)]
    weight_decay: f64,
    /// Fraction of train/good held out for calibration; good images that the preset's fit and
    /// whitening limits leave over join them.
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f64,
    /// Target false-reject rate on good parts for the threshold.
    #[arg(long, default_value_t = 0.01)]
    target_frr: f64,
    /// Threshold margin: threshold = q + margin · (q − median), q the (1 − FRR) quantile
    /// estimated from the good scores' upper tail.
    #[arg(long, default_value_t = 0.0)]
    margin: f32,
    /// The part looks the same mirrored left-right: also train on flipped images.
    #[arg(long)]
    symmetric: bool,
    /// Use at most N fit images (0 = all); default: the preset's limit.
    #[arg(long)]
    max_fit_images: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from the checkpoints in OUT/.work.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Graphs to export: f32 only, or f32 plus int8 QOperator graphs (`int8` and `both` alike).
    #[arg(long, value_enum, default_value = "both")]
    precision: ustad_train::fit::ExportPrecision,
}

#[derive(Args)]
struct CalibrateArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Folder of good parts.
    #[arg(long)]
    good: PathBuf,
    /// Folder of bad parts (reports escapes at the new threshold).
    #[arg(long)]
    bad: Option<PathBuf>,
    /// Target false-reject rate on good parts for the threshold.
    #[arg(long, default_value_t = 0.01)]
    target_frr: f64,
    /// Threshold margin, as for `fit`.
    #[arg(long, default_value_t = 0.0)]
    margin: f32,
    /// Also recompute the e/v calibration statistics from the good images.
    #[arg(long)]
    recompute_statistics: bool,
    /// Set every scale's variance weight: 1 = the paper's e + v, 0 = the error alone.
    #[arg(long)]
    variance_weight: Option<f32>,
    /// Set the image score's fraction of top pixels (their mean is the image score).
    #[arg(long)]
    top_fraction: Option<f32>,
}

#[derive(Args)]
struct TeacherArgs {
    /// Receptive field: 17, 33 or 65.
    #[arg(long)]
    patch_size: usize,
    /// Dense: image mode, every output cell regresses the backbone's feature maps (the
    /// sidecar's `[dense]` nodes). Patch: the paper's one patch per pooled target.
    #[arg(long, value_enum, default_value = "dense")]
    distillation: Distillation,
    /// Dense: side of the square training crops.
    #[arg(long, default_value_t = 128)]
    crop_size: usize,
    /// Dense: output stride of the teacher (0 = the largest the network supports).
    #[arg(long, default_value_t = 0)]
    stride: usize,
    /// Dense: held-out validation crops.
    #[arg(long, default_value_t = 32)]
    validation_crops: usize,
    /// Dense: grid cells used to fit the least-squares probe (whole crops: 64 crops of 128²
    /// at stride 4 by default, so the probe sees many images, not many cells of a few).
    #[arg(long, default_value_t = 65_536)]
    probe_cells: usize,
    #[command(flatten)]
    backbone: BackboneArgs,
    /// Resize crops to this side before the backbone (0 = feed the p×p patch).
    #[arg(long, default_value_t = 0)]
    backbone_size: usize,
    /// Folder of natural images (JPEG/PNG, searched recursively).
    #[arg(long, default_value = "../shared/data/imagenet-sample")]
    images: PathBuf,
    /// Output teacher weights (.ustw); loss curve and report are written beside it.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 50_000)]
    iterations: usize,
    /// Patches (patch mode, default 64) or crops (dense mode, default 8) per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Adam learning rate (default: 2e-4 in patch mode, the paper's; 5e-4 in dense mode).
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long, default_value_t = 1e-5)]
    weight_decay: f64,
    /// Weight of the distillation loss.
    #[arg(long, default_value_t = 1.0)]
    lambda_k: f32,
    /// Weight of the compactness loss (default: 1 in patch mode, the paper's; 0.01 in dense
    /// mode, where it sums over many more correlated cells).
    #[arg(long)]
    lambda_c: Option<f32>,
    /// Weight of the triplet (metric learning) loss; the paper uses 0 with a pretrained backbone.
    #[arg(long, default_value_t = 0.0)]
    lambda_m: f32,
    /// Triplet margin.
    #[arg(long, default_value_t = 1.0)]
    margin: f32,
    /// Patches (with backbone targets) computed once and sampled from during training.
    #[arg(long, default_value_t = 16_384)]
    cache_patches: usize,
    /// Held-out validation patches.
    #[arg(long, default_value_t = 512)]
    validation_patches: usize,
    #[arg(long, default_value_t = 100)]
    validation_every: usize,
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    /// Patches used to fit the least-squares decoders of the random-vs-trained comparison.
    #[arg(long, default_value_t = 2048)]
    baseline_patches: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from the checkpoint beside --out.
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Teacher(a) => {
            let device = training_device(a.device)?;
            let dense = a.distillation == Distillation::Dense;
            let options = TeacherOptions {
                distillation: a.distillation,
                crop_size: a.crop_size,
                stride: a.stride,
                validation_crops: a.validation_crops,
                probe_cells: a.probe_cells,
                backbone_config: a.backbone.backbone_config,
                backbone_size: a.backbone_size,
                iterations: a.iterations,
                batch: a.batch.unwrap_or(if dense { 8 } else { 64 }),
                learning_rate: a.learning_rate.unwrap_or(if dense { 5e-4 } else { 2e-4 }),
                weight_decay: a.weight_decay,
                lambda_k: a.lambda_k,
                lambda_c: a.lambda_c.unwrap_or(if dense { 0.01 } else { 1.0 }),
                lambda_m: a.lambda_m,
                margin: a.margin,
                cache_patches: a.cache_patches,
                validation_patches: a.validation_patches,
                validation_every: a.validation_every,
                checkpoint_every: a.checkpoint_every,
                baseline_patches: a.baseline_patches,
                seed: a.seed,
                resume: a.resume,
                ..TeacherOptions::paper(a.patch_size, a.backbone.backbone, a.images, a.out.clone())
            };
            let report = train_teacher(&options, &device)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Fit(a) => {
            let device = training_device(a.device)?;
            let mut preset = ustad_train::fit::Preset::load(&a.preset)?;
            preset.students = a.students.unwrap_or(preset.students);
            preset.epochs = a.epochs.unwrap_or(preset.epochs);
            preset.batch = a.batch.unwrap_or(preset.batch);
            preset.learning_rate = a.learning_rate.unwrap_or(preset.learning_rate);
            preset.schedule = a.schedule.unwrap_or(preset.schedule);
            if let Some(teacher) = a.teacher {
                for scale in &mut preset.scales {
                    scale.teacher = teacher;
                }
            }
            let max_fit_images = a.max_fit_images.unwrap_or(preset.max_fit_images);
            let options = ustad_train::fit::FitOptions {
                data: a.data,
                out: a.out,
                preset,
                teachers: a.teachers,
                backbone: a.backbone.backbone,
                backbone_config: a.backbone.backbone_config,
                validation_fraction: a.validation_fraction,
                target_false_reject_rate: a.target_frr,
                margin: a.margin,
                weight_decay: a.weight_decay,
                symmetric: a.symmetric,
                max_fit_images,
                seed: a.seed,
                resume: a.resume,
                progress: true,
                precision: a.precision,
            };
            let report = ustad_train::fit::fit(&options, &device)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Calibrate(a) => {
            let report =
                ustad_train::calibrate::recalibrate(&ustad_train::calibrate::RecalibrateOptions {
                    bundle: &a.bundle,
                    good: &a.good,
                    bad: a.bad.as_deref(),
                    target_false_reject_rate: a.target_frr,
                    margin: a.margin,
                    recompute_statistics: a.recompute_statistics,
                    variance_weight: a.variance_weight,
                    top_fraction: a.top_fraction,
                })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Arch => {
            for p in ustad_core::networks::arch::PATCH_SIZES {
                let arch = ustad_core::networks::arch::Architecture::for_patch_size(p)?;
                for stride in arch.supported_strides() {
                    let macs =
                        arch.macs(ustad_core::networks::arch::Mode::Image { stride }, 256, 256)?;
                    println!(
                        "p={p:>2} stride={stride}: {:>7.2} GMAC per network on 256×256",
                        macs as f64 / 1e9
                    );
                }
            }
        }
    }
    Ok(())
}
