//! The residual whitening of a fitted scale ([`ustad_core::bundle::onnx::Whitening`]), measured on good
//! images that neither trained the students nor calibrate the threshold.

use thiserror::Error;
use ustad_core::bundle::onnx::Whitening;

use crate::pca::{standardised_covariance, symmetric_eigen};

/// Shrinkage of the residual covariance towards `tr(Σ)/C · I`: keeps directions the whitening
/// images barely visit from being amplified without bound.
pub const SHRINKAGE: f64 = 0.01;

#[derive(Debug, Error)]
pub enum WhiteningError {
    #[error("no images to measure the residual whitening on")]
    NoImages,
    #[error("image {image}: {found} teacher values and {expected} student values per map")]
    MapSize {
        image: usize,
        found: usize,
        expected: usize,
    },
    #[error(
        "the residual of the students is zero or not finite on the whitening images (energy {trace})"
    )]
    ZeroResidual { trace: f64 },
}

/// What the whitening measured, for the bundle's provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct WhiteningSummary {
    pub images: usize,
    /// Share of the residual variance in its 8 largest directions.
    pub top8_share: f64,
}

/// `W = c · (Σ + λ I)^{-1/2}` of the residuals `mean sᵢ − t` over every cell of every image,
/// with `λ = SHRINKAGE · tr(Σ)/C` and `c = sqrt(tr(Σ)/C)`, so the whitened error keeps the
/// plain error's scale.
///
/// `teacher[k]` is image `k`'s normalised teacher map and `students[i][k]` student `i`'s, each
/// `channels × cells`. With no students the prediction is zero and the residual is `−t`: the
/// whitening of the teacher itself, whose error is then its Mahalanobis distance.
pub fn residual_whitening(
    teacher: &[Vec<f32>],
    students: &[Vec<Vec<f32>>],
    channels: usize,
) -> Result<(Whitening, WhiteningSummary), WhiteningError> {
    if teacher.is_empty() {
        return Err(WhiteningError::NoImages);
    }
    let residuals: Vec<Vec<f32>> = teacher
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let mut r = vec![0.0f32; t.len()];
            for s in students {
                let map = &s[k];
                if map.len() != t.len() {
                    return Err(WhiteningError::MapSize {
                        image: k,
                        found: t.len(),
                        expected: map.len(),
                    });
                }
                for (r, v) in r.iter_mut().zip(map) {
                    *r += v / students.len() as f32;
                }
            }
            for (r, v) in r.iter_mut().zip(t) {
                *r -= v;
            }
            Ok(r)
        })
        .collect::<Result<_, _>>()?;
    let covariance = covariance(&residuals, channels);
    let trace: f64 = (0..channels).map(|c| covariance[c * channels + c]).sum();
    // A residual with no energy, or with NaN or infinite energy, cannot be whitened.
    if !trace.is_finite() || trace <= 0.0 {
        return Err(WhiteningError::ZeroResidual { trace });
    }
    let level = trace / channels as f64;
    let mut shrunk = covariance;
    for c in 0..channels {
        shrunk[c * channels + c] += SHRINKAGE * level;
    }
    let (values, vectors) = symmetric_eigen(shrunk, channels);
    let mut sorted = values.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top8_share =
        sorted.iter().take(8).sum::<f64>() / sorted.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let scale: Vec<f64> = values
        .iter()
        .map(|v| level.sqrt() / v.max(f64::MIN_POSITIVE).sqrt())
        .collect();
    let mut matrix = vec![0.0f32; channels * channels];
    for a in 0..channels {
        for b in 0..channels {
            let m: f64 = (0..channels)
                .map(|k| vectors[a * channels + k] * scale[k] * vectors[b * channels + k])
                .sum();
            matrix[a * channels + b] = m as f32;
        }
    }
    Ok((
        Whitening { matrix, channels },
        WhiteningSummary {
            images: teacher.len(),
            top8_share,
        },
    ))
}

/// Centred `channels × channels` covariance (row-major) of the cells of `maps`.
fn covariance(maps: &[Vec<f32>], channels: usize) -> Vec<f64> {
    let (mean, _) = crate::teacher::targets::channel_moments(maps, channels);
    let mean: Vec<f64> = mean.into_iter().map(f64::from).collect();
    standardised_covariance(maps, channels, &mean, &vec![1.0; channels])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded uniform noise in [−0.5, 0.5).
    fn uniform_noise(seed: u64) -> impl FnMut() -> f32 {
        let mut rng = ustad_core::testing::SplitMix64(seed);
        move || rng.next_f32() - 0.5
    }

    /// The variances of a `channels × channels` covariance, with their smallest and largest.
    fn variances(cov: &[f64], channels: usize) -> (Vec<f64>, f64, f64) {
        let diagonal: Vec<f64> = (0..channels).map(|c| cov[c * channels + c]).collect();
        let (lo, hi) = diagonal
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        (diagonal, lo, hi)
    }

    /// Residuals with a dominant direction (channel variances 2.4 to 34): after whitening no
    /// direction dominates any more (the shrinkage keeps the weakest a little below the rest).
    #[test]
    fn whitened_residuals_are_isotropic() {
        let channels = 4;
        let cells = 500;
        let mut noise = uniform_noise(12345);
        let mut student = vec![0.0f32; channels * cells];
        for cell in 0..cells {
            let big = noise() * 5.0;
            for c in 0..channels {
                student[c * cells + cell] = big * (c as f32 + 1.0) + 2.0 * noise();
            }
        }
        let teacher = vec![vec![0.0f32; channels * cells]];
        let (w, summary) =
            residual_whitening(&teacher, &[vec![student.clone()]], channels).unwrap();
        assert_eq!(summary.images, 1);
        let (_, raw_lo, raw_hi) = variances(&covariance(&[student.clone()], channels), channels);
        assert!(raw_hi / raw_lo > 10.0);
        let whitened = w.apply(&student);
        let cov = covariance(&[whitened], channels);
        let (diagonal, lo, hi) = variances(&cov, channels);
        assert!(hi / lo < 2.0, "whitened variances {diagonal:?}");
        for a in 0..channels {
            for b in 0..channels {
                if a != b {
                    assert!(cov[a * channels + b].abs() < 0.2 * hi, "{cov:?}");
                }
            }
        }
    }

    #[test]
    fn without_students_the_teacher_itself_is_whitened() {
        let (channels, cells) = (3, 400);
        let mut noise = uniform_noise(777);
        // Channel 1 follows channel 0 and channel 2 is three times wider: correlated and
        // unequal, as a teacher's channels are.
        let mut teacher = vec![0.0f32; channels * cells];
        for c in 0..cells {
            let (a, b, d) = (noise(), noise(), noise());
            teacher[c] = a;
            teacher[cells + c] = a + 0.5 * b;
            teacher[2 * cells + c] = 3.0 * d;
        }
        let raw = covariance(std::slice::from_ref(&teacher), channels);
        assert!(raw[8] > 5.0 * raw[0] && raw[1] > 0.5 * raw[0], "{raw:?}");
        let (alone, _) = residual_whitening(&[teacher.clone()], &[], channels).unwrap();
        let negated: Vec<f32> = teacher.iter().map(|v| -v).collect();
        let zero = vec![vec![0.0f32; channels * cells]];
        // A student that predicts zero everywhere leaves the same residual, `−t`.
        let (predicting_zero, _) = residual_whitening(&[teacher], &[zero], channels).unwrap();
        assert_eq!(alone.apply(&negated), predicting_zero.apply(&negated));
        let cov = covariance(&[alone.apply(&negated)], channels);
        let (diagonal, lo, hi) = variances(&cov, channels);
        assert!(hi / lo < 2.0, "whitened variances {diagonal:?}");
    }

    #[test]
    fn mismatched_maps_and_zero_or_nan_residuals_are_errors() {
        let teacher = vec![vec![0.0f32; 8]];
        assert!(matches!(
            residual_whitening(&teacher, &[vec![vec![0.0; 6]]], 2),
            Err(WhiteningError::MapSize { .. })
        ));
        assert!(matches!(
            residual_whitening(&teacher, &[vec![vec![0.0; 8]]], 2),
            Err(WhiteningError::ZeroResidual { .. })
        ));
        assert!(matches!(
            residual_whitening(&teacher, &[vec![vec![f32::NAN; 8]]], 2),
            Err(WhiteningError::ZeroResidual { .. })
        ));
        assert!(matches!(
            residual_whitening(&[], &[], 2),
            Err(WhiteningError::NoImages)
        ));
        assert!(matches!(
            residual_whitening(&teacher, &[], 2),
            Err(WhiteningError::ZeroResidual { .. })
        ));
    }
}
