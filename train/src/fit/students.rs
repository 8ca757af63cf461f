//! Steps 2 and 3: the teacher and its statistics, and the students trained to regress it.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::preset::{PresetScale, TeacherKind};
use super::{FitOptions, FitTeacher, bar, run_network};
use crate::net::PatchNet;
use ustad_core::bundle::onnx::{
    ChannelNorm, FeatureTap, FeatureTeacher, GraphSpec, network_graph, save_model,
};
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::judge::score::RunningStats;
use ustad_core::networks::arch::{DESCRIPTOR_DIM, Mode};
use ustad_core::networks::weights::NetworkWeights;

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
pub(super) fn common_scale(norm: ChannelNorm) -> ChannelNorm {
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

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct FitCheckpoint {
    scale: usize,
    epoch: usize,
    seed: u64,
    /// The students' widths: resuming into other widths would load mismatched tensors.
    #[serde(default = "ustad_core::networks::arch::paper_widths")]
    student_channel_divisor: usize,
    losses: Vec<Vec<f32>>,
}

/// Step 2: one scale's teacher, its maps of the training inputs, their statistics μ, σ, and
/// the students' targets `(T − μ)/σ`.
pub(super) fn teacher_targets(
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
    let (view_height, view_width) = scale.view(height, width);
    let (mh, mw) = scale
        .student_architecture()?
        .output_size(mode, view_height, view_width)?;
    let graph_path = work.join(format!(
        "{}-teacher-raw.onnx",
        ustad_core::bundle::scale_name(p, scale.stride, scale.reduction)
    ));
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
            let teacher = feature_teacher(
                options,
                scale.teacher_nodes.as_deref(),
                view_height,
                view_width,
            )?;
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
pub(super) fn resume_students(
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
pub(super) fn train_students(
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

/// The feature teacher of `options.backbone`, tapping `nodes` or else its sidecar's dense taps.
pub(super) fn feature_teacher(
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
