//! Teacher pretraining by knowledge distillation (paper §3.2), in two forms:
//! [`Distillation::Dense`] ([`dense`]: the teacher in image mode regresses backbone feature maps
//! at every output cell, the default) and [`Distillation::Patch`] (this file: the paper's
//! patch-by-patch regression of the backbone's pooled feature).
//!
//! A patch network T̂ and a linear decoder D learn `D(T̂(patch)) ≈ P(patch)`, where P is the
//! pooled feature of a pretrained ImageNet CNN (the backbone), with a compactness term that
//! decorrelates the 128 descriptor channels and an optional triplet term.
//!
//! Backbone targets are the expensive part on a CPU, so a pool of patches and their targets is
//! computed once (`cache_patches`) and training draws batches from it; validation patches come
//! from held-out images.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub mod dense;
pub mod targets;

use crate::backbone::{Backbone, BackboneConfig};
use crate::corpus::{Corpus, random_crop, resize};
use crate::net::PatchNet;
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::networks::arch::DESCRIPTOR_DIM;

/// How the teacher learns from the backbone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distillation {
    /// One p×p patch per target, regressing the backbone's pooled feature (the paper).
    #[default]
    Patch,
    /// Whole crops in image mode, every output cell regressing backbone feature maps.
    Dense,
}

/// Everything `ustad-train teacher` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherOptions {
    pub patch_size: usize,
    pub distillation: Distillation,
    /// Dense mode: side of the square training crops (teacher and backbone input).
    pub crop_size: usize,
    /// Dense mode: the teacher's output stride (0 = the largest the network supports).
    pub stride: usize,
    /// Dense mode: held-out validation crops.
    pub validation_crops: usize,
    /// Dense mode: grid cells used to fit the least-squares probe.
    pub probe_cells: usize,
    pub backbone: PathBuf,
    pub backbone_config: Option<PathBuf>,
    /// Side the crop is resized to before the backbone; 0 feeds the p×p patch itself.
    pub backbone_size: usize,
    pub images: PathBuf,
    pub out: PathBuf,
    pub iterations: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub lambda_k: f32,
    pub lambda_c: f32,
    pub lambda_m: f32,
    /// Triplet margin δ.
    pub margin: f32,
    pub grayscale_probability: f64,
    pub cache_patches: usize,
    pub validation_patches: usize,
    pub validation_every: usize,
    pub checkpoint_every: usize,
    /// Patches used to fit a least-squares decoder for the random-vs-trained comparison.
    pub baseline_patches: usize,
    pub seed: u64,
    pub resume: bool,
    pub progress: bool,
}

impl TeacherOptions {
    /// The paper's settings (λ_k = λ_c = 1, λ_m = 0, batch 64, Adam 2e-4, wd 1e-5).
    pub fn paper(patch_size: usize, backbone: PathBuf, images: PathBuf, out: PathBuf) -> Self {
        Self {
            patch_size,
            distillation: Distillation::Patch,
            crop_size: 128,
            stride: 0,
            validation_crops: 32,
            probe_cells: 65_536,
            backbone,
            backbone_config: None,
            backbone_size: 0,
            images,
            out,
            iterations: 50_000,
            batch: 64,
            learning_rate: 2e-4,
            weight_decay: 1e-5,
            lambda_k: 1.0,
            lambda_c: 1.0,
            lambda_m: 0.0,
            margin: 1.0,
            grayscale_probability: 0.1,
            cache_patches: 16_384,
            validation_patches: 512,
            validation_every: 100,
            checkpoint_every: 200,
            baseline_patches: 2048,
            seed: 0,
            resume: false,
            progress: true,
        }
    }
}

/// One row of the loss curve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LossRecord {
    pub step: usize,
    pub train_k: f32,
    pub train_c: f32,
    pub train_m: f32,
    pub validation_k: Option<f32>,
}

impl LossRecord {
    /// The training losses of 0-based step `step`; its validation is measured apart.
    fn after_step(step: usize, loss_k: Tensor<1>, loss_c: Tensor<1>, train_m: f32) -> Self {
        LossRecord {
            step: step + 1,
            train_k: scalar(loss_k),
            train_c: scalar(loss_c),
            train_m,
            validation_k: None,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherReport {
    pub patch_size: usize,
    pub iterations: usize,
    pub patches_per_second: f64,
    pub backbone_seconds: f64,
    pub final_train_k: f32,
    pub final_validation_k: f32,
    /// Validation L_k with a least-squares decoder on the trained teacher's descriptors…
    pub fitted_validation_k: f32,
    /// …and on a randomly initialised teacher's, for comparison.
    pub random_teacher_fitted_validation_k: f32,
    /// Validation L_k of the untrained teacher with its untrained decoder (step 0).
    pub initial_validation_k: f32,
    /// Mean squared norm of the centred validation targets: L_k of predicting their mean.
    pub target_variance: f32,
    /// Reports written before dense distillation existed are patch runs.
    #[serde(default)]
    pub distillation: Distillation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<dense::DenseReport>,
}

/// The trained pair. The decoder is only needed for pretraining.
#[derive(Module, Debug)]
pub struct Distiller {
    pub teacher: PatchNet,
    pub decoder: Linear,
}

/// Patches at network resolution and their backbone targets.
pub struct PatchSet {
    pub patches: Vec<RgbImage>,
    pub targets: Vec<f32>,
    pub dim: usize,
}

/// Samples `count` patches from `images` (indices into the corpus) and computes targets.
pub fn sample_patch_set(
    corpus: &Corpus,
    indices: &[usize],
    count: usize,
    options: &TeacherOptions,
    backbone: &Backbone,
    rng: &mut StdRng,
) -> Result<PatchSet> {
    let p = options.patch_size;
    let mut patches = Vec::with_capacity(count);
    let mut backbone_inputs = Vec::with_capacity(count);
    for _ in 0..count {
        let image = &corpus.images[indices[rng.random_range(0..indices.len())]];
        let crop = random_crop(image, p, options.grayscale_probability, rng);
        let patch = resize(&crop, p);
        backbone_inputs.push(if options.backbone_size == 0 {
            patch.clone()
        } else {
            resize(&crop, options.backbone_size)
        });
        patches.push(patch);
    }
    let targets = backbone
        .features(&backbone_inputs)
        .context("computing backbone targets")?;
    Ok(PatchSet {
        patches,
        targets,
        dim: backbone.dim,
    })
}

/// Network input `[n, 3, p, p]` for the patches at `indices`, normalised as the daemon does.
pub fn batch_input(
    set: &PatchSet,
    indices: &[usize],
    patch_size: usize,
    device: &Device,
) -> Tensor<4> {
    let spec = InputSpec::imagenet(patch_size, patch_size);
    let plane = 3 * patch_size * patch_size;
    let mut values = vec![0.0f32; indices.len() * plane];
    for (chunk, &i) in values.chunks_exact_mut(plane).zip(indices) {
        ustad_core::judge::preprocess::normalise_into(&set.patches[i], &spec, chunk);
    }
    Tensor::from_data(
        TensorData::new(values, [indices.len(), 3, patch_size, patch_size]),
        device,
    )
}

fn batch_targets(set: &PatchSet, indices: &[usize], device: &Device) -> Tensor<2> {
    let mut values = Vec::with_capacity(indices.len() * set.dim);
    for &i in indices {
        values.extend_from_slice(&set.targets[i * set.dim..(i + 1) * set.dim]);
    }
    Tensor::from_data(TensorData::new(values, [indices.len(), set.dim]), device)
}

/// Distillation loss: mean over the batch of ‖D(T̂(x)) − P(x)‖².
pub fn distillation_loss(predicted: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    (predicted - target).powi_scalar(2).sum_dim(1).mean()
}

/// Compactness loss: sum of the squared off-diagonal entries of the correlation matrix of the
/// descriptors in the batch. Squares, not a signed sum, so correlations cannot cancel.
pub fn compactness_loss(descriptors: Tensor<2>) -> Tensor<1> {
    let [batch, dim] = descriptors.dims();
    let device = descriptors.device();
    let centred = descriptors.clone() - descriptors.mean_dim(0);
    let covariance = centred
        .clone()
        .transpose()
        .matmul(centred)
        .div_scalar(batch as f32);
    let eye: Tensor<2> = Tensor::from_data(TensorData::new(identity(dim), [dim, dim]), &device);
    let variance = (covariance.clone() * eye.clone()).sum_dim(1); // [dim, 1]
    let std = (variance + 1e-8).sqrt();
    let correlation = covariance / std.clone().matmul(std.transpose());
    let off_diagonal = eye.neg() + 1.0;
    (correlation.powi_scalar(2) * off_diagonal).sum()
}

fn identity(n: usize) -> Vec<f32> {
    (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect()
}

/// Triplet loss `max(0, δ + δ⁺ − δ⁻)`, δ⁻ the smaller distance of anchor and positive to the
/// negative (paper eq. 3).
pub fn triplet_loss(
    anchor: Tensor<2>,
    positive: Tensor<2>,
    negative: Tensor<2>,
    margin: f32,
) -> Tensor<1> {
    let d_pos = (anchor.clone() - positive.clone())
        .powi_scalar(2)
        .sum_dim(1);
    let d_neg_a = (anchor - negative.clone()).powi_scalar(2).sum_dim(1);
    let d_neg_p = (positive - negative).powi_scalar(2).sum_dim(1);
    let d_neg = d_neg_a.min_pair(d_neg_p);
    relu(d_pos - d_neg + margin).mean()
}

/// Slightly shifted, noisy copies of `patches` (the triplet positives).
fn jitter(set: &PatchSet, indices: &[usize], rng: &mut StdRng) -> PatchSet {
    let patches = indices
        .iter()
        .map(|&i| {
            let src = &set.patches[i];
            let (w, h) = src.dimensions();
            let (dx, dy) = (rng.random_range(-2i32..=2), rng.random_range(-2i32..=2));
            RgbImage::from_fn(w, h, |x, y| {
                let sx = (x as i32 + dx).clamp(0, w as i32 - 1) as u32;
                let sy = (y as i32 + dy).clamp(0, h as i32 - 1) as u32;
                let mut px = *src.get_pixel(sx, sy);
                for c in px.0.iter_mut() {
                    // Approximately Gaussian (sum of uniforms), σ ≈ 4 grey levels.
                    let noise: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 7.0;
                    *c = (*c as f32 + noise).round().clamp(0.0, 255.0) as u8;
                }
                px
            })
        })
        .collect();
    PatchSet {
        patches,
        targets: Vec::new(),
        dim: set.dim,
    }
}

/// Mean L_k of `model` over a whole patch set, in batches.
fn evaluate(
    model: &Distiller,
    set: &PatchSet,
    patch_size: usize,
    batch: usize,
    device: &Device,
) -> f32 {
    let n = set.patches.len();
    let mut total = 0.0f64;
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let d = model
            .teacher
            .descriptors(batch_input(set, &idx, patch_size, device));
        let loss = distillation_loss(model.decoder.forward(d), batch_targets(set, &idx, device));
        total += scalar(loss) as f64 * idx.len() as f64;
    }
    (total / n as f64) as f32
}

/// Descriptors of every patch of `set` (`n × 128`).
pub fn descriptors_of(
    teacher: &PatchNet,
    set: &PatchSet,
    patch_size: usize,
    batch: usize,
    device: &Device,
) -> Vec<f32> {
    let n = set.patches.len();
    let mut out = Vec::with_capacity(n * DESCRIPTOR_DIM);
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let d = teacher.descriptors(batch_input(set, &idx, patch_size, device));
        out.extend(
            d.into_data()
                .try_into_vec::<f32>()
                .expect("f32 descriptors"),
        );
    }
    out
}

pub(crate) fn scalar(t: Tensor<1>) -> f32 {
    t.into_data()
        .try_into_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN)
}

/// Fits `Y ≈ [X, 1] W` by ridge-regularised least squares (f64 normal equations, Cholesky)
/// and returns the mean squared-norm error of the fit on `(x_eval, y_eval)`.
pub fn least_squares_validation_error(
    x: &[f32],
    y: &[f32],
    x_eval: &[f32],
    y_eval: &[f32],
    in_dim: usize,
    out_dim: usize,
) -> f32 {
    let n = x.len() / in_dim;
    let k = in_dim + 1;
    let row = |data: &[f32], i: usize| -> Vec<f64> {
        let mut r: Vec<f64> = data[i * in_dim..(i + 1) * in_dim]
            .iter()
            .map(|&v| v as f64)
            .collect();
        r.push(1.0);
        r
    };
    let mut xtx = vec![0.0f64; k * k];
    let mut xty = vec![0.0f64; k * out_dim];
    for i in 0..n {
        let r = row(x, i);
        let yi = &y[i * out_dim..(i + 1) * out_dim];
        for a in 0..k {
            for b in 0..k {
                xtx[a * k + b] += r[a] * r[b];
            }
            for (o, &yv) in yi.iter().enumerate() {
                xty[a * out_dim + o] += r[a] * yv as f64;
            }
        }
    }
    let trace: f64 = (0..k).map(|a| xtx[a * k + a]).sum::<f64>() / k as f64;
    for a in 0..k {
        xtx[a * k + a] += 1e-6 * trace.max(1e-12);
    }
    // Cholesky: xtx = L Lᵀ.
    let mut l = vec![0.0f64; k * k];
    for a in 0..k {
        for b in 0..=a {
            let s: f64 = (0..b).map(|j| l[a * k + j] * l[b * k + j]).sum();
            if a == b {
                l[a * k + a] = (xtx[a * k + a] - s).max(1e-30).sqrt();
            } else {
                l[a * k + b] = (xtx[a * k + b] - s) / l[b * k + b];
            }
        }
    }
    // Solve L Lᵀ W = XᵀY column by column.
    let mut w = vec![0.0f64; k * out_dim];
    for o in 0..out_dim {
        let mut z = vec![0.0f64; k];
        for a in 0..k {
            let s: f64 = (0..a).map(|j| l[a * k + j] * z[j]).sum();
            z[a] = (xty[a * out_dim + o] - s) / l[a * k + a];
        }
        for a in (0..k).rev() {
            let s: f64 = (a + 1..k).map(|j| l[j * k + a] * w[j * out_dim + o]).sum();
            w[a * out_dim + o] = (z[a] - s) / l[a * k + a];
        }
    }
    let m = x_eval.len() / in_dim;
    let mut total = 0.0f64;
    for i in 0..m {
        let r = row(x_eval, i);
        for o in 0..out_dim {
            let pred: f64 = (0..k).map(|a| r[a] * w[a * out_dim + o]).sum();
            total += (pred - y_eval[i * out_dim + o] as f64).powi(2);
        }
    }
    (total / m.max(1) as f64) as f32
}

/// Mean squared norm of the centred targets: the L_k of always predicting their mean.
pub fn target_variance(targets: &[f32], dim: usize) -> f32 {
    let n = targets.len() / dim;
    let mean: Vec<f64> = (0..dim)
        .map(|d| (0..n).map(|i| targets[i * dim + d] as f64).sum::<f64>() / n as f64)
        .collect();
    let total: f64 = (0..n)
        .map(|i| {
            (0..dim)
                .map(|d| (targets[i * dim + d] as f64 - mean[d]).powi(2))
                .sum::<f64>()
        })
        .sum();
    (total / n as f64) as f32
}

/// Checkpoint state besides the weights.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    seed: u64,
    patch_size: usize,
    history: Vec<LossRecord>,
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    out.with_extension("ckpt")
}

/// `(validation, training)` image indices: every 20th image (by name) is held out.
fn split_corpus(count: usize) -> (Vec<usize>, Vec<usize>) {
    let (validation, train): (Vec<usize>, Vec<usize>) =
        (0..count).partition(|i| count >= 2 && i % 20 == 0);
    if validation.is_empty() {
        (train.clone(), train)
    } else {
        (validation, train)
    }
}

/// Runs distillation as `options` say and writes the teacher to `options.out`.
pub fn train_teacher(options: &TeacherOptions, device: &Device) -> Result<TeacherReport> {
    match options.distillation {
        Distillation::Dense => dense::train_dense(options, device),
        Distillation::Patch => train_patch(options, device),
    }
}

/// The paper's patch-mode distillation.
fn train_patch(options: &TeacherOptions, device: &Device) -> Result<TeacherReport> {
    let p = options.patch_size;
    // Refuses a patch size without a network before any backbone work.
    ustad_core::networks::arch::Architecture::for_patch_size(p)?;
    if options.batch < 2 {
        bail!("--batch must be at least 2 (the compactness loss needs a batch correlation)");
    }
    let started = Instant::now();
    let (train_set, validation_set, backbone_side) = patch_sets(options)?;
    let backbone_seconds = started.elapsed().as_secs_f64();
    log::info!("backbone targets took {backbone_seconds:.1} s");

    device.seed(options.seed);
    let mut model = initial_distiller(p, &train_set, device)?;
    let random_teacher = PatchNet::new(p, device)?;
    let mut optimizer = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(options.weight_decay as f32)))
        .init();
    let mut history: Vec<LossRecord> = Vec::new();
    let mut start_step = 0;
    let ckpt = checkpoint_dir(&options.out);
    if options.resume {
        let state = read_checkpoint(options, &ckpt)?;
        model = model
            .try_load_file(ckpt.join("model.bpk"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("model.bpk").display()))?;
        optimizer = optimizer
            .load(ckpt.join("optimizer.bpk"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("optimizer.bpk").display()))?;
        start_step = state.step;
        history = state.history;
        log::info!("resumed from step {start_step}");
    }
    let initial_validation_k = if start_step == 0 {
        evaluate(&model, &validation_set, p, options.batch, device)
    } else {
        f32::NAN
    };

    let bar = progress_bar(options, "p", start_step);
    let train_started = Instant::now();
    let mut last_validation = history
        .iter()
        .rev()
        .find_map(|r| r.validation_k)
        .unwrap_or(initial_validation_k);
    let mut last = LossRecord {
        step: start_step,
        train_k: f32::NAN,
        train_c: f32::NAN,
        train_m: 0.0,
        validation_k: None,
    };
    for step in start_step..options.iterations {
        (model, last) = patch_step(model, &mut optimizer, options, &train_set, step, device);
        if !last.train_k.is_finite() {
            bail!(
                "training diverged at step {}: L_k = {}",
                step + 1,
                last.train_k
            );
        }
        let done = step + 1 == options.iterations;
        if (step + 1) % options.validation_every.max(1) == 0 || done {
            last_validation = evaluate(&model, &validation_set, p, options.batch, device);
            last.validation_k = Some(last_validation);
        }
        history.push(last);
        bar.set_message(format!(
            "L_k {:.2} L_c {:.2} val {:.2}",
            last.train_k, last.train_c, last_validation
        ));
        bar.inc(1);
        if (step + 1) % options.checkpoint_every.max(1) == 0 || done {
            let state = CheckpointState {
                step: step + 1,
                seed: options.seed,
                patch_size: p,
                history: history.clone(),
            };
            write_checkpoint(&ckpt, &state, &model, &optimizer)?;
        }
    }
    bar.finish();
    let trained_steps = options.iterations.saturating_sub(start_step);
    let patches_per_second =
        (trained_steps * options.batch) as f64 / train_started.elapsed().as_secs_f64().max(1e-9);

    let (fitted_validation_k, random_teacher_fitted_validation_k) = probe(
        options,
        &train_set,
        &validation_set,
        [&model.teacher, &random_teacher],
        device,
    );

    let report = TeacherReport {
        patch_size: p,
        iterations: options.iterations,
        patches_per_second,
        backbone_seconds,
        final_train_k: last.train_k,
        final_validation_k: last_validation,
        fitted_validation_k,
        random_teacher_fitted_validation_k,
        initial_validation_k,
        target_variance: target_variance(&validation_set.targets, validation_set.dim),
        distillation: Distillation::Patch,
        dense: None,
    };
    let mut weights = model.teacher.to_weights();
    weights.metadata = teacher_metadata(
        options,
        last_validation,
        vec![
            ("distillation".into(), "patch".into()),
            ("backbone_size".into(), backbone_side.to_string()),
        ],
    );
    write_outputs(&options.out, &weights, &history, &report)?;
    Ok(report)
}

/// The distiller at step 0: a fresh teacher, and a decoder whose bias starts at the mean
/// target, so the first steps learn structure, not the offset (which otherwise dominates a
/// short CPU run).
fn initial_distiller(p: usize, train_set: &PatchSet, device: &Device) -> Result<Distiller> {
    let mut model = Distiller {
        teacher: PatchNet::new(p, device)?,
        decoder: LinearConfig::new(DESCRIPTOR_DIM, train_set.dim).init(device),
    };
    let target_mean: Vec<f32> = (0..train_set.dim)
        .map(|d| {
            (0..train_set.patches.len())
                .map(|i| train_set.targets[i * train_set.dim + d])
                .sum::<f32>()
                / train_set.patches.len() as f32
        })
        .collect();
    model.decoder.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(target_mean, [train_set.dim]),
        device,
    )));
    Ok(model)
}

/// The progress bar of a teacher run of `options.iterations` steps, resumed at `start_step`.
pub(crate) fn progress_bar(
    options: &TeacherOptions,
    label: &str,
    start_step: usize,
) -> ProgressBar {
    let bar = if options.progress {
        ProgressBar::new(options.iterations as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label}={{prefix}} {{pos}}/{{len}} {{bar:25}} {{per_sec}} eta {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(options.patch_size.to_string());
    bar.set_position(start_step as u64);
    bar
}

/// One optimiser step of patch distillation on the batch that `step` draws. A generator per
/// step: resuming at step N draws exactly the batches a full run would. Returns the updated
/// model and the step's training losses (its validation is the caller's).
fn patch_step(
    model: Distiller,
    optimizer: &mut ModuleOptimizer,
    options: &TeacherOptions,
    train_set: &PatchSet,
    step: usize,
    device: &Device,
) -> (Distiller, LossRecord) {
    let p = options.patch_size;
    let mut step_rng =
        StdRng::seed_from_u64(options.seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let idx: Vec<usize> = (0..options.batch)
        .map(|_| step_rng.random_range(0..train_set.patches.len()))
        .collect();
    let x = batch_input(train_set, &idx, p, device);
    let y = batch_targets(train_set, &idx, device);
    let descriptors = model.teacher.descriptors(x);
    let loss_k = distillation_loss(model.decoder.forward(descriptors.clone()), y);
    let loss_c = compactness_loss(descriptors.clone());
    let mut loss =
        loss_k.clone().mul_scalar(options.lambda_k) + loss_c.clone().mul_scalar(options.lambda_c);
    let mut loss_m_value = 0.0;
    if options.lambda_m > 0.0 {
        let positives = jitter(train_set, &idx, &mut step_rng);
        let neg_idx: Vec<usize> = (0..options.batch)
            .map(|_| step_rng.random_range(0..train_set.patches.len()))
            .collect();
        let all: Vec<usize> = (0..options.batch).collect();
        let d_pos = model
            .teacher
            .descriptors(batch_input(&positives, &all, p, device));
        let d_neg = model
            .teacher
            .descriptors(batch_input(train_set, &neg_idx, p, device));
        let loss_m = triplet_loss(descriptors, d_pos, d_neg, options.margin);
        loss_m_value = scalar(loss_m.clone());
        loss = loss + loss_m.mul_scalar(options.lambda_m);
    }
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optimizer.step(options.learning_rate, model, grads);
    (
        model,
        LossRecord::after_step(step, loss_k, loss_c, loss_m_value),
    )
}

/// The training and validation patches (from disjoint corpus images) and their backbone
/// targets, computed at the returned backbone input side.
fn patch_sets(options: &TeacherOptions) -> Result<(PatchSet, PatchSet, usize)> {
    let p = options.patch_size;
    let config_path = match &options.backbone_config {
        Some(path) => path.clone(),
        None => BackboneConfig::find(&options.backbone)?,
    };
    let config = BackboneConfig::load(&config_path)?;
    let backbone_side = if options.backbone_size == 0 {
        p
    } else {
        options.backbone_size
    };
    let backbone = Backbone::load(&options.backbone, config, 32, backbone_side)?;
    let corpus = Corpus::load(&options.images, options.progress)?;
    log::info!(
        "corpus: {} images from {} ({} skipped); backbone {} → {}-d at {backbone_side}×{backbone_side}",
        corpus.images.len(),
        options.images.display(),
        corpus.skipped.len(),
        options.backbone.display(),
        backbone.dim
    );
    let (validation_images, train_images) = split_corpus(corpus.images.len());

    let mut rng = StdRng::seed_from_u64(options.seed);
    log::info!(
        "computing backbone targets for {} + {} patches",
        options.cache_patches,
        options.validation_patches
    );
    let train_set = sample_patch_set(
        &corpus,
        &train_images,
        options.cache_patches,
        options,
        &backbone,
        &mut rng,
    )?;
    let validation_set = sample_patch_set(
        &corpus,
        &validation_images,
        options.validation_patches,
        options,
        &backbone,
        &mut rng,
    )?;
    Ok((train_set, validation_set, backbone_side))
}

/// The checkpoint in `ckpt` to resume from, refused unless it is of the patch size and seed
/// asked.
fn read_checkpoint(options: &TeacherOptions, ckpt: &Path) -> Result<CheckpointState> {
    let path = ckpt.join("state.json");
    let state: CheckpointState = serde_json::from_slice(
        &std::fs::read(&path)
            .with_context(|| format!("--resume: no checkpoint in {}", ckpt.display()))?,
    )
    .with_context(|| format!("{}: bad checkpoint state", path.display()))?;
    if state.patch_size != options.patch_size || state.seed != options.seed {
        bail!(
            "{}: checkpoint is for p = {}, seed {}; asked p = {}, seed {}",
            ckpt.display(),
            state.patch_size,
            state.seed,
            options.patch_size,
            options.seed
        );
    }
    Ok(state)
}

/// Writes the model, the optimizer and the run's state into `ckpt` (both distillation modes).
pub(crate) fn write_checkpoint<M: Module + Clone, S: Serialize>(
    ckpt: &Path,
    state: &S,
    model: &M,
    optimizer: &ModuleOptimizer,
) -> Result<()> {
    std::fs::create_dir_all(ckpt).with_context(|| format!("creating {}", ckpt.display()))?;
    model
        .clone()
        .save_file(ckpt.join("model.bpk"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("model.bpk").display()))?;
    optimizer
        .save(ckpt.join("optimizer.bpk"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("optimizer.bpk").display()))?;
    std::fs::write(ckpt.join("state.json"), serde_json::to_vec(state)?)
        .with_context(|| format!("writing {}", ckpt.join("state.json").display()))
}

/// A fair comparison of `teachers` (trained, random): the same least-squares decoder fitted
/// on each one's descriptors of the first `baseline_patches` training patches, and its error
/// on the validation patches.
fn probe(
    options: &TeacherOptions,
    train_set: &PatchSet,
    validation_set: &PatchSet,
    teachers: [&PatchNet; 2],
    device: &Device,
) -> (f32, f32) {
    let p = options.patch_size;
    let fit_count = options.baseline_patches.min(train_set.patches.len());
    let fit_set = PatchSet {
        patches: train_set.patches[..fit_count].to_vec(),
        targets: train_set.targets[..fit_count * train_set.dim].to_vec(),
        dim: train_set.dim,
    };
    let fitted = |teacher: &PatchNet| {
        let x = descriptors_of(teacher, &fit_set, p, options.batch, device);
        let xv = descriptors_of(teacher, validation_set, p, options.batch, device);
        least_squares_validation_error(
            &x,
            &fit_set.targets,
            &xv,
            &validation_set.targets,
            DESCRIPTOR_DIM,
            fit_set.dim,
        )
    };
    (fitted(teachers[0]), fitted(teachers[1]))
}

/// What a teacher's weights file records about the run that made it: the common fields, then
/// the mode's own.
fn teacher_metadata(
    options: &TeacherOptions,
    final_validation_k: f32,
    specific: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut metadata = vec![
        ("role".into(), "teacher".into()),
        ("corpus".into(), options.images.display().to_string()),
        ("backbone".into(), options.backbone.display().to_string()),
    ];
    metadata.extend(specific);
    metadata.extend([
        ("iterations".into(), options.iterations.to_string()),
        ("batch".into(), options.batch.to_string()),
        ("seed".into(), options.seed.to_string()),
        ("final_validation_k".into(), format!("{final_validation_k}")),
        ("input_normalisation".into(), "imagenet".into()),
        ("trainer_version".into(), env!("CARGO_PKG_VERSION").into()),
    ]);
    metadata
}

/// The weights at `out`, and beside them the loss curve (CSV and PNG) and the report.
fn write_outputs(
    out: &Path,
    weights: &ustad_core::networks::weights::NetworkWeights,
    history: &[LossRecord],
    report: &TeacherReport,
) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    weights.save(out)?;
    write_history(&out.with_extension("loss.csv"), history)?;
    write_loss_plot(&out.with_extension("loss.png"), history, report.patch_size)?;
    std::fs::write(
        out.with_extension("report.json"),
        serde_json::to_vec_pretty(report)?,
    )
    .with_context(|| format!("writing {}", out.with_extension("report.json").display()))?;
    Ok(())
}

/// The loss curves as a picture: training L_k (grey) and validation L_k (blue) per step.
fn write_loss_plot(path: &Path, history: &[LossRecord], patch_size: usize) -> Result<()> {
    let train: Vec<(f64, f64)> = history
        .iter()
        .map(|r| (r.step as f64, r.train_k as f64))
        .collect();
    let validation: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|r| r.validation_k.map(|v| (r.step as f64, v as f64)))
        .collect();
    use ustad_core::plot::{CHANCE, CURVE};
    ustad_core::plot::write_series_png(
        path,
        &[
            ustad_core::plot::Series {
                points: &train,
                color: CHANCE,
            },
            ustad_core::plot::Series {
                points: &validation,
                color: CURVE,
            },
        ],
        &format!("p{patch_size} L_k train grey val blue"),
        "step",
        "L_k",
        &ustad_core::plot::PlotStyle::default(),
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn write_history(path: &Path, history: &[LossRecord]) -> Result<()> {
    let mut text = String::from("step,train_k,train_c,train_m,validation_k\n");
    for r in history {
        let val = r.validation_k.map(|v| v.to_string()).unwrap_or_default();
        text.push_str(&format!(
            "{},{},{},{},{}\n",
            r.step, r.train_k, r.train_c, r.train_m, val
        ));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
