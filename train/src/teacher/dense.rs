//! Dense teacher distillation: the teacher in image mode regresses a backbone feature map.
//!
//! Patch-mode distillation pays a whole forward and backward of the patch network for every
//! target. Run the same network in image mode at its output stride and every output cell is a
//! target, with overlapping receptive fields sharing their convolutions: a 128×128 crop at
//! stride 4 gives 1024 targets for about 20× less work per target. This is how EfficientAD
//! pretrains its 33-px, stride-4 teacher.
//!
//! The target is a channel-normalised concatenation of intermediate backbone maps (which nodes,
//! and their aggregation, come from the backbone's sidecar TOML), brought onto the teacher's
//! grid by [`super::targets`]. A 1×1 decoder (128 → C), used only here, maps descriptors to
//! targets; the paper's compactness loss decorrelates the 128 descriptor channels over all cells
//! of the batch. Fresh random crops every step: the backbone is cheap next to the teacher's
//! backward pass, so nothing is cached.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::targets::{Grid, channel_moments, dense_target, normalise};
use super::{
    Distillation, LossRecord, TeacherOptions, TeacherReport, compactness_loss,
    least_squares_validation_error, scalar, target_variance,
};
use crate::backbone::{BackboneConfig, DenseTargetConfig, FeatureBackbone};
use crate::corpus::{Corpus, grey_sometimes, square_crop};
use crate::net::PatchNet;
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::networks::arch::{Architecture, DESCRIPTOR_DIM, Mode};

/// Crops whose targets set the per-channel target normalisation.
const NORMALISATION_CROPS: usize = 128;

/// What a dense run adds to the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DenseReport {
    pub crop_size: usize,
    pub stride: usize,
    /// Teacher output grid `[height, width]` on one crop.
    pub grid: [usize; 2],
    pub target: DenseTargetConfig,
    pub target_channels: usize,
    /// Regression targets (grid cells) per second of training.
    pub targets_per_second: f64,
}

/// The teacher with its pretraining-only 1×1 decoder.
#[derive(Module, Debug)]
pub struct DenseDistiller {
    pub teacher: PatchNet,
    pub decoder: Conv2d,
}

/// Everything fixed for a run: the geometry, the backbone and the data.
pub struct DenseSetup {
    pub arch: Architecture,
    pub grid: Grid,
    pub target: DenseTargetConfig,
    pub backbone: FeatureBackbone,
    pub corpus: Corpus,
    pub train_images: Vec<usize>,
    pub validation_images: Vec<usize>,
}

impl DenseSetup {
    /// Loads the backbone (cut after the target nodes) and the corpus, naming the file or
    /// folder at fault.
    pub fn load(options: &TeacherOptions) -> Result<Self> {
        let arch = Architecture::for_patch_size(options.patch_size)?;
        let stride = dense_stride(&arch, options.stride)?;
        let (height, width) =
            arch.output_size(Mode::Image { stride }, options.crop_size, options.crop_size)?;
        let grid = Grid {
            input: options.crop_size,
            stride,
            height,
            width,
        };
        let config_path = match &options.backbone_config {
            Some(path) => path.clone(),
            None => BackboneConfig::find(&options.backbone)?,
        };
        let config = BackboneConfig::load(&config_path)?;
        let target = config.dense.clone().ok_or_else(|| {
            anyhow!(
                "{}: no [dense] table: dense distillation needs the target nodes (see models/backbones/)",
                config_path.display()
            )
        })?;
        let backbone = FeatureBackbone::load(
            &options.backbone,
            config,
            &target.nodes,
            options.batch,
            options.crop_size,
        )?;
        let corpus = Corpus::load(&options.images, options.progress)?;
        let (validation_images, train_images) = super::split_corpus(corpus.images.len());
        log::info!(
            "dense distillation: corpus {} images from {} ({} skipped); targets {:?} {:?} of {} on a {height}×{width} grid (stride {stride}, {}-px crops)",
            corpus.images.len(),
            options.images.display(),
            corpus.skipped.len(),
            target.nodes,
            backbone.shapes,
            options.backbone.display(),
            options.crop_size
        );
        Ok(Self {
            arch,
            grid,
            target,
            backbone,
            corpus,
            train_images,
            validation_images,
        })
    }

    /// Channels of the concatenated target.
    pub fn target_channels(&self) -> usize {
        self.backbone.shapes.iter().map(|s| s.0).sum()
    }

    /// Targets of `crops` normalised per channel with `mean` and `std`.
    pub fn normalised_targets(
        &self,
        crops: &[RgbImage],
        mean: &[f32],
        std: &[f32],
    ) -> Result<Vec<Vec<f32>>> {
        let mut targets = self.raw_targets(crops)?;
        for t in &mut targets {
            normalise(t, mean, std);
        }
        Ok(targets)
    }

    /// Raw targets of `crops`, each `C × grid cells`.
    pub fn raw_targets(&self, crops: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let maps = self
            .backbone
            .maps(crops)
            .context("computing backbone targets")?;
        Ok(maps
            .iter()
            .map(|m| dense_target(m, self.target.neighbourhood, &self.grid))
            .collect())
    }
}

/// The stride to train at: the one asked for, or the network's largest (0).
pub fn dense_stride(arch: &Architecture, asked: usize) -> Result<usize> {
    let stride = if asked == 0 {
        1 << arch.pool_count()
    } else {
        asked
    };
    arch.check_stride(stride)?;
    Ok(stride)
}

/// A random square crop of side between a quarter of the shorter side (at least `size`) and
/// the whole shorter side, resized to `size × size`, mirrored half of the time and grey with
/// probability `grayscale_probability`. The scales match parts imaged whole and downscaled.
pub fn dense_crop(
    image: &RgbImage,
    size: usize,
    grayscale_probability: f64,
    rng: &mut impl Rng,
) -> RgbImage {
    let shorter = image.width().min(image.height());
    let low = (shorter / 4).max(size as u32).min(shorter);
    let crop = square_crop(image, low..=shorter, rng);
    let mut crop = crate::corpus::resize(&crop, size);
    if rng.random_bool(0.5) {
        image::imageops::flip_horizontal_in_place(&mut crop);
    }
    grey_sometimes(crop, grayscale_probability, rng)
}

fn sample_crops(
    setup: &DenseSetup,
    from: &[usize],
    count: usize,
    options: &TeacherOptions,
    rng: &mut StdRng,
) -> Vec<RgbImage> {
    (0..count)
        .map(|_| {
            let image = &setup.corpus.images[from[rng.random_range(0..from.len())]];
            dense_crop(image, options.crop_size, options.grayscale_probability, rng)
        })
        .collect()
}

/// Crops and their normalised targets.
pub struct CropSet {
    pub crops: Vec<RgbImage>,
    pub targets: Vec<Vec<f32>>,
}

/// Teacher input `[n, 3, S, S]`, normalised as the daemon normalises frames.
pub fn crop_input(crops: &[RgbImage], size: usize, device: &Device) -> Tensor<4> {
    let spec = InputSpec::imagenet(size, size);
    let plane = 3 * size * size;
    let mut values = vec![0.0f32; crops.len() * plane];
    for (chunk, crop) in values.chunks_exact_mut(plane).zip(crops) {
        ustad_core::judge::preprocess::normalise_into(crop, &spec, chunk);
    }
    Tensor::from_data(
        TensorData::new(values, [crops.len(), 3, size, size]),
        device,
    )
}

fn target_tensor(targets: &[Vec<f32>], channels: usize, grid: &Grid, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = targets.concat();
    Tensor::from_data(
        TensorData::new(values, [targets.len(), channels, grid.height, grid.width]),
        device,
    )
}

/// Dense distillation loss: mean over cells (and batch) of ‖D(T(x))_cell − y_cell‖².
pub fn dense_distillation_loss(predicted: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    (predicted - target).powi_scalar(2).sum_dim(1).mean()
}

/// The descriptors of every cell as rows: `[n·h·w, 128]`.
pub fn cells(descriptors: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = descriptors.dims();
    descriptors.permute([0, 2, 3, 1]).reshape([n * h * w, c])
}

/// Checkpoint state besides the weights.
#[derive(Debug, Serialize, Deserialize)]
struct DenseCheckpoint {
    step: usize,
    seed: u64,
    patch_size: usize,
    stride: usize,
    crop_size: usize,
    target_mean: Vec<f32>,
    target_std: Vec<f32>,
    history: Vec<LossRecord>,
}

fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Mean L_k of `model` over `set`, in batches of the backbone's size.
fn evaluate(
    model: &DenseDistiller,
    set: &CropSet,
    setup: &DenseSetup,
    batch: usize,
    device: &Device,
) -> f32 {
    let channels = setup.target_channels();
    let mut total = 0.0f64;
    for (crops, targets) in set.crops.chunks(batch).zip(set.targets.chunks(batch)) {
        let x = crop_input(crops, setup.grid.input, device);
        let d = model
            .teacher
            .forward(
                x,
                Mode::Image {
                    stride: setup.grid.stride,
                },
            )
            .expect("the stride was checked at setup");
        let y = target_tensor(targets, channels, &setup.grid, device);
        let loss = dense_distillation_loss(model.decoder.forward(d), y);
        total += scalar(loss) as f64 * crops.len() as f64;
    }
    (total / set.crops.len().max(1) as f64) as f32
}

/// Descriptor rows `[cells, 128]` and target rows `[cells, C]` of a crop set, for the probe.
fn probe_rows(
    teacher: &PatchNet,
    set: &CropSet,
    setup: &DenseSetup,
    batch: usize,
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let channels = setup.target_channels();
    let mut x = Vec::new();
    for crops in set.crops.chunks(batch) {
        let d = teacher
            .forward(
                crop_input(crops, setup.grid.input, device),
                Mode::Image {
                    stride: setup.grid.stride,
                },
            )
            .expect("the stride was checked at setup");
        x.extend(
            cells(d)
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 descriptors"),
        );
    }
    (x, target_rows(set, channels))
}

/// Target rows `[cells, C]` of a crop set.
fn target_rows(set: &CropSet, channels: usize) -> Vec<f32> {
    let mut y = Vec::new();
    for t in &set.targets {
        let n = t.len() / channels;
        for cell in 0..n {
            y.extend((0..channels).map(|c| t[c * n + cell]));
        }
    }
    y
}

/// Runs dense distillation as `options` say and writes the teacher to `options.out`.
pub fn train_dense(options: &TeacherOptions, device: &Device) -> Result<TeacherReport> {
    if options.batch < 1 {
        bail!("--batch must be at least 1");
    }
    let setup = DenseSetup::load(options)?;
    let p = options.patch_size;
    let grid = setup.grid;
    let channels = setup.target_channels();
    let ckpt = super::checkpoint_dir(&options.out);
    let started = Instant::now();

    let resumed = if options.resume {
        Some(read_checkpoint(options, &ckpt, grid.stride)?)
    } else {
        None
    };

    let ((target_mean, target_std), validation) =
        normalisation_and_validation(options, &setup, resumed.as_ref())?;
    let backbone_seconds = started.elapsed().as_secs_f64();

    device.seed(options.seed);
    let mut model = DenseDistiller {
        teacher: PatchNet::new(p, device)?,
        decoder: Conv2dConfig::new([DESCRIPTOR_DIM, channels], [1, 1]).init(device),
    };
    let random_teacher = PatchNet::new(p, device)?;
    let mut optimizer = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(options.weight_decay as f32)))
        .init();
    let mut history = Vec::new();
    let mut start_step = 0;
    if let Some(state) = resumed {
        model = model
            .try_load_file(ckpt.join("model.bpk"))
            .map_err(|e| anyhow!("{}: {e}", ckpt.join("model.bpk").display()))?;
        optimizer = optimizer
            .load(ckpt.join("optimizer.bpk"))
            .map_err(|e| anyhow!("{}: {e}", ckpt.join("optimizer.bpk").display()))?;
        start_step = state.step;
        history = state.history;
        log::info!("resumed from step {start_step}");
    }
    let initial_validation_k = if start_step == 0 {
        evaluate(&model, &validation, &setup, options.batch, device)
    } else {
        f32::NAN
    };

    let bar = super::progress_bar(options, "dense p", start_step);
    let cells_per_step = (options.batch * grid.height * grid.width) as f64;
    let train_started = Instant::now();
    let mut last_validation = history
        .iter()
        .rev()
        .find_map(|r: &LossRecord| r.validation_k)
        .unwrap_or(initial_validation_k);
    let mut last_train_k = f32::NAN;
    for step in start_step..options.iterations {
        let (stepped, mut record) = dense_step(
            model,
            &mut optimizer,
            options,
            &setup,
            (&target_mean, &target_std),
            step,
            device,
        )?;
        model = stepped;
        if !record.train_k.is_finite() {
            bail!(
                "training diverged at step {}: L_k = {}",
                step + 1,
                record.train_k
            );
        }
        last_train_k = record.train_k;
        let done = step + 1 == options.iterations;
        if (step + 1) % options.validation_every.max(1) == 0 || done {
            last_validation = evaluate(&model, &validation, &setup, options.batch, device);
            record.validation_k = Some(last_validation);
        }
        history.push(record);
        let rate = (step + 1 - start_step) as f64 * cells_per_step
            / train_started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{rate:.0} targets/s L_k {:.3} L_c {:.2} val {last_validation:.3}",
            record.train_k, record.train_c
        ));
        bar.inc(1);
        if (step + 1) % options.checkpoint_every.max(1) == 0 || done {
            let state = DenseCheckpoint {
                step: step + 1,
                seed: options.seed,
                patch_size: p,
                stride: grid.stride,
                crop_size: options.crop_size,
                target_mean: target_mean.clone(),
                target_std: target_std.clone(),
                history: history.clone(),
            };
            super::write_checkpoint(&ckpt, &state, &model, &optimizer)?;
        }
    }
    bar.finish();
    let trained_steps = options.iterations.saturating_sub(start_step);
    let seconds = train_started.elapsed().as_secs_f64().max(1e-9);
    if last_train_k.is_nan() {
        last_train_k = history.last().map(|r| r.train_k).unwrap_or(f32::NAN);
    }

    let (fitted_validation_k, random_teacher_fitted_validation_k) = probe(
        options,
        &setup,
        (&target_mean, &target_std),
        &validation,
        [&model.teacher, &random_teacher],
        device,
    )?;
    let validation_rows = target_rows(&validation, channels);

    let report = TeacherReport {
        patch_size: p,
        iterations: options.iterations,
        patches_per_second: (trained_steps * options.batch) as f64 / seconds,
        backbone_seconds,
        final_train_k: last_train_k,
        final_validation_k: last_validation,
        fitted_validation_k,
        random_teacher_fitted_validation_k,
        initial_validation_k,
        target_variance: target_variance(&validation_rows, channels),
        distillation: Distillation::Dense,
        dense: Some(DenseReport {
            crop_size: options.crop_size,
            stride: grid.stride,
            grid: [grid.height, grid.width],
            target: setup.target.clone(),
            target_channels: channels,
            targets_per_second: trained_steps as f64 * cells_per_step / seconds,
        }),
    };
    let mut weights = model.teacher.to_weights();
    weights.metadata = super::teacher_metadata(
        options,
        last_validation,
        vec![
            ("distillation".into(), "dense".into()),
            ("target_nodes".into(), setup.target.nodes.join(",")),
            ("crop_size".into(), options.crop_size.to_string()),
            ("stride".into(), grid.stride.to_string()),
        ],
    );
    super::write_outputs(&options.out, &weights, &history, &report)?;
    Ok(report)
}

/// Per-channel mean and standard deviation of the dense targets.
type TargetMoments = (Vec<f32>, Vec<f32>);

/// The targets' normalisation (the checkpoint's when resuming) and the validation crops. Both
/// come from their own seeded generators, so a resumed run rebuilds exactly what the straight
/// run had.
fn normalisation_and_validation(
    options: &TeacherOptions,
    setup: &DenseSetup,
    resumed: Option<&DenseCheckpoint>,
) -> Result<(TargetMoments, CropSet)> {
    let mut setup_rng = StdRng::seed_from_u64(options.seed ^ 0xD15C_0DE5);
    let (target_mean, target_std) = match resumed {
        Some(state) => (state.target_mean.clone(), state.target_std.clone()),
        None => {
            let crops = sample_crops(
                setup,
                &setup.train_images,
                NORMALISATION_CROPS.max(options.batch),
                options,
                &mut setup_rng,
            );
            channel_moments(&setup.raw_targets(&crops)?, setup.target_channels())
        }
    };
    let mut validation_rng = StdRng::seed_from_u64(options.seed ^ 0x7A11_DA7E);
    let validation = {
        let crops = sample_crops(
            setup,
            &setup.validation_images,
            options.validation_crops.max(1),
            options,
            &mut validation_rng,
        );
        let targets = setup.normalised_targets(&crops, &target_mean, &target_std)?;
        CropSet { crops, targets }
    };
    Ok(((target_mean, target_std), validation))
}

/// One optimiser step of dense distillation on the crops that `step` draws (its own seeded
/// generator, so a resumed run draws what a straight one would). Returns the updated model and
/// the step's training losses (its validation is the caller's).
fn dense_step(
    model: DenseDistiller,
    optimizer: &mut ModuleOptimizer,
    options: &TeacherOptions,
    setup: &DenseSetup,
    (target_mean, target_std): (&[f32], &[f32]),
    step: usize,
    device: &Device,
) -> Result<(DenseDistiller, LossRecord)> {
    let grid = setup.grid;
    let mut rng = step_rng(options.seed, step);
    let crops = sample_crops(setup, &setup.train_images, options.batch, options, &mut rng);
    let targets = setup.normalised_targets(&crops, target_mean, target_std)?;
    let x = crop_input(&crops, grid.input, device);
    let y = target_tensor(&targets, setup.target_channels(), &grid, device);
    let descriptors = model.teacher.forward(
        x,
        Mode::Image {
            stride: grid.stride,
        },
    )?;
    let loss_k = dense_distillation_loss(model.decoder.forward(descriptors.clone()), y);
    let loss_c = compactness_loss(cells(descriptors));
    let loss =
        loss_k.clone().mul_scalar(options.lambda_k) + loss_c.clone().mul_scalar(options.lambda_c);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optimizer.step(options.learning_rate, model, grads);
    Ok((model, LossRecord::after_step(step, loss_k, loss_c, 0.0)))
}

/// The checkpoint in `ckpt` to resume from, refused unless it is of the same patch size,
/// seed, stride and crop as asked.
fn read_checkpoint(
    options: &TeacherOptions,
    ckpt: &Path,
    stride: usize,
) -> Result<DenseCheckpoint> {
    let path = ckpt.join("state.json");
    let state: DenseCheckpoint = serde_json::from_slice(
        &std::fs::read(&path)
            .with_context(|| format!("--resume: no checkpoint in {}", ckpt.display()))?,
    )
    .with_context(|| format!("{}: bad dense checkpoint state", path.display()))?;
    let asked = (options.patch_size, options.seed, stride, options.crop_size);
    let found = (state.patch_size, state.seed, state.stride, state.crop_size);
    if asked != found {
        bail!(
            "{}: checkpoint is for (p, seed, stride, crop) = {found:?}; asked {asked:?}",
            ckpt.display()
        );
    }
    Ok(state)
}

/// The probe: for each of `teachers` (trained, random), one least-squares decoder fitted on the
/// same cells of training crops, and its error on the validation set.
fn probe(
    options: &TeacherOptions,
    setup: &DenseSetup,
    (target_mean, target_std): (&[f32], &[f32]),
    validation: &CropSet,
    teachers: [&PatchNet; 2],
    device: &Device,
) -> Result<(f32, f32)> {
    let grid = setup.grid;
    let channels = setup.target_channels();
    let probe_set = {
        let mut rng = StdRng::seed_from_u64(options.seed ^ 0x0B5E_55ED);
        let count = options
            .probe_cells
            .div_ceil(grid.height * grid.width)
            .max(1);
        let crops = sample_crops(setup, &setup.train_images, count, options, &mut rng);
        let targets = setup.normalised_targets(&crops, target_mean, target_std)?;
        CropSet { crops, targets }
    };
    let fitted = |teacher: &PatchNet| {
        let (x, y) = probe_rows(teacher, &probe_set, setup, options.batch, device);
        let (xv, yv) = probe_rows(teacher, validation, setup, options.batch, device);
        least_squares_validation_error(&x, &y, &xv, &yv, DESCRIPTOR_DIM, channels)
    };
    Ok((fitted(teachers[0]), fitted(teachers[1])))
}
