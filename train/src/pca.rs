//! Principal components of backbone features: the projection of a feature teacher.
//!
//! The backbone taps are wider than the 128-d descriptor (40 + 112 channels for
//! EfficientNet-Lite0's `res4` + `res10`). The projection keeps `keep` principal components
//! of the per-channel standardised features of the good parts: the leading ones, the linear
//! map that loses the least of the features, or the trailing ones, the directions in which
//! good parts vary least. An anomaly shows most in the latter (Rippel et al., "Modeling the
//! distribution of normal data in pre-trained deep features for anomaly detection", 2020):
//! on MTD with `res4` + `res10` + `res12` at 128², a Gaussian of the 128 trailing components
//! scored image AUROC 0.922, of all 344 channels 0.900 and of the 128 leading ones 0.818
//! (`scripts/tap_study.py`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use ustad_core::bundle::onnx::Projection;

#[derive(Debug, Error)]
pub enum PcaError {
    #[error("the features have {channels} channels; {keep} components cannot be kept")]
    TooFewChannels { channels: usize, keep: usize },
    #[error("no feature maps to fit the projection on")]
    Empty,
}

/// Which principal components a feature teacher's projection keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Components {
    /// The largest-variance components: the best reconstruction of the features.
    #[default]
    Leading,
    /// The smallest-variance components: where good parts agree most, so where a defect
    /// stands out most.
    Trailing,
}

impl Components {
    /// How a bundle's provenance names the choice.
    pub fn describe(self) -> &'static str {
        match self {
            Components::Leading => "leading components",
            Components::Trailing => "trailing components",
        }
    }
}

/// The projection of `channels × cells` maps onto `keep` of their principal components
/// after standardising each channel: `y_k = Σ_c e_k[c] (f_c − μ_c) / σ_c`.
pub fn principal_projection(
    maps: &[Vec<f32>],
    channels: usize,
    keep: usize,
    components: Components,
) -> Result<Projection, PcaError> {
    if keep > channels {
        return Err(PcaError::TooFewChannels { channels, keep });
    }
    if maps.is_empty() || channels == 0 {
        return Err(PcaError::Empty);
    }
    let (mean, std) = crate::teacher::targets::channel_moments(maps, channels);
    let mean: Vec<f64> = mean.into_iter().map(f64::from).collect();
    let std: Vec<f64> = std.into_iter().map(f64::from).collect();
    let covariance = standardised_covariance(maps, channels, &mean, &std);
    let (values, vectors) = symmetric_eigen(covariance, channels);
    let mut order: Vec<usize> = (0..channels).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let kept = match components {
        Components::Leading => &order[..keep],
        Components::Trailing => &order[channels - keep..],
    };
    let mut weight = Vec::with_capacity(keep * channels);
    let mut bias = Vec::with_capacity(keep);
    for &k in kept {
        let mut b = 0.0f64;
        for c in 0..channels {
            let e = vectors[c * channels + k];
            weight.push((e / std[c]) as f32);
            b -= e * mean[c] / std[c];
        }
        bias.push(b as f32);
    }
    Ok(Projection {
        weight,
        bias,
        inputs: channels,
    })
}

fn add(mut a: Vec<f64>, b: &[f64]) -> Vec<f64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// `channels × channels` covariance (row-major) of the standardised features.
pub(crate) fn standardised_covariance(
    maps: &[Vec<f32>],
    channels: usize,
    mean: &[f64],
    std: &[f64],
) -> Vec<f64> {
    let (gram, n) = maps
        .par_iter()
        .map(|map| {
            let cells = map.len() / channels;
            let z: Vec<Vec<f32>> = (0..channels)
                .map(|c| {
                    map[c * cells..(c + 1) * cells]
                        .iter()
                        .map(|v| ((*v as f64 - mean[c]) / std[c]) as f32)
                        .collect()
                })
                .collect();
            let mut gram = vec![0.0f64; channels * channels];
            for a in 0..channels {
                for b in a..channels {
                    let dot: f32 = z[a].iter().zip(&z[b]).map(|(x, y)| x * y).sum();
                    gram[a * channels + b] = dot as f64;
                    gram[b * channels + a] = dot as f64;
                }
            }
            (gram, cells)
        })
        .reduce(
            || (vec![0.0; channels * channels], 0),
            |a, b| (add(a.0, &b.0), a.1 + b.1),
        );
    let n = n.max(1) as f64;
    gram.into_iter().map(|g| g / n).collect()
}

/// Eigenvalues and eigenvectors (columns of the row-major `n × n` result) of a symmetric
/// matrix, by cyclic Jacobi rotations: slow for big matrices, exact and dependency-free for
/// the few hundred channels of a backbone tap.
pub fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= 1e-24 * total.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn eigenpairs_satisfy_the_definition() {
        let n = 12;
        let mut rng = StdRng::seed_from_u64(3);
        let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        // A = Bᵀ B is symmetric positive semi-definite.
        let a: Vec<f64> = (0..n * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum()
            })
            .collect();
        let (values, vectors) = symmetric_eigen(a.clone(), n);
        for k in 0..n {
            let norm: f64 = (0..n).map(|i| vectors[i * n + k].powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-9);
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * vectors[j * n + k]).sum();
                assert!((av - values[k] * vectors[i * n + k]).abs() < 1e-8);
            }
        }
    }

    #[test]
    fn projection_keeps_the_dominant_direction() {
        // Two channels that move together plus one of independent noise: the first component
        // is the shared direction, and the projected features are centred.
        let mut rng = StdRng::seed_from_u64(5);
        let cells = 4000;
        let mut map = vec![0.0f32; 3 * cells];
        for i in 0..cells {
            let s: f32 = rng.random_range(-1.0..1.0);
            map[i] = 10.0 + 2.0 * s;
            map[cells + i] = -3.0 + 0.5 * s;
            map[2 * cells + i] = rng.random_range(-1.0..1.0);
        }
        let p = principal_projection(&[map.clone()], 3, 1, Components::Leading).unwrap();
        // On the standardised channels (σ = 2/√3, 0.5/√3, 1/√3) the component is
        // (1/√2, 1/√2, 0) up to sign.
        let sigma = [2.0 / 3f32.sqrt(), 0.5 / 3f32.sqrt(), 1.0 / 3f32.sqrt()];
        let e: Vec<f32> = (0..3).map(|c| (p.weight[c] * sigma[c]).abs()).collect();
        assert!(
            (e[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.02,
            "{e:?}"
        );
        assert!(
            (e[1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.02,
            "{e:?}"
        );
        assert!(e[2] < 0.05, "noise channel weight {}", e[2]);
        let y = p.apply(&map);
        let mean: f32 = y.iter().sum::<f32>() / y.len() as f32;
        assert!(mean.abs() < 1e-3, "projected mean {mean}");
        assert!(matches!(
            principal_projection(&[map.clone()], 3, 4, Components::Leading),
            Err(PcaError::TooFewChannels { .. })
        ));
        // The trailing component of the same data is the shared direction's orthogonal
        // complement within the two coupled channels: (1/√2, −1/√2, 0) up to sign, on which
        // they do not vary at all.
        let t = principal_projection(&[map.clone()], 3, 1, Components::Trailing).unwrap();
        let e: Vec<f32> = (0..3).map(|c| t.weight[c] * sigma[c]).collect();
        assert!(
            (e[0].abs() - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.02,
            "{e:?}"
        );
        assert!((e[0] + e[1]).abs() < 0.02, "{e:?}");
        assert!(e[2].abs() < 0.05, "noise channel weight {}", e[2]);
        let y = t.apply(&map);
        let spread = y.iter().map(|v| v * v).sum::<f32>() / y.len() as f32;
        assert!(
            spread < 1e-3,
            "good parts vary along the trailing component: {spread}"
        );
    }
}
