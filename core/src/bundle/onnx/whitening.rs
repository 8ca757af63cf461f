//! Residual whitening: one linear map of the descriptor space, applied to a scale's teacher and
//! to each of its students before they are written.
//!
//! Students that cannot fully predict their teacher leave a residual `r = mean sᵢ − t` on good
//! parts, and that residual is far from isotropic: a few directions hold most of it. The plain
//! squared error `‖r‖²` then ranks pixels by how unpredictable good texture is rather than by how
//! unusual it is. With `W = Σ_r^{-1/2}` (the residual covariance of good parts, shrunk towards
//! the identity) the error `‖W·r‖²` is the Mahalanobis distance of the residual. `W` is linear,
//! so it folds into the teacher's last layer (with the teacher normalisation before it) and into
//! every student's last convolution, `W·sᵢ − W·t = W·r`: the engine, the bundle format and the
//! int8 export stay as they are and compute the whitened score unchanged.

use super::{ChannelNorm, ExportError, Projection, fold_normalisation};
use crate::networks::weights::NetworkWeights;

/// A `channels × channels` map of the descriptor space (row-major), `y = M·x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    pub matrix: Vec<f32>,
    pub channels: usize,
}

impl Whitening {
    /// `M·(W·x + b)` for a layer with `outputs × per_output` weights and `outputs` biases: the
    /// same layer with its outputs mixed.
    fn mix(&self, weight: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let n = self.channels;
        let per_output = weight.len() / n;
        let mut mixed_weight = vec![0.0f32; weight.len()];
        let mut mixed_bias = vec![0.0f32; n];
        for (o, (row, b)) in self
            .matrix
            .chunks_exact(n)
            .zip(mixed_bias.iter_mut())
            .enumerate()
        {
            let dst = &mut mixed_weight[o * per_output..(o + 1) * per_output];
            for (c, &m) in row.iter().enumerate() {
                if m == 0.0 {
                    continue;
                }
                *b += m * bias[c];
                for (d, w) in dst
                    .iter_mut()
                    .zip(&weight[c * per_output..(c + 1) * per_output])
                {
                    *d += m * w;
                }
            }
        }
        (mixed_weight, mixed_bias)
    }

    fn check(&self, outputs: usize) -> Result<(), ExportError> {
        if self.matrix.len() != self.channels * self.channels || outputs != self.channels {
            return Err(ExportError::WhiteningSize {
                matrix: self.matrix.len(),
                outputs,
            });
        }
        Ok(())
    }

    /// `network` with `(y − μ)/σ` (when `norm` is given) and then this map folded into its last
    /// convolution.
    pub fn network(
        &self,
        network: &NetworkWeights,
        norm: Option<&ChannelNorm>,
    ) -> Result<NetworkWeights, ExportError> {
        let mut whitened = network.clone();
        let Some(last) = whitened.convs.last_mut() else {
            return Err(ExportError::WhiteningSize {
                matrix: self.matrix.len(),
                outputs: 0,
            });
        };
        self.check(last.out_channels)?;
        let (weight, bias) = match norm {
            Some(norm) => fold_normalisation(&last.weight, &last.bias, norm),
            None => (last.weight.clone(), last.bias.clone()),
        };
        (last.weight, last.bias) = self.mix(&weight, &bias);
        Ok(whitened)
    }

    /// `projection` followed by `(y − μ)/σ` and then this map.
    pub fn projection(
        &self,
        projection: &Projection,
        norm: &ChannelNorm,
    ) -> Result<Projection, ExportError> {
        self.check(projection.outputs())?;
        let normalised = projection.then_normalise(norm);
        let (weight, bias) = self.mix(&normalised.weight, &normalised.bias);
        Ok(Projection {
            weight,
            bias,
            inputs: projection.inputs,
        })
    }

    /// Applies the map to a `channels × cells` descriptor map.
    pub fn apply(&self, map: &[f32]) -> Vec<f32> {
        Projection {
            weight: self.matrix.clone(),
            bias: vec![0.0; self.channels],
            inputs: self.channels,
        }
        .apply(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networks::arch::DESCRIPTOR_DIM;

    fn mixing(seed: u32) -> Whitening {
        let n = DESCRIPTOR_DIM;
        let mut rng = crate::networks::weights::SplitMix64(seed.into());
        let matrix = (0..n * n)
            .map(|k| rng.next_f32() - 0.5 + if k % (n + 1) == 0 { 2.0 } else { 0.0 })
            .collect();
        Whitening {
            matrix,
            channels: n,
        }
    }

    #[test]
    fn a_projection_then_whitening_is_one_projection() {
        let inputs = 5;
        let projection = Projection {
            weight: (0..DESCRIPTOR_DIM * inputs)
                .map(|k| ((k * 37) % 11) as f32 / 11.0 - 0.5)
                .collect(),
            bias: (0..DESCRIPTOR_DIM).map(|k| k as f32 / 100.0).collect(),
            inputs,
        };
        let norm = ChannelNorm {
            mean: (0..DESCRIPTOR_DIM).map(|k| (k % 3) as f32 * 0.1).collect(),
            std: (0..DESCRIPTOR_DIM)
                .map(|k| 0.5 + (k % 4) as f32 * 0.25)
                .collect(),
        };
        let w = mixing(7);
        let map: Vec<f32> = (0..inputs * 6).map(|k| (k as f32 * 0.3).sin()).collect();
        let expected = w.apply(&projection.then_normalise(&norm).apply(&map));
        let folded = w.projection(&projection, &norm).unwrap().apply(&map);
        for (a, b) in expected.iter().zip(&folded) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn only_the_last_convolution_changes() {
        let network = NetworkWeights::random(17, 3).unwrap();
        let w = mixing(1);
        let whitened = w.network(&network, None).unwrap();
        let last = network.convs.len() - 1;
        for (a, b) in network.convs[..last].iter().zip(&whitened.convs[..last]) {
            assert_eq!(a, b);
        }
        let (before, after) = (&network.convs[last], &whitened.convs[last]);
        let per_output = before.weight.len() / before.out_channels;
        // Output channel 3 of the whitened layer is row 3 of M times the old outputs.
        let row = &w.matrix[3 * DESCRIPTOR_DIM..4 * DESCRIPTOR_DIM];
        let expected: f32 = row
            .iter()
            .enumerate()
            .map(|(c, m)| m * before.weight[c * per_output + 5])
            .sum();
        assert!((after.weight[3 * per_output + 5] - expected).abs() < 1e-4);
        let bias: f32 = row.iter().zip(&before.bias).map(|(m, b)| m * b).sum();
        assert!((after.bias[3] - bias).abs() < 1e-4);
    }

    #[test]
    fn a_teachers_normalisation_is_folded_before_the_mix() {
        let network = NetworkWeights::random(17, 4).unwrap();
        let norm = ChannelNorm {
            mean: (0..DESCRIPTOR_DIM).map(|k| (k % 5) as f32 * 0.2).collect(),
            std: (0..DESCRIPTOR_DIM).map(|k| 1.0 + (k % 3) as f32).collect(),
        };
        let w = mixing(9);
        let whitened = w.network(&network, Some(&norm)).unwrap();
        let last = network.convs.len() - 1;
        let (before, after) = (&network.convs[last], &whitened.convs[last]);
        let per_output = before.weight.len() / before.out_channels;
        let row = &w.matrix[7 * DESCRIPTOR_DIM..8 * DESCRIPTOR_DIM];
        let weight: f32 = (0..DESCRIPTOR_DIM)
            .map(|c| row[c] * before.weight[c * per_output + 2] / norm.std[c])
            .sum();
        let bias: f32 = (0..DESCRIPTOR_DIM)
            .map(|c| row[c] * (before.bias[c] - norm.mean[c]) / norm.std[c])
            .sum();
        assert!((after.weight[7 * per_output + 2] - weight).abs() < 1e-4);
        assert!((after.bias[7] - bias).abs() < 1e-4);
    }

    #[test]
    fn a_map_of_the_wrong_size_is_refused() {
        let network = NetworkWeights::random(17, 3).unwrap();
        let small = Whitening {
            matrix: vec![1.0; 4],
            channels: 2,
        };
        assert!(matches!(
            small.network(&network, None),
            Err(ExportError::WhiteningSize { .. })
        ));
    }
}
