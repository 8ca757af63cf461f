//! `ustad-train calibrate`: re-derive the threshold of an existing bundle from new images of
//! good parts (and optionally a few bad ones), without retraining.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use ustad::bundle::{Bundle, Decision};
use ustad::calibrate::{ThresholdChoice, threshold_from_good};
use ustad::infer::{Engine, EngineOptions};
use ustad::score::{Calibration, RunningStats};

/// What a recalibration found and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct RecalibrationReport {
    pub bundle: PathBuf,
    pub previous_threshold: f32,
    pub choice: ThresholdChoice,
    /// Scores of the bad images, if any were given, and how many would pass (escape).
    pub bad_scores: Vec<f32>,
    pub escapes: usize,
    pub statistics_recomputed: bool,
}

fn scores(engine: &mut Engine, files: &[PathBuf]) -> Result<Vec<f32>> {
    files
        .iter()
        .map(|f| {
            let image =
                image::open(f).with_context(|| format!("{}: unreadable image", f.display()))?;
            Ok(engine
                .analyze(&image)
                .with_context(|| format!("{}: could not be scored", f.display()))?
                .score)
        })
        .collect()
}

/// Re-derives the threshold (and, with `recompute_statistics`, the e/v calibration) from
/// `good`, reports escapes on `bad`, and rewrites `bundle.toml`.
pub fn recalibrate(
    bundle_dir: &Path,
    good: &Path,
    bad: Option<&Path>,
    target_false_reject_rate: f64,
    margin: f32,
    recompute_statistics: bool,
) -> Result<RecalibrationReport> {
    let mut bundle = Bundle::load(bundle_dir)?;
    let previous_threshold = bundle.manifest.decision.threshold;
    let good_files = ustad::dataset::images_in(good)?;
    if recompute_statistics {
        let mut engine = Engine::load(bundle.clone(), EngineOptions::default())?;
        let n = bundle.manifest.scales.len();
        let (mut e, mut v) = (
            vec![RunningStats::default(); n],
            vec![RunningStats::default(); n],
        );
        for f in &good_files {
            let image =
                image::open(f).with_context(|| format!("{}: unreadable image", f.display()))?;
            engine.analyze(&image)?;
            for (i, maps) in engine.scale_maps().iter().enumerate() {
                e[i].extend(maps.error);
                v[i].extend(maps.variance);
            }
        }
        for (scale, (e, v)) in bundle.manifest.scales.iter_mut().zip(e.iter().zip(&v)) {
            scale.calibration = Calibration {
                error_mean: e.mean() as f32,
                error_std: (e.std() as f32).max(1e-12),
                variance_mean: v.mean() as f32,
                variance_std: (v.std() as f32).max(1e-12),
            };
        }
    }
    let mut engine = Engine::load(bundle.clone(), EngineOptions::default())?;
    let good_scores = scores(&mut engine, &good_files)?;
    let choice = threshold_from_good(&good_scores, target_false_reject_rate, margin)?;
    let bad_scores = match bad {
        Some(dir) => scores(&mut engine, &ustad::dataset::images_in(dir)?)?,
        None => Vec::new(),
    };
    let escapes = bad_scores.iter().filter(|&&s| s < choice.threshold).count();
    bundle.manifest.decision = Decision {
        threshold: choice.threshold,
        rule: format!("{} (recalibrated on {})", choice.describe(), good.display()),
    };
    bundle.manifest.provenance.extra.insert(
        "recalibrated".into(),
        toml::Value::String(crate::fit::utc_now()),
    );
    bundle.save_manifest()?;
    Ok(RecalibrationReport {
        bundle: bundle_dir.to_path_buf(),
        previous_threshold,
        choice,
        bad_scores,
        escapes,
        statistics_recomputed: recompute_statistics,
    })
}
