//! A slow, obviously correct executor of [`PlannedLayer`]s.
//!
//! It exists to check the fast paths: tract on exported graphs, the trainer's burn modules, and
//! the dense rewrite itself (a dense map must equal the patch network applied patch by patch).
//! Loops are written the way the operators are defined, with no tiling or reordering.

use crate::networks::arch::{LEAKY_SLOPE, Mode, PlannedLayer};
use crate::networks::weights::{NetworkWeights, WeightsError};

/// A CHW feature map.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl FeatureMap {
    /// Values uniform in [−1, 1) from `seed`, the same on every platform: the one random input
    /// of the tests that compare executors (reference, tract, burn) on the same map.
    pub fn random(channels: usize, height: usize, width: usize, seed: u64) -> Self {
        let mut rng = crate::networks::weights::SplitMix64(seed);
        Self {
            channels,
            height,
            width,
            data: (0..channels * height * width)
                .map(|_| rng.next_f32() * 2.0 - 1.0)
                .collect(),
        }
    }

    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
            data: vec![0.0; channels * height * width],
        }
    }

    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }

    /// The `size × size` window whose top-left corner is `(top, left)` in the map zero-padded
    /// by `pad` on the top and left (coordinates may fall outside the map: those read zero).
    pub fn window(&self, top: isize, left: isize, size: usize) -> FeatureMap {
        let mut out = FeatureMap::zeros(self.channels, size, size);
        for c in 0..self.channels {
            for y in 0..size {
                for x in 0..size {
                    let (sy, sx) = (top + y as isize, left + x as isize);
                    if sy >= 0
                        && sx >= 0
                        && (sy as usize) < self.height
                        && (sx as usize) < self.width
                    {
                        out.data[(c * size + y) * size + x] = self.at(c, sy as usize, sx as usize);
                    }
                }
            }
        }
        out
    }

    /// The descriptor (all channels) at `(y, x)`.
    pub fn descriptor(&self, y: usize, x: usize) -> Vec<f32> {
        (0..self.channels).map(|c| self.at(c, y, x)).collect()
    }
}

/// Evaluates `weights` in `mode` on `input` by direct loops.
pub fn forward(
    weights: &NetworkWeights,
    mode: Mode,
    input: &FeatureMap,
) -> Result<FeatureMap, WeightsError> {
    let arch = weights.validate("reference")?;
    let plan = arch.plan(mode).map_err(|source| WeightsError::Arch {
        context: "reference".into(),
        source,
    })?;
    let mut x = input.clone();
    let mut convs = weights.convs.iter();
    for layer in plan {
        x = match layer {
            PlannedLayer::Conv {
                kernel,
                in_channels,
                out_channels,
                dilation,
                padding,
                activation,
            } => {
                let conv = convs
                    .next()
                    .expect("validated weights have one entry per conv");
                let [top, left, bottom, right] = padding;
                let out_h = x.height + top + bottom - dilation * (kernel - 1);
                let out_w = x.width + left + right - dilation * (kernel - 1);
                let mut out = FeatureMap::zeros(out_channels, out_h, out_w);
                for o in 0..out_channels {
                    for y in 0..out_h {
                        for xx in 0..out_w {
                            let mut acc = conv.bias[o];
                            for i in 0..in_channels {
                                for ky in 0..kernel {
                                    let sy = (y + ky * dilation) as isize - top as isize;
                                    if sy < 0 || sy as usize >= x.height {
                                        continue;
                                    }
                                    for kx in 0..kernel {
                                        let sx = (xx + kx * dilation) as isize - left as isize;
                                        if sx < 0 || sx as usize >= x.width {
                                            continue;
                                        }
                                        let w = conv.weight
                                            [((o * in_channels + i) * kernel + ky) * kernel + kx];
                                        acc += w * x.at(i, sy as usize, sx as usize);
                                    }
                                }
                            }
                            if activation && acc < 0.0 {
                                acc *= LEAKY_SLOPE;
                            }
                            out.data[(o * out_h + y) * out_w + xx] = acc;
                        }
                    }
                }
                out
            }
            PlannedLayer::MaxPool { stride, dilation } => {
                let out_h = (x.height - dilation - 1) / stride + 1;
                let out_w = (x.width - dilation - 1) / stride + 1;
                let mut out = FeatureMap::zeros(x.channels, out_h, out_w);
                for c in 0..x.channels {
                    for y in 0..out_h {
                        for xx in 0..out_w {
                            let mut m = f32::NEG_INFINITY;
                            for ky in 0..2 {
                                for kx in 0..2 {
                                    m = m.max(x.at(
                                        c,
                                        y * stride + ky * dilation,
                                        xx * stride + kx * dilation,
                                    ));
                                }
                            }
                            out.data[(c * out_h + y) * out_w + xx] = m;
                        }
                    }
                }
                out
            }
        };
    }
    Ok(x)
}

/// The patch network on the p×p patch centred at `(y, x)` of `image` (zero outside it).
pub fn patch_descriptor(
    weights: &NetworkWeights,
    image: &FeatureMap,
    y: usize,
    x: usize,
) -> Result<Vec<f32>, WeightsError> {
    let p = weights.patch_size;
    let half = ((p - 1) / 2) as isize;
    let patch = image.window(y as isize - half, x as isize - half, p);
    Ok(forward(weights, Mode::Patch, &patch)?.descriptor(0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heart of the method: the dense (and strided) image-mode evaluation is the patch
    /// network applied at every (every s-th) pixel, borders included.
    #[test]
    fn image_mode_equals_patch_network_at_every_sampled_pixel() {
        for (p, size) in [(17, 14), (33, 16), (65, 12)] {
            let weights = NetworkWeights::random(p, p as u64).unwrap();
            let arch = weights.architecture().unwrap();
            let image = FeatureMap::random(3, size, size + 3, 11);
            let strides = arch.supported_strides();
            for stride in [strides[0], strides[strides.len() - 1]] {
                let map = forward(&weights, Mode::Image { stride }, &image).unwrap();
                let expected = arch
                    .output_size(Mode::Image { stride }, size, size + 3)
                    .unwrap();
                assert_eq!((map.height, map.width), expected);
                let probes = [
                    (0, 0),
                    (map.height / 2, map.width / 2),
                    (map.height - 1, map.width - 1),
                    (0, map.width - 1),
                ];
                for (i, j) in probes {
                    let want = patch_descriptor(&weights, &image, i * stride, j * stride).unwrap();
                    let got = map.descriptor(i, j);
                    let diff = want
                        .iter()
                        .zip(&got)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(
                        diff < 1e-4,
                        "p = {p}, s = {stride}, ({i}, {j}): max diff {diff}"
                    );
                }
            }
        }
    }
}
