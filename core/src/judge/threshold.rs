//! Choosing the reject threshold from images of good parts.
//!
//! Users have many good images and few bad ones, and the line must not stop for nothing. So
//! the threshold is set from the image scores of held-out **good** parts alone:
//!
//! ```text
//! q         = the (1 − target false-reject rate) quantile of the good scores
//!             (linear interpolation between order statistics)
//! threshold = q + margin · (q − median)
//! ```
//!
//! The margin widens the gap above the good parts' spread in proportion to that spread, so it
//! means the same on every product and scale; `margin = 0` is the plain quantile. With few
//! validation images the quantile is close to their maximum: the margin then guards against
//! good parts that are slightly worse than any seen.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum CalibrationError {
    #[error("no good-part scores to calibrate on")]
    NoScores,
    #[error("good-part score {index} is not finite ({value})")]
    NotFinite { index: usize, value: f32 },
    #[error("target false-reject rate {0} must be in [0, 1)")]
    BadRate(f64),
    #[error("margin {0} must be finite and >= 0")]
    BadMargin(f32),
}

/// The chosen threshold and what it was derived from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdChoice {
    pub threshold: f32,
    pub quantile: f32,
    pub median: f32,
    pub target_false_reject_rate: f64,
    pub margin: f32,
    pub good_images: usize,
    /// Fraction of the calibration scores at or above the threshold.
    pub false_reject_rate_on_calibration: f64,
}

impl ThresholdChoice {
    /// One line for `bundle.toml`'s `decision.rule`.
    pub fn describe(&self) -> String {
        format!(
            "quantile {:.4} of {} good validation images ({:.4}) + margin {} x (quantile - median {:.4})",
            1.0 - self.target_false_reject_rate,
            self.good_images,
            self.quantile,
            self.margin,
            self.median
        )
    }
}

/// The `p` quantile (0 ≤ p ≤ 1) of sorted values, interpolating linearly.
pub fn quantile_sorted(sorted: &[f32], p: f64) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    let position = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let low = position.floor() as usize;
    let high = position.ceil() as usize;
    let fraction = (position - low as f64) as f32;
    sorted[low] + (sorted[high] - sorted[low]) * fraction
}

/// Applies the rule in the module docs to the image scores of good parts.
pub fn threshold_from_good(
    scores: &[f32],
    target_false_reject_rate: f64,
    margin: f32,
) -> Result<ThresholdChoice, CalibrationError> {
    if scores.is_empty() {
        return Err(CalibrationError::NoScores);
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(CalibrationError::NotFinite { index, value });
    }
    if !(0.0..1.0).contains(&target_false_reject_rate) {
        return Err(CalibrationError::BadRate(target_false_reject_rate));
    }
    if !(margin.is_finite() && margin >= 0.0) {
        return Err(CalibrationError::BadMargin(margin));
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let quantile = quantile_sorted(&sorted, 1.0 - target_false_reject_rate);
    let median = quantile_sorted(&sorted, 0.5);
    let threshold = quantile + margin * (quantile - median).max(0.0);
    let rejected = sorted.iter().filter(|&&s| s >= threshold).count();
    Ok(ThresholdChoice {
        threshold,
        quantile,
        median,
        target_false_reject_rate,
        margin,
        good_images: scores.len(),
        false_reject_rate_on_calibration: rejected as f64 / scores.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_quantile_plus_the_margin() {
        // 0, 1, …, 100: the 0.95 quantile is 95, the median 50.
        let scores: Vec<f32> = (0..=100).rev().map(|v| v as f32).collect();
        let choice = threshold_from_good(&scores, 0.05, 0.0).unwrap();
        assert_eq!(
            (choice.quantile, choice.median, choice.threshold),
            (95.0, 50.0, 95.0)
        );
        assert!((choice.false_reject_rate_on_calibration - 6.0 / 101.0).abs() < 1e-12);
        let choice = threshold_from_good(&scores, 0.05, 0.2).unwrap();
        assert_eq!(choice.threshold, 95.0 + 0.2 * 45.0);
        assert_eq!(choice.false_reject_rate_on_calibration, 0.0);
    }

    #[test]
    fn interpolates_between_order_statistics() {
        let sorted = [1.0, 2.0, 4.0];
        assert_eq!(quantile_sorted(&sorted, 0.75), 3.0);
        assert_eq!(quantile_sorted(&sorted, 1.0), 4.0);
        assert_eq!(quantile_sorted(&sorted, 0.0), 1.0);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert_eq!(
            threshold_from_good(&[], 0.01, 0.1),
            Err(CalibrationError::NoScores)
        );
        assert!(matches!(
            threshold_from_good(&[1.0, f32::NAN], 0.01, 0.1),
            Err(CalibrationError::NotFinite { index: 1, .. })
        ));
        assert_eq!(
            threshold_from_good(&[1.0], 1.0, 0.1),
            Err(CalibrationError::BadRate(1.0))
        );
        assert_eq!(
            threshold_from_good(&[1.0], 0.1, -1.0),
            Err(CalibrationError::BadMargin(-1.0))
        );
    }
}
