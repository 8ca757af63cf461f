//! From an anomaly map to one image score and a verdict.
//!
//! The paper is segmentation-first; a reject flap needs a rule. Ours: smooth the fused map with
//! a Gaussian (a single hot pixel is noise, a defect is a blob), then take the mean of the top
//! fraction of pixels (the maximum when that fraction is one pixel), and reject at or above the
//! bundle's threshold.

use serde::{Deserialize, Serialize};

/// How per-pixel anomaly maps become one number per image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageScoreRule {
    /// Gaussian smoothing of the fused map before taking the score (0 = none), in input pixels.
    pub smoothing_sigma: f32,
    /// Mean of the top `top_fraction` pixels of the smoothed map; a fraction small enough to
    /// cover one pixel is the maximum.
    pub top_fraction: f32,
    /// Pixels along each edge (input resolution) left out of the image score. Zero padding
    /// makes the map least reliable within half a receptive field of the border; a defect that
    /// matters is seen from the interior, so short CPU-trained students need this margin.
    #[serde(default)]
    pub border: usize,
}

impl Default for ImageScoreRule {
    fn default() -> Self {
        Self {
            smoothing_sigma: 4.0,
            top_fraction: 0.001,
            border: 0,
        }
    }
}

/// The reject threshold on the image score and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub threshold: f32,
    /// How the threshold was derived (e.g. "quantile 0.995 of 120 good validation images + margin 10 %").
    #[serde(default)]
    pub rule: String,
}

/// What happens to a part: the one verdict type from the engine's judgement through the reject
/// flap to the metrics and the archive. The engine only ever says [`Verdict::Pass`] or
/// [`Verdict::Reject`]; a part that could not be judged gets its verdict from the
/// [`FailSafePolicy`], here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Judged good.
    Pass,
    /// Judged defective.
    Reject,
    /// Not judged (no usable frame, an error, over its time budget); rejected by the policy.
    FailsafeReject,
    /// Not judged; passed by the `pass` policy.
    FailsafePass,
}

impl Verdict {
    /// Reject at or above the threshold. A score that is not a number cannot pass.
    pub fn from_score(score: f32, threshold: f32) -> Self {
        if score < threshold {
            Verdict::Pass
        } else {
            Verdict::Reject
        }
    }

    /// Whether the part is kicked off the belt.
    pub fn rejects(self) -> bool {
        matches!(self, Verdict::Reject | Verdict::FailsafeReject)
    }

    /// Whether the part was judged (not failed safe).
    pub fn judged(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::Reject)
    }

    /// The metrics label and JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Reject => "reject",
            Verdict::FailsafeReject => "failsafe_reject",
            Verdict::FailsafePass => "failsafe_pass",
        }
    }
}

/// A verdict equals its label (`Verdict::FailsafeReject == "failsafe_reject"`), as in an archive
/// record or a metrics line.
impl PartialEq<&str> for Verdict {
    fn eq(&self, label: &&str) -> bool {
        self.as_str() == *label
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the line does with a part it cannot judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailSafePolicy {
    /// Reject parts that could not be judged: nothing unchecked ships (default).
    #[default]
    Reject,
    /// Pass them: for lines where a wrong reject costs more than a missed defect.
    Pass,
}

impl FailSafePolicy {
    /// The verdict of a part that could not be judged.
    pub fn verdict(self) -> Verdict {
        match self {
            FailSafePolicy::Reject => Verdict::FailsafeReject,
            FailSafePolicy::Pass => Verdict::FailsafePass,
        }
    }
}

/// Computes image scores for maps of one size, reusing its buffers between frames.
#[derive(Debug, Clone)]
pub struct ImageScorer {
    rule: ImageScoreRule,
    width: usize,
    height: usize,
    kernel: Vec<f32>,
    scratch: Vec<f32>,
    selection: Vec<f32>,
    smoothed: Vec<f32>,
}

impl ImageScorer {
    pub fn new(rule: ImageScoreRule, width: usize, height: usize) -> Self {
        let kernel = gaussian_kernel(rule.smoothing_sigma);
        Self {
            rule,
            width,
            height,
            kernel,
            scratch: vec![0.0; width * height],
            selection: vec![0.0; width * height],
            smoothed: vec![0.0; width * height],
        }
    }

    /// The smoothed map of the last [`score`](Self::score) call.
    pub fn smoothed(&self) -> &[f32] {
        &self.smoothed
    }

    /// The image score of `map` (`height × width`, row-major).
    pub fn score(&mut self, map: &[f32]) -> f32 {
        assert_eq!(map.len(), self.width * self.height, "map size");
        smooth(
            map,
            self.width,
            self.height,
            &self.kernel,
            &mut self.scratch,
            &mut self.smoothed,
        );
        let border = self.rule.border;
        if border == 0 || 2 * border >= self.width.min(self.height) {
            return top_fraction_mean(&self.smoothed, self.rule.top_fraction, &mut self.scratch);
        }
        // The interior rows, gathered into the (already used) scratch buffer.
        let inner_width = self.width - 2 * border;
        let mut n = 0;
        for y in border..self.height - border {
            let row =
                &self.smoothed[y * self.width + border..y * self.width + border + inner_width];
            self.scratch[n..n + inner_width].copy_from_slice(row);
            n += inner_width;
        }
        let interior = std::mem::take(&mut self.scratch);
        let score = top_fraction_mean(&interior[..n], self.rule.top_fraction, &mut self.selection);
        self.scratch = interior;
        score
    }
}

/// Normalised 1-D Gaussian of radius ⌈3σ⌉; `[1.0]` for σ = 0.
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let radius = (3.0 * sigma).ceil() as i32;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    kernel
}

/// Separable convolution with edge clamping: rows into `scratch`, columns into `out`.
///
/// Each pass adds the kernel's taps one at a time over whole rows, so the inner loops run over
/// contiguous memory and vectorise; every output still sums its taps in kernel order, as the
/// per-pixel form would.
fn smooth(
    map: &[f32],
    width: usize,
    height: usize,
    kernel: &[f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let radius = (kernel.len() / 2) as isize;
    for (row, smoothed) in map
        .chunks_exact(width)
        .zip(scratch.chunks_exact_mut(width))
        .take(height)
    {
        smoothed.fill(0.0);
        for (k, &weight) in kernel.iter().enumerate() {
            add_shifted(smoothed, row, k as isize - radius, weight);
        }
    }
    for y in 0..height {
        let smoothed = &mut out[y * width..(y + 1) * width];
        smoothed.fill(0.0);
        for (k, &weight) in kernel.iter().enumerate() {
            let source = (y as isize + k as isize - radius).clamp(0, height as isize - 1) as usize;
            let source = &scratch[source * width..(source + 1) * width];
            for (o, &v) in smoothed.iter_mut().zip(source) {
                *o += weight * v;
            }
        }
    }
}

/// `out[x] += weight · row[clamp(x + shift)]` for every `x`.
fn add_shifted(out: &mut [f32], row: &[f32], shift: isize, weight: f32) {
    let n = row.len() as isize;
    // Outputs whose source lies inside the row: shift + x in [0, n).
    let start = (-shift).clamp(0, n) as usize;
    let end = (n - shift).clamp(start as isize, n) as usize;
    let (first, last) = (row[0], row[row.len() - 1]);
    for o in &mut out[..start] {
        *o += weight * first;
    }
    let source = &row[(start as isize + shift).clamp(0, n) as usize..];
    for (o, &v) in out[start..end].iter_mut().zip(source) {
        *o += weight * v;
    }
    for o in &mut out[end..] {
        *o += weight * last;
    }
}

/// Mean of the largest `max(1, ⌈fraction·n⌉)` values, using `scratch` for the selection.
/// Any NaN in `values` makes the result NaN, so a broken map can never pass a part.
pub fn top_fraction_mean(values: &[f32], fraction: f32, scratch: &mut [f32]) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    if values.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    let k = ((fraction as f64 * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let scratch = &mut scratch[..values.len()];
    scratch.copy_from_slice(values);
    let split = values.len() - k;
    scratch.select_nth_unstable_by(split, |a, b| a.total_cmp(b));
    scratch[split..].iter().map(|&v| v as f64).sum::<f64>() as f32 / k as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_fraction_is_the_max_for_one_pixel_and_the_mean_for_all() {
        let values = [3.0, -1.0, 7.0, 5.0];
        let mut scratch = [0.0; 4];
        assert_eq!(top_fraction_mean(&values, 0.01, &mut scratch), 7.0);
        assert_eq!(top_fraction_mean(&values, 0.5, &mut scratch), 6.0);
        assert_eq!(top_fraction_mean(&values, 1.0, &mut scratch), 3.5);
        assert!(top_fraction_mean(&[1.0, f32::NAN], 0.5, &mut scratch).is_nan());
    }

    #[test]
    fn smoothing_preserves_a_constant_and_spreads_a_spike() {
        let rule = ImageScoreRule {
            smoothing_sigma: 1.0,
            top_fraction: 0.0001,
            border: 0,
        };
        let mut scorer = ImageScorer::new(rule, 9, 9);
        let constant = vec![2.5; 81];
        assert!((scorer.score(&constant) - 2.5).abs() < 1e-5);
        let mut spike = vec![0.0; 81];
        spike[40] = 1.0;
        let score = scorer.score(&spike);
        let centre = gaussian_kernel(1.0)[3];
        assert!((score - centre * centre).abs() < 1e-6, "{score}");
        let total: f32 = scorer.smoothed().iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "mass {total}");
    }

    #[test]
    fn smoothing_equals_the_per_pixel_convolution_bit_for_bit() {
        // Kernels wider than the map (radius 6) exercise the clamping on both sides, down to a
        // single column or row.
        for (width, height) in [(13, 5), (1, 4), (3, 1), (3, 3)] {
            check_smoothing(width, height);
        }
    }

    fn check_smoothing(width: usize, height: usize) {
        let map: Vec<f32> = (0..width * height)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
            .collect();
        let kernel = gaussian_kernel(2.0);
        let radius = (kernel.len() / 2) as isize;
        let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
        let mut rows = vec![0.0f32; map.len()];
        for y in 0..height {
            for x in 0..width {
                rows[y * width + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        w * map[y * width + clamp(x as isize + k as isize - radius, width)]
                    })
                    .sum();
            }
        }
        let mut expected = vec![0.0f32; map.len()];
        for y in 0..height {
            for x in 0..width {
                expected[y * width + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        w * rows[clamp(y as isize + k as isize - radius, height) * width + x]
                    })
                    .sum();
            }
        }
        let (mut scratch, mut out) = (vec![0.0; map.len()], vec![0.0; map.len()]);
        smooth(&map, width, height, &kernel, &mut scratch, &mut out);
        assert_eq!(out, expected, "{width}x{height}");
    }

    #[test]
    fn the_border_is_left_out_of_the_score() {
        let rule = ImageScoreRule {
            smoothing_sigma: 0.0,
            top_fraction: 1e-6,
            border: 2,
        };
        let mut scorer = ImageScorer::new(rule, 8, 6);
        let mut map = vec![0.0; 48];
        map[0] = 100.0; // a corner: ignored
        map[8 + 5] = 50.0; // row 1: inside the 2-pixel border, ignored
        map[2 * 8 + 3] = 7.0; // interior
        assert_eq!(scorer.score(&map), 7.0);
        let rule = ImageScoreRule { border: 0, ..rule };
        assert_eq!(ImageScorer::new(rule, 8, 6).score(&map), 100.0);
    }

    #[test]
    fn verdict_rejects_at_threshold_and_on_nan() {
        assert_eq!(Verdict::from_score(0.99, 1.0), Verdict::Pass);
        assert_eq!(Verdict::from_score(1.0, 1.0), Verdict::Reject);
        assert_eq!(Verdict::from_score(f32::NAN, 1.0), Verdict::Reject);
    }

    #[test]
    fn the_policy_decides_only_unjudged_parts_and_rejects_by_default() {
        assert_eq!(FailSafePolicy::default().verdict(), Verdict::FailsafeReject);
        assert_eq!(FailSafePolicy::Pass.verdict(), Verdict::FailsafePass);
        let rejects: Vec<bool> = [
            Verdict::Pass,
            Verdict::Reject,
            Verdict::FailsafeReject,
            Verdict::FailsafePass,
        ]
        .iter()
        .map(|v| v.rejects())
        .collect();
        assert_eq!(rejects, [false, true, true, false]);
        assert!(Verdict::Reject.judged() && !Verdict::FailsafePass.judged());
        assert_eq!(Verdict::FailsafeReject.to_string(), "failsafe_reject");
    }
}
