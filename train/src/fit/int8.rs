//! Step 8: int8 QOperator graphs and their parity against the f32 bundle.

use std::path::Path;

use anyhow::Result;

use super::preset::Preset;
use super::{FitTeacher, FittedScale};
use ustad_core::bundle::Bundle;
use ustad_core::bundle::onnx::{ChannelNorm, GraphSpec, save_model};
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::networks::arch::Mode;
use ustad_core::networks::weights::NetworkWeights;

/// Whether an int8 bundle would run exactly the f32 networks: every teacher is the backbone
/// (which has no int8 graph) and there are no students.
pub(super) fn int8_changes_nothing(scales: &[FittedScale]) -> bool {
    scales
        .iter()
        .all(|s| matches!(s.teacher, FitTeacher::Backbone(..)) && s.students.is_empty())
}

/// Step 8: int8 QOperator graphs (`ustad_core::bundle::int8`) calibrated on up to 32 fit
/// images, added to the bundle at `out` and validated by `Bundle::load`, then a parity report
/// (the f32 and int8 bundles, both run by tract) into its provenance.
pub(super) fn export_int8(
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
pub(super) fn int8_parity(
    bundle: Bundle,
    images: &[Vec<f32>],
    calibration_images: usize,
) -> Result<()> {
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
