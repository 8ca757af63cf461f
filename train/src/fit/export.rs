//! Steps 4 to 7: the residual whitening, the exported and calibrated bundle, the parity of
//! the trainer against it, and the provenance.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};

use super::preset::Preset;
use super::split::Splits;
use super::{FitOptions, FitTeacher, FittedScale, bar, run_network};
use crate::calibrate::MapStatistics;
use crate::net::PatchNet;
use ustad_core::bundle::onnx::{
    ChannelNorm, ScaleExport, Whitening, save_model, student_graph, teacher_graph, write_bundle,
};
use ustad_core::bundle::{Bundle, Provenance};
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::decide::Decision;
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::judge::score::Calibration;
use ustad_core::judge::threshold::{ThresholdChoice, threshold_from_good};
use ustad_core::networks::arch::{DESCRIPTOR_DIM, Mode};
use ustad_core::networks::weights::NetworkWeights;

/// The residual whitening of one scale: its teacher (normalised by `norm`) and students run by
/// tract on `inputs`, exactly as the bundle will run them.
pub(super) fn measure_whitening(
    work: &Path,
    teacher: &FitTeacher,
    norm: &ChannelNorm,
    students: &[NetworkWeights],
    spec: &InputSpec,
    (patch_size, stride, reduction): (usize, usize, usize),
    inputs: &[Vec<f32>],
) -> Result<(Whitening, crate::whiten::WhiteningSummary)> {
    let dir = work.join("whitening");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (height, width) = (spec.height, spec.width);
    let teacher_path = dir.join("teacher.onnx");
    save_model(
        &teacher_graph(teacher.export(patch_size), spec, (stride, reduction), norm)?,
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

/// Step 4 (presets with `whiten_residual`): each scale's residual whitened on the spare images
/// (the fit images when there are none), folded into its teacher and students. Returns what
/// the provenance records.
pub(super) fn whiten_residuals(
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
            (scale.patch_size, scale.stride, scale.reduction),
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
            "{}: Σ^-1/2 of the residual on {} {} images, shrinkage {}, top 8 of {} directions {:.1} %",
            ustad_core::bundle::scale_name(scale.patch_size, scale.stride, scale.reduction),
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
pub(super) fn export_bundle(
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
            reduction: s.reduction,
            role: s.role,
            teacher: fitted.teacher.export(s.patch_size),
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
pub(super) fn calibrate(
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
    let mut statistics = MapStatistics::new(preset.scales.len());
    let calibrating = bar(
        validation.len() * 2,
        options.progress,
        "calibrating {pos}/{len} {bar:30} {per_sec}",
    );
    for input in validation {
        engine.analyze_input(input)?;
        statistics.add(&engine);
        calibrating.inc(1);
    }
    let calibrations = statistics.calibrations(|_| preset.variance_weight);
    let mut engine = Engine::load(export(&calibrations)?, EngineOptions::default())?;
    let mut scores = Vec::with_capacity(validation.len());
    for input in validation {
        scores.push(engine.judge_input(input)?.score);
        calibrating.inc(1);
    }
    calibrating.finish_and_clear();
    let choice = threshold_from_good(&scores, options.target_false_reject_rate, options.margin)?;
    Ok((calibrations, choice, engine))
}

/// How far the trainer's own anomaly maps (burn) are from the exported bundle's (tract).
pub(super) struct Parity {
    pub(super) max_abs: f32,
    pub(super) mean_abs: f32,
    pub(super) images: usize,
}

/// Step 6: parity of the trainer's forward pass (burn) against the calibrated bundle run by
/// tract, on up to 3 validation images.
pub(super) fn f32_parity(
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
                    let label = format!(
                        "{}/teacher",
                        ustad_core::bundle::scale_label(scale.patch_size, scale.reduction)
                    );
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
pub(super) fn record_fit(
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
