//! Scoring math: regression error, predictive variance, their calibration, and multi-scale
//! fusion. Pure functions over slices, shared by the daemon, the trainer's calibration and the
//! evaluator, so every part of ustad computes the same number for the same pixel.
//!
//! Per pixel, with teacher descriptor `t` (already normalised by μ, σ) and `M` students `sᵢ`:
//! - `e = ‖mean_i sᵢ − t‖²`
//! - `v = mean_i ‖sᵢ‖² − ‖mean_i sᵢ‖²`
//! - with no students (`M = 0`) the prediction is the good parts' mean, `0` after the
//!   normalisation: `e = ‖t‖²` (the whitened teacher's squared Mahalanobis distance), `v = 0`.
//! - `score = (e − e_μ)/e_σ + w·(v − v_μ)/v_σ`, with statistics from held-out good images and
//!   `w` the variance weight: 1 in the paper; 0 (error only) where it measures better.

use serde::{Deserialize, Serialize};

/// What a scale's calibrated map feeds: the image score that decides the part, the anomaly
/// map that shows where it is wrong, or both (every scale of a bundle that does not say).
///
/// A coarse view of the whole part judges it best (its deep features see the part at once, so
/// a defect lifts its whole map), and a fine view localises best; neither does both well
/// (models/teachers/README.md). Each output averages the scales that feed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRole {
    #[default]
    Both,
    /// The image score only.
    Score,
    /// The anomaly map only.
    Map,
}

impl ScaleRole {
    /// Whether the scale feeds the image score.
    pub fn scores(self) -> bool {
        matches!(self, Self::Both | Self::Score)
    }

    /// Whether the scale feeds the anomaly map.
    pub fn maps(self) -> bool {
        matches!(self, Self::Both | Self::Map)
    }

    /// For `skip_serializing_if`: bundles whose scales all do both keep their manifests.
    pub fn is_both(&self) -> bool {
        *self == Self::Both
    }

    /// The output that none of `roles` feeds ("the image score" or "the anomaly map"), if
    /// any: a bundle or preset with one cannot judge a part or cannot show it.
    pub fn unfed(roles: &[ScaleRole]) -> Option<&'static str> {
        if !roles.iter().any(|r| r.scores()) {
            Some("the image score")
        } else if !roles.iter().any(|r| r.maps()) {
            Some("the anomaly map")
        } else {
            None
        }
    }
}

/// Calibration of one scale: mean and standard deviation of `e` and `v` over the pixels of
/// held-out defect-free images, and how much the variance counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub error_mean: f32,
    pub error_std: f32,
    pub variance_mean: f32,
    pub variance_std: f32,
    /// Weight of the normalised variance beside the normalised error. The paper adds both
    /// (1, the default for bundles that do not say); with students that cannot fully predict
    /// their teacher the students disagree on good parts as much as on defects, and the
    /// variance only adds noise (on MTD, error alone: image AUROC 0.81 against 0.73).
    #[serde(default = "Calibration::paper_variance_weight")]
    pub variance_weight: f32,
}

impl Calibration {
    /// Identity calibration (raw `e + v`), for uncalibrated bundles under construction.
    pub const IDENTITY: Self = Self {
        error_mean: 0.0,
        error_std: 1.0,
        variance_mean: 0.0,
        variance_std: 1.0,
        variance_weight: 1.0,
    };

    /// The paper's `e + v`.
    pub const fn paper_variance_weight() -> f32 {
        1.0
    }

    /// The calibration of the error and variance statistics of held-out good pixels.
    pub fn from_statistics(
        error: &RunningStats,
        variance: &RunningStats,
        variance_weight: f32,
    ) -> Self {
        Self {
            error_mean: error.mean() as f32,
            error_std: (error.std() as f32).max(1e-12),
            variance_mean: variance.mean() as f32,
            variance_std: (variance.std() as f32).max(1e-12),
            variance_weight,
        }
    }

    /// The name of the first field that is not finite or, for a deviation, not positive.
    pub fn invalid_field(&self) -> Option<&'static str> {
        [
            ("error_mean", self.error_mean, false),
            ("error_std", self.error_std, true),
            ("variance_mean", self.variance_mean, false),
            ("variance_std", self.variance_std, true),
        ]
        .into_iter()
        .find(|&(_, v, positive)| !v.is_finite() || (positive && v <= 0.0))
        .map(|(name, _, _)| name)
        .or(
            (!(self.variance_weight.is_finite() && self.variance_weight >= 0.0))
                .then_some("variance_weight"),
        )
    }

    /// The calibrated score of one pixel.
    #[inline]
    pub fn normalise(&self, error: f32, variance: f32) -> f32 {
        (error - self.error_mean) / self.error_std
            + self.variance_weight * (variance - self.variance_mean) / self.variance_std
    }
}

/// Computes the per-pixel regression error and predictive variance.
///
/// `teacher` and each of `students` are CHW maps of `channels × pixels` values. `error` and
/// `variance` receive `pixels` values each; they are overwritten, and allocation-free so the
/// frame loop can reuse its buffers. With no students the prediction is zero (the good parts'
/// mean of a normalised teacher) and the variance is zero.
pub fn error_and_variance(
    teacher: &[f32],
    students: &[&[f32]],
    channels: usize,
    error: &mut [f32],
    variance: &mut [f32],
) {
    let pixels = error.len();
    assert_eq!(teacher.len(), channels * pixels, "teacher map size");
    assert_eq!(variance.len(), pixels, "variance buffer size");
    for s in students {
        assert_eq!(s.len(), channels * pixels, "student map size");
    }
    error.fill(0.0);
    variance.fill(0.0);
    if students.is_empty() {
        for c in 0..channels {
            let t = &teacher[c * pixels..(c + 1) * pixels];
            for (e, &v) in error.iter_mut().zip(t) {
                *e += v * v;
            }
        }
        return;
    }
    let inv_m = 1.0 / students.len() as f32;
    // Channel-major loops over contiguous pixel rows: each inner loop is a straight,
    // vectorisable pass. `variance` first accumulates mean ‖sᵢ‖² − ‖mean sᵢ‖² per channel.
    for c in 0..channels {
        let range = c * pixels..(c + 1) * pixels;
        let t = &teacher[range.clone()];
        for p in 0..pixels {
            let mut sum = 0.0f32;
            let mut sum_sq = 0.0f32;
            for s in students {
                let value = s[range.start + p];
                sum += value;
                sum_sq += value * value;
            }
            let mean = sum * inv_m;
            let d = mean - t[p];
            error[p] += d * d;
            variance[p] += sum_sq * inv_m - mean * mean;
        }
    }
    // Rounding can push a zero variance a hair below zero.
    for v in variance.iter_mut() {
        *v = v.max(0.0);
    }
}

/// Streaming mean and standard deviation (Welford, in f64) of many values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunningStats {
    count: u64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    pub fn push(&mut self, value: f64) {
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
    }

    pub fn extend(&mut self, values: &[f32]) {
        for &v in values {
            self.push(v as f64);
        }
    }

    /// Chan et al.'s parallel merge: combine statistics gathered on separate threads.
    pub fn merge(&mut self, other: &RunningStats) {
        if other.count == 0 {
            return;
        }
        let count = self.count + other.count;
        let delta = other.mean - self.mean;
        self.mean += delta * other.count as f64 / count as f64;
        self.m2 += other.m2 + delta * delta * self.count as f64 * other.count as f64 / count as f64;
        self.count = count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).sqrt()
        }
    }
}

/// Bilinear upsampling of a map sampled every `stride` pixels (map pixel `(i, j)` sits at
/// image pixel `(i·stride, j·stride)`) to `out_height × out_width`, clamping past the last
/// sample. `out` is overwritten with the interpolated values times `weight` **added** to it,
/// so several scales accumulate into one fused map without temporaries.
pub fn upsample_accumulate(
    map: &[f32],
    (height, width): (usize, usize),
    stride: usize,
    weight: f32,
    out: &mut [f32],
    (out_height, out_width): (usize, usize),
) {
    assert_eq!(map.len(), height * width, "map size");
    assert_eq!(out.len(), out_height * out_width, "output size");
    let coordinate = |pixel: usize, samples: usize| -> (usize, usize, f32) {
        let position = pixel as f32 / stride as f32;
        let low = (position.floor() as usize).min(samples - 1);
        let high = (low + 1).min(samples - 1);
        (low, high, (position - low as f32).clamp(0.0, 1.0))
    };
    // The same for every row: computed once.
    let columns: Vec<(usize, usize, f32)> = (0..out_width).map(|x| coordinate(x, width)).collect();
    for y in 0..out_height {
        let (y0, y1, fy) = coordinate(y, height);
        let (row0, row1) = (
            &map[y0 * width..(y0 + 1) * width],
            &map[y1 * width..(y1 + 1) * width],
        );
        let out_row = &mut out[y * out_width..(y + 1) * out_width];
        for (o, &(x0, x1, fx)) in out_row.iter_mut().zip(&columns) {
            let top = row0[x0] + (row0[x1] - row0[x0]) * fx;
            let bottom = row1[x0] + (row1[x1] - row1[x0]) * fx;
            *o += weight * (top + (bottom - top) * fy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-pixel formulas, computed the slow way: one descriptor vector at a time.
    fn direct(teacher: &[Vec<f32>], students: &[Vec<Vec<f32>>]) -> (f32, f32) {
        let m = students.len() as f32;
        let dims = teacher.len();
        let mean: Vec<f32> = (0..dims)
            .map(|c| students.iter().map(|s| s[c][0]).sum::<f32>() / m)
            .collect();
        let e: f32 = (0..dims).map(|c| (mean[c] - teacher[c][0]).powi(2)).sum();
        let mean_sq_norm: f32 = students
            .iter()
            .map(|s| (0..dims).map(|c| s[c][0].powi(2)).sum::<f32>())
            .sum::<f32>()
            / m;
        let v = mean_sq_norm - mean.iter().map(|x| x * x).sum::<f32>();
        (e, v)
    }

    #[test]
    fn error_and_variance_match_the_definitions() {
        let mut rng = crate::networks::weights::SplitMix64(5);
        let (channels, pixels, m) = (7, 5, 3);
        let mut random = |n: usize| {
            (0..n)
                .map(|_| rng.next_f32() * 4.0 - 2.0)
                .collect::<Vec<f32>>()
        };
        let teacher = random(channels * pixels);
        let students: Vec<Vec<f32>> = (0..m).map(|_| random(channels * pixels)).collect();
        let refs: Vec<&[f32]> = students.iter().map(|s| s.as_slice()).collect();
        let (mut e, mut v) = (vec![9.0; pixels], vec![9.0; pixels]);
        error_and_variance(&teacher, &refs, channels, &mut e, &mut v);
        for p in 0..pixels {
            let t: Vec<Vec<f32>> = (0..channels)
                .map(|c| vec![teacher[c * pixels + p]])
                .collect();
            let s: Vec<Vec<Vec<f32>>> = students
                .iter()
                .map(|s| (0..channels).map(|c| vec![s[c * pixels + p]]).collect())
                .collect();
            let (want_e, want_v) = direct(&t, &s);
            assert!(
                (e[p] - want_e).abs() < 1e-4,
                "pixel {p}: e {} vs {want_e}",
                e[p]
            );
            assert!(
                (v[p] - want_v).abs() < 1e-4,
                "pixel {p}: v {} vs {want_v}",
                v[p]
            );
        }
    }

    #[test]
    fn without_students_the_error_is_the_teachers_squared_norm() {
        // Channel-major: channel 0 holds pixels (1, -2), channel 1 holds (3, 0.5).
        let teacher = vec![1.0, -2.0, 3.0, 0.5];
        let (mut e, mut v) = (vec![9.0; 2], vec![9.0; 2]);
        error_and_variance(&teacher, &[], 2, &mut e, &mut v);
        assert_eq!(e, vec![10.0, 4.25]);
        assert_eq!(v, vec![0.0, 0.0]);
    }

    #[test]
    fn identical_students_have_zero_variance() {
        let teacher = vec![1.0, 2.0, 3.0, 4.0];
        let student = vec![1.5, 2.0, 3.0, 3.0];
        let (mut e, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        error_and_variance(&teacher, &[&student, &student, &student], 2, &mut e, &mut v);
        assert_eq!(v, vec![0.0, 0.0]);
        assert!(
            (e[0] - 0.25).abs() < 1e-6 && (e[1] - 1.0).abs() < 1e-6,
            "{e:?}"
        );
    }

    #[test]
    fn running_stats_match_two_pass_and_merge() {
        let values: Vec<f32> = (0..1000).map(|i| 1e4 + (i as f32 * 0.37).sin()).collect();
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / 1000.0;
        let mut a = RunningStats::default();
        a.extend(&values[..300]);
        let mut b = RunningStats::default();
        b.extend(&values[300..]);
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        assert!((a.mean() - mean).abs() < 1e-9);
        assert!((a.std() - var.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn upsampling_hits_the_samples_and_interpolates_between() {
        // 2×2 map, stride 4 → 8×8: samples at pixels 0 and 4, clamp beyond.
        let map = [0.0, 4.0, 8.0, 12.0];
        let mut out = vec![1.0; 64];
        upsample_accumulate(&map, (2, 2), 4, 1.0, &mut out, (8, 8));
        assert_eq!(out[0], 1.0);
        assert_eq!(out[4], 5.0);
        assert_eq!(out[2], 3.0);
        assert_eq!(out[7], 5.0);
        assert_eq!(out[4 * 8 + 4], 13.0);
        assert_eq!(out[2 * 8 + 2], 7.0);
    }

    #[test]
    fn calibration_validation_names_the_field() {
        let mut c = Calibration::IDENTITY;
        assert_eq!(c.invalid_field(), None);
        c.variance_std = 0.0;
        assert_eq!(c.invalid_field(), Some("variance_std"));
        c.error_mean = f32::NAN;
        assert_eq!(c.invalid_field(), Some("error_mean"));
        assert_eq!(Calibration::IDENTITY.normalise(2.0, 3.0), 5.0);
        let negative = Calibration {
            variance_weight: -1.0,
            ..Calibration::IDENTITY
        };
        assert_eq!(negative.invalid_field(), Some("variance_weight"));
    }

    #[test]
    fn variance_weight_scales_only_the_variance_term() {
        let error_only = Calibration {
            variance_weight: 0.0,
            ..Calibration::IDENTITY
        };
        assert_eq!(error_only.normalise(2.0, 3.0), 2.0);
        let half = Calibration {
            variance_weight: 0.5,
            ..Calibration::IDENTITY
        };
        assert_eq!(half.normalise(2.0, 3.0), 3.5);
    }

    #[test]
    fn bundles_without_a_variance_weight_keep_the_papers_sum() {
        let c: Calibration = toml::from_str(
            "error_mean = 1.0\nerror_std = 2.0\nvariance_mean = 3.0\nvariance_std = 4.0",
        )
        .expect("calibration without variance_weight");
        assert_eq!(c.variance_weight, 1.0);
    }
}
