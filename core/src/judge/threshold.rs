//! Choosing the reject threshold from images of good parts.
//!
//! Users have many good images and few bad ones, and the line must not stop for nothing. So
//! the threshold is set from the image scores of held-out **good** parts alone:
//!
//! ```text
//! q         = the (1 − target false-reject rate) quantile of the good scores,
//!             estimated from their upper tail (below)
//! threshold = q + margin · (q − median)
//! ```
//!
//! **The quantile comes from a fitted tail, not from the one or two highest scores.** A few
//! hundred validation images hold only one or two scores above their 0.995 quantile, so the
//! plain order statistic sits wherever one odd good part happens to land: on MTD, three
//! validation splits of the same bundle put it at 44 %, 47 % and 70 % escapes
//! (models/teachers/README.md). As in extreme-value practice (peaks over threshold), the
//! scores above `u`, the [`TAIL_FRACTION`] quantile from the top, are taken to exceed it by an
//! exponential amount of mean `β` (its maximum-likelihood fit), so
//!
//! ```text
//! q = u + β · ln(k / (n · rate))      k of the n scores above u
//! ```
//!
//! rests on the top fifth of the scores rather than on the highest two. Where the tail holds
//! fewer than [`MIN_TAIL_SCORES`] scores, or the rate is not inside it, `q` is the plain
//! quantile (linear interpolation between order statistics).
//!
//! The exponential is the tail of scores that are sums of many squared terms (a Mahalanobis
//! distance); a lighter tail, such as a normal one, gets a higher threshold than its true
//! quantile (for normal scores at 1 %, 2.51 standard deviations instead of 2.33), so fewer false
//! rejects and more escapes than the rate says; a heavier tail, the reverse.
//!
//! The margin widens the gap above the good parts' spread in proportion to that spread, so it
//! means the same on every product and scale; `margin = 0` is the estimated quantile itself.

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

/// The share of the highest good scores that the tail fit rests on.
pub const TAIL_FRACTION: f64 = 0.2;

/// The fewest scores a tail fit rests on; with fewer the plain quantile is used.
pub const MIN_TAIL_SCORES: usize = 10;

/// How the quantile was estimated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QuantileEstimate {
    /// The `scores` good scores above `above` exceed it by an exponential amount of mean
    /// `mean_excess`.
    ExponentialTail {
        above: f32,
        mean_excess: f32,
        scores: usize,
    },
    /// The order statistic, interpolated.
    Empirical,
}

/// The chosen threshold and what it was derived from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdChoice {
    pub threshold: f32,
    pub quantile: f32,
    pub estimate: QuantileEstimate,
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
        let how = match self.estimate {
            QuantileEstimate::ExponentialTail {
                above,
                mean_excess,
                scores,
            } => format!(
                "; exponential tail of the {scores} above {above:.4}, mean excess {mean_excess:.4}"
            ),
            QuantileEstimate::Empirical => String::new(),
        };
        format!(
            "quantile {:.4} of {} good validation images ({:.4}{how}) + margin {} x (quantile - median {:.4})",
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

/// The `1 − rate` quantile of sorted scores from their exponential upper tail (module docs),
/// or `None` where the tail is too thin or does not reach down to `rate`.
pub fn tail_quantile_sorted(sorted: &[f32], rate: f64) -> Option<(f32, QuantileEstimate)> {
    let n = sorted.len();
    let above = quantile_sorted(sorted, 1.0 - TAIL_FRACTION);
    let tail = &sorted[sorted.partition_point(|&s| s <= above)..];
    let share = tail.len() as f64 / n as f64;
    if tail.len() < MIN_TAIL_SCORES || !(rate > 0.0 && rate < share) {
        return None;
    }
    let mean_excess = tail.iter().map(|&s| f64::from(s - above)).sum::<f64>() / tail.len() as f64;
    let quantile = f64::from(above) + mean_excess * (share / rate).ln();
    Some((
        quantile as f32,
        QuantileEstimate::ExponentialTail {
            above,
            mean_excess: mean_excess as f32,
            scores: tail.len(),
        },
    ))
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
    let (quantile, estimate) = tail_quantile_sorted(&sorted, target_false_reject_rate)
        .unwrap_or_else(|| {
            let quantile = quantile_sorted(&sorted, 1.0 - target_false_reject_rate);
            (quantile, QuantileEstimate::Empirical)
        });
    let median = quantile_sorted(&sorted, 0.5);
    let threshold = quantile + margin * (quantile - median).max(0.0);
    let rejected = sorted.iter().filter(|&&s| s >= threshold).count();
    Ok(ThresholdChoice {
        threshold,
        quantile,
        estimate,
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

    /// `n` scores spread as an exponential distribution of mean 1 (its quantiles).
    fn exponential_scores(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| -(1.0 - (i as f64 + 0.5) / n as f64).ln() as f32)
            .collect()
    }

    #[test]
    fn the_tail_fit_finds_an_exponential_quantile() {
        let scores = exponential_scores(1000);
        let choice = threshold_from_good(&scores, 0.005, 0.0).unwrap();
        let truth = -(0.005f64.ln()) as f32;
        assert!(
            (choice.quantile - truth).abs() < 0.02 * truth,
            "{choice:?} vs {truth}"
        );
        let QuantileEstimate::ExponentialTail { scores: tail, .. } = choice.estimate else {
            panic!("{choice:?}");
        };
        assert_eq!(tail, 200);
        assert_eq!(choice.threshold, choice.quantile);
        assert!(
            choice
                .describe()
                .contains("exponential tail of the 200 above")
        );
    }

    #[test]
    fn two_odd_good_parts_move_the_plain_quantile_far_more_than_the_tail_fit() {
        // The 0.995 quantile of 233 scores lies between the second and third highest.
        let typical = exponential_scores(233);
        let mut odd = typical.clone();
        for score in &mut odd[231..] {
            *score += 6.0;
        }
        let mut sorted = typical.clone();
        let plain = |scores: &mut Vec<f32>| {
            scores.sort_by(f32::total_cmp);
            quantile_sorted(scores, 0.995)
        };
        let plain_shift = plain(&mut odd.clone()) - plain(&mut sorted);
        let fitted = |scores: &[f32]| threshold_from_good(scores, 0.005, 0.0).unwrap().quantile;
        let fitted_shift = fitted(&odd) - fitted(&typical);
        assert!(plain_shift > 4.0, "{plain_shift}");
        assert!(
            fitted_shift > 0.0 && fitted_shift < plain_shift / 4.0,
            "{fitted_shift} vs {plain_shift}"
        );
    }

    #[test]
    fn picks_the_plain_quantile_plus_the_margin_where_the_tail_cannot_answer() {
        // 0, 1, …, 100: the tail above 80 holds 20 scores, 20 % of them, so a 25 % rate lies
        // outside it. The 0.75 quantile is 75, the median 50.
        let scores: Vec<f32> = (0..=100).rev().map(|v| v as f32).collect();
        let choice = threshold_from_good(&scores, 0.25, 0.0).unwrap();
        assert_eq!(choice.estimate, QuantileEstimate::Empirical);
        assert_eq!(
            (choice.quantile, choice.median, choice.threshold),
            (75.0, 50.0, 75.0)
        );
        assert!((choice.false_reject_rate_on_calibration - 26.0 / 101.0).abs() < 1e-12);
        let choice = threshold_from_good(&scores, 0.25, 0.2).unwrap();
        assert_eq!(choice.threshold, 75.0 + 0.2 * 25.0);
        assert_eq!(choice.false_reject_rate_on_calibration, 21.0 / 101.0);
        // Nine scores in the tail are too few to fit.
        let few: Vec<f32> = (0..45).map(|v| v as f32).collect();
        let choice = threshold_from_good(&few, 0.01, 0.0).unwrap();
        assert_eq!(choice.estimate, QuantileEstimate::Empirical);
        assert!((choice.quantile - quantile_sorted(&few, 0.99)).abs() < 1e-6);
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
