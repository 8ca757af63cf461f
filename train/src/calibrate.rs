//! `ustad-train calibrate`: re-derive the threshold of an existing bundle from new images of
//! good parts (and optionally a few bad ones), without retraining; optionally with new scoring
//! choices (variance weight, image-score fraction), which need no retraining either.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use ustad_core::bundle::Bundle;
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::decide::{Decision, Verdict};
use ustad_core::judge::score::{Calibration, RunningStats};
use ustad_core::judge::threshold::{ThresholdChoice, threshold_from_good};

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

/// The calibration recipe's first step, shared by `fit` and `calibrate`: the error and
/// variance statistics of each scale's maps over good parts, as the bundle's own engine
/// computes them. The second step, the threshold, is `threshold_from_good` on the scores of
/// the calibrated engine.
pub(crate) struct MapStatistics {
    error: Vec<RunningStats>,
    variance: Vec<RunningStats>,
}

impl MapStatistics {
    pub(crate) fn new(scales: usize) -> Self {
        MapStatistics {
            error: vec![RunningStats::default(); scales],
            variance: vec![RunningStats::default(); scales],
        }
    }

    /// Adds the maps of the frame the engine judged last.
    pub(crate) fn add(&mut self, engine: &Engine) {
        for (i, maps) in engine.scale_maps().iter().enumerate() {
            self.error[i].extend(maps.error);
            self.variance[i].extend(maps.variance);
        }
    }

    /// Each scale's calibration, with the variance weight `variance_weight(scale)`.
    pub(crate) fn calibrations(&self, variance_weight: impl Fn(usize) -> f32) -> Vec<Calibration> {
        self.error
            .iter()
            .zip(&self.variance)
            .enumerate()
            .map(|(i, (e, v))| Calibration::from_statistics(e, v, variance_weight(i)))
            .collect()
    }
}

fn scores(engine: &mut Engine, files: &[PathBuf]) -> Result<Vec<f32>> {
    files
        .iter()
        .map(|f| {
            let image =
                image::open(f).with_context(|| format!("{}: unreadable image", f.display()))?;
            Ok(engine
                .judge(&image)
                .with_context(|| format!("{}: could not be scored", f.display()))?
                .score)
        })
        .collect()
}

/// What to recalibrate, and from which images.
#[derive(Debug, Clone)]
pub struct RecalibrateOptions<'a> {
    pub bundle: &'a Path,
    /// Folder of good parts.
    pub good: &'a Path,
    /// Folder of bad parts, to report escapes.
    pub bad: Option<&'a Path>,
    pub target_false_reject_rate: f64,
    pub margin: f32,
    /// Also recompute the e/v statistics from `good`.
    pub recompute_statistics: bool,
    /// New variance weight for every scale (`score::Calibration::variance_weight`).
    pub variance_weight: Option<f32>,
    /// New image-score fraction (`bundle::ImageScoreRule::top_fraction`).
    pub top_fraction: Option<f32>,
}

/// Re-derives the threshold (and, with `recompute_statistics`, the e/v calibration) from
/// `good` after applying the scoring overrides, reports escapes on `bad`, and rewrites
/// `bundle.toml`.
pub fn recalibrate(options: &RecalibrateOptions) -> Result<RecalibrationReport> {
    let RecalibrateOptions {
        bundle: bundle_dir,
        good,
        bad,
        target_false_reject_rate,
        margin,
        recompute_statistics,
        ..
    } = *options;
    let mut bundle = Bundle::load(bundle_dir)?;
    let previous_threshold = bundle.manifest.decision.threshold;
    let good_files = ustad_core::images::images_in(good)?;
    if let Some(weight) = options.variance_weight {
        if !(weight.is_finite() && weight >= 0.0) {
            bail!("--variance-weight {weight}: must be a finite number >= 0");
        }
        for scale in &mut bundle.manifest.scales {
            scale.calibration.variance_weight = weight;
        }
    }
    if let Some(fraction) = options.top_fraction {
        if !(fraction > 0.0 && fraction <= 1.0) {
            bail!("--top-fraction {fraction}: must be in (0, 1]");
        }
        bundle.manifest.image_score.top_fraction = fraction;
    }
    if recompute_statistics {
        let mut engine = Engine::load(bundle.clone(), EngineOptions::default())?;
        let mut statistics = MapStatistics::new(bundle.manifest.scales.len());
        for f in &good_files {
            let image =
                image::open(f).with_context(|| format!("{}: unreadable image", f.display()))?;
            engine.analyze(&image)?;
            statistics.add(&engine);
        }
        let scales = &mut bundle.manifest.scales;
        let calibrations = statistics.calibrations(|i| scales[i].calibration.variance_weight);
        for (scale, calibration) in scales.iter_mut().zip(calibrations) {
            scale.calibration = calibration;
        }
    }
    let mut engine = Engine::load(bundle.clone(), EngineOptions::default())?;
    let good_scores = scores(&mut engine, &good_files)?;
    let choice = threshold_from_good(&good_scores, target_false_reject_rate, margin)?;
    let bad_scores = match bad {
        Some(dir) => scores(&mut engine, &ustad_core::images::images_in(dir)?)?,
        None => Vec::new(),
    };
    let escapes = bad_scores
        .iter()
        .filter(|&&s| !Verdict::from_score(s, choice.threshold).rejects())
        .count();
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
