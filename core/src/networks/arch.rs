//! The patch networks of *Uninformed Students* as plain data.
//!
//! A network is described once, as a list of [`Layer`]s in *patch geometry* (2×2 pools with
//! stride 2, undilated convolutions). Every way we evaluate it is derived from that list by
//! [`Architecture::plan`]:
//!
//! - [`Mode::Patch`]: a p×p patch → one descriptor (teacher pretraining).
//! - [`Mode::Image`] with output stride `s`: a whole image → a descriptor map at 1/s resolution.
//!   `s = 1` is the dense rewrite (every pool stride 1, later layers dilated), larger `s` keeps
//!   the first log2(s) pools strided. The map pixel `(i, j)` is the descriptor of the patch
//!   centred at image pixel `(i·s, j·s)`.
//!
//! The trainer builds its burn modules from a plan, and the exporter writes ONNX from the same
//! plan, so both evaluate exactly the same function.

use thiserror::Error;

/// Descriptor dimension `d` of every teacher and student.
pub const DESCRIPTOR_DIM: usize = 128;
/// Input channels: images are RGB (grayscale is replicated in preprocessing).
pub const INPUT_CHANNELS: usize = 3;
/// Negative slope of the LeakyReLU after every convolution but the last.
pub const LEAKY_SLOPE: f32 = 0.005;
/// Receptive fields the paper uses and we ship architectures for.
pub const PATCH_SIZES: [usize; 3] = [17, 33, 65];

/// One layer in patch geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Square convolution, stride 1, no padding.
    Conv { kernel: usize, out_channels: usize },
    /// 2×2 max pooling with stride 2.
    MaxPool,
}

const fn conv(kernel: usize, out_channels: usize) -> Layer {
    Layer::Conv {
        kernel,
        out_channels,
    }
}
use Layer::MaxPool as POOL;

/// Layer tables rebuilt from public reimplementations (the paper's appendix has typos).
static P17: [Layer; 4] = [conv(6, 128), conv(5, 256), conv(5, 256), conv(4, 128)];
static P33: [Layer; 6] = [
    conv(5, 128),
    POOL,
    conv(5, 256),
    POOL,
    conv(2, 256),
    conv(4, 128),
];
static P65: [Layer; 8] = [
    conv(5, 128),
    POOL,
    conv(5, 128),
    POOL,
    conv(5, 128),
    POOL,
    conv(4, 256),
    conv(1, 128),
];

/// The paper's widths (divisor 1): the serde default wherever a divisor is recorded, so files
/// written before narrow students existed read as they were meant.
pub fn paper_widths() -> usize {
    1
}

/// Whether `divisor` is the paper's (such files leave the field out).
pub fn is_paper_widths(divisor: &usize) -> bool {
    *divisor == 1
}

/// Errors about an architecture request.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArchError {
    #[error("no architecture for patch size {0} (supported: 17, 33, 65)")]
    UnknownPatchSize(usize),
    #[error(
        "output stride {stride} is not available for patch size {patch_size} (supported: {supported:?})"
    )]
    UnsupportedStride {
        patch_size: usize,
        stride: usize,
        supported: Vec<usize>,
    },
    #[error(
        "channel divisor {divisor} does not divide the hidden widths of patch size {patch_size} (use 1, 2, 4 or 8)"
    )]
    UnsupportedChannelDivisor { patch_size: usize, divisor: usize },
    #[error("a {height}×{width} input is too small for patch size {patch_size} at stride {stride}")]
    InputTooSmall {
        patch_size: usize,
        stride: usize,
        height: usize,
        width: usize,
    },
}

/// A patch network: its receptive field, its layers and how much narrower than the paper's its
/// hidden layers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Architecture {
    pub patch_size: usize,
    pub layers: &'static [Layer],
    /// Every conv but the last has `out_channels / channel_divisor` channels (1 = the paper's
    /// widths). A student needs the teacher's receptive field and output grid, not its width:
    /// halving the widths quarters the dominant convs' cost.
    pub channel_divisor: usize,
}

/// How a network is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// p×p patch → 1×1 descriptor. All pools strided, no padding.
    Patch,
    /// Whole image → descriptor map at 1/`stride` resolution, padded so that map pixel
    /// `(i, j)` describes the patch centred at `(i·stride, j·stride)`.
    Image { stride: usize },
}

/// One evaluated layer: everything an executor needs, with no geometry left to derive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannedLayer {
    Conv {
        kernel: usize,
        in_channels: usize,
        out_channels: usize,
        dilation: usize,
        /// Zero padding `[top, left, bottom, right]` (only the first conv in image mode).
        padding: [usize; 4],
        /// LeakyReLU([`LEAKY_SLOPE`]) follows; false for the last conv.
        activation: bool,
    },
    MaxPool {
        stride: usize,
        dilation: usize,
    },
}

impl Architecture {
    /// The architecture for receptive field `patch_size` (17, 33 or 65).
    pub fn for_patch_size(patch_size: usize) -> Result<Self, ArchError> {
        let layers: &'static [Layer] = match patch_size {
            17 => &P17,
            33 => &P33,
            65 => &P65,
            other => return Err(ArchError::UnknownPatchSize(other)),
        };
        Ok(Self {
            patch_size,
            layers,
            channel_divisor: 1,
        })
    }

    /// The same layers with every hidden width divided by `divisor` (the descriptor stays
    /// [`DESCRIPTOR_DIM`]). Refused unless `divisor` divides every hidden width and leaves at
    /// least 8 channels.
    pub fn with_channel_divisor(self, divisor: usize) -> Result<Self, ArchError> {
        let hidden = self.layers.iter().filter_map(|l| match *l {
            Layer::Conv { out_channels, .. } => Some(out_channels),
            Layer::MaxPool => None,
        });
        let fits = |width: usize| width.is_multiple_of(divisor) && width / divisor >= 8;
        if divisor == 0 || !hidden.take(self.conv_count() - 1).all(fits) {
            return Err(ArchError::UnsupportedChannelDivisor {
                patch_size: self.patch_size,
                divisor,
            });
        }
        Ok(Self {
            channel_divisor: divisor,
            ..self
        })
    }

    /// Output channels of conv `index` whose layer table says `table_width`.
    fn conv_width(&self, index: usize, table_width: usize) -> usize {
        if index + 1 == self.conv_count() {
            table_width
        } else {
            table_width / self.channel_divisor
        }
    }

    /// The network of receptive field `patch_size` with hidden widths divided by
    /// `channel_divisor`: what every recorded (patch size, divisor) pair means.
    pub fn new(patch_size: usize, channel_divisor: usize) -> Result<Self, ArchError> {
        Self::for_patch_size(patch_size)?.with_channel_divisor(channel_divisor)
    }

    /// Number of 2×2 pools.
    pub fn pool_count(&self) -> usize {
        self.layers.iter().filter(|l| **l == Layer::MaxPool).count()
    }

    /// Output strides this network can be evaluated at: 1, 2, …, 2^pools.
    pub fn supported_strides(&self) -> Vec<usize> {
        (0..=self.pool_count()).map(|k| 1 << k).collect()
    }

    /// The pixels a descriptor actually depends on. Pools floor odd sizes, so this can be
    /// smaller than `patch_size` (60 for p = 65, 32 for p = 33): the last rows of a patch are
    /// never read.
    pub fn effective_receptive_field(&self) -> usize {
        self.layers
            .iter()
            .rev()
            .fold(1, |field, layer| match layer {
                Layer::Conv { kernel, .. } => field + kernel - 1,
                Layer::MaxPool => field * 2,
            })
    }

    /// Image-mode zero padding `(before, after)` on each spatial axis: the patch centred on a
    /// pixel starts `(p − 1) / 2` pixels before it, and a dense map has the image's size.
    pub fn image_padding(&self) -> (usize, usize) {
        let before = (self.patch_size - 1) / 2;
        (before, self.effective_receptive_field() - 1 - before)
    }

    /// Number of conv layers.
    pub fn conv_count(&self) -> usize {
        self.layers.len() - self.pool_count()
    }

    /// `(in_channels, out_channels, kernel)` of every conv, in order.
    pub fn conv_shapes(&self) -> Vec<(usize, usize, usize)> {
        let mut in_channels = INPUT_CHANNELS;
        let mut shapes = Vec::new();
        for layer in self.layers {
            if let Layer::Conv {
                kernel,
                out_channels,
            } = *layer
            {
                let out_channels = self.conv_width(shapes.len(), out_channels);
                shapes.push((in_channels, out_channels, kernel));
                in_channels = out_channels;
            }
        }
        shapes
    }

    /// Validates `stride` for image mode.
    pub fn check_stride(&self, stride: usize) -> Result<(), ArchError> {
        let supported = self.supported_strides();
        if supported.contains(&stride) {
            Ok(())
        } else {
            Err(ArchError::UnsupportedStride {
                patch_size: self.patch_size,
                stride,
                supported,
            })
        }
    }

    /// The layers as evaluated in `mode`.
    pub fn plan(&self, mode: Mode) -> Result<Vec<PlannedLayer>, ArchError> {
        let (strided_pools, padding) = match mode {
            Mode::Patch => (self.pool_count(), [0; 4]),
            Mode::Image { stride } => {
                self.check_stride(stride)?;
                let (before, after) = self.image_padding();
                (
                    stride.trailing_zeros() as usize,
                    [before, before, after, after],
                )
            }
        };
        let last_conv = self.conv_count() - 1;
        let mut plan = Vec::with_capacity(self.layers.len());
        let mut dilation = 1;
        let mut pools_seen = 0;
        let mut convs_seen = 0;
        let mut in_channels = INPUT_CHANNELS;
        for layer in self.layers {
            match *layer {
                Layer::Conv {
                    kernel,
                    out_channels,
                } => {
                    let out_channels = self.conv_width(convs_seen, out_channels);
                    plan.push(PlannedLayer::Conv {
                        kernel,
                        in_channels,
                        out_channels,
                        dilation,
                        padding: if convs_seen == 0 { padding } else { [0; 4] },
                        activation: convs_seen != last_conv,
                    });
                    in_channels = out_channels;
                    convs_seen += 1;
                }
                Layer::MaxPool => {
                    if pools_seen < strided_pools {
                        plan.push(PlannedLayer::MaxPool {
                            stride: 2,
                            dilation,
                        });
                    } else {
                        plan.push(PlannedLayer::MaxPool {
                            stride: 1,
                            dilation,
                        });
                        dilation *= 2;
                    }
                    pools_seen += 1;
                }
            }
        }
        Ok(plan)
    }

    /// Output map size `(height, width)` for an input of `height × width` in `mode`, with the
    /// floor rounding of ONNX, tract and burn.
    pub fn output_size(
        &self,
        mode: Mode,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize), ArchError> {
        let plan = self.plan(mode)?;
        let too_small = || ArchError::InputTooSmall {
            patch_size: self.patch_size,
            stride: match mode {
                Mode::Patch => 1 << self.pool_count(),
                Mode::Image { stride } => stride,
            },
            height,
            width,
        };
        let through = |mut size: usize| -> Option<usize> {
            for layer in &plan {
                size = match *layer {
                    PlannedLayer::Conv {
                        kernel,
                        dilation,
                        padding,
                        ..
                    } => (size + padding[0] + padding[2]).checked_sub(dilation * (kernel - 1))?,
                    PlannedLayer::MaxPool { stride, dilation } => {
                        size.checked_sub(dilation + 1)? / stride + 1
                    }
                };
                if size == 0 {
                    return None;
                }
            }
            Some(size)
        };
        match (through(height), through(width)) {
            (Some(h), Some(w)) => Ok((h, w)),
            _ => Err(too_small()),
        }
    }

    /// Multiply-accumulates of one evaluation on a `height × width` input (for benchmarks).
    pub fn macs(&self, mode: Mode, height: usize, width: usize) -> Result<u64, ArchError> {
        Ok(self
            .conv_costs(mode, height, width)?
            .iter()
            .map(|c| c.macs)
            .sum())
    }

    /// Every conv of one evaluation with its output size and multiply-accumulates, in order:
    /// where a network's time goes.
    pub fn conv_costs(
        &self,
        mode: Mode,
        height: usize,
        width: usize,
    ) -> Result<Vec<ConvCost>, ArchError> {
        self.output_size(mode, height, width)?;
        let (mut h, mut w) = (height, width);
        let mut costs = Vec::new();
        for layer in self.plan(mode)? {
            match layer {
                PlannedLayer::Conv {
                    kernel,
                    in_channels,
                    out_channels,
                    dilation,
                    padding,
                    ..
                } => {
                    h = h + padding[0] + padding[2] - dilation * (kernel - 1);
                    w = w + padding[1] + padding[3] - dilation * (kernel - 1);
                    costs.push(ConvCost {
                        kernel,
                        in_channels,
                        out_channels,
                        dilation,
                        height: h,
                        width: w,
                        macs: (h * w * kernel * kernel * in_channels * out_channels) as u64,
                    });
                }
                PlannedLayer::MaxPool { stride, dilation } => {
                    h = (h - dilation - 1) / stride + 1;
                    w = (w - dilation - 1) / stride + 1;
                }
            }
        }
        Ok(costs)
    }
}

/// One conv of an evaluation: its shape, output size and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCost {
    pub kernel: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub dilation: usize,
    pub height: usize,
    pub width: usize,
    pub macs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_mode_maps_a_patch_to_one_descriptor() {
        for p in PATCH_SIZES {
            let arch = Architecture::for_patch_size(p).unwrap();
            assert_eq!(
                arch.output_size(Mode::Patch, p, p).unwrap(),
                (1, 1),
                "p = {p}"
            );
            let shapes = arch.conv_shapes();
            assert_eq!(shapes.last().unwrap().1, DESCRIPTOR_DIM);
        }
    }

    #[test]
    fn a_channel_divisor_narrows_hidden_convs_and_keeps_the_descriptor_and_grid() {
        let full = Architecture::for_patch_size(65).unwrap();
        let slim = full.with_channel_divisor(2).unwrap();
        let widths: Vec<_> = slim.conv_shapes().iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(
            widths,
            vec![(3, 64), (64, 64), (64, 64), (64, 128), (128, 128)]
        );
        let mode = Mode::Image { stride: 8 };
        assert_eq!(
            slim.output_size(mode, 128, 128),
            full.output_size(mode, 128, 128)
        );
        let ratio =
            full.macs(mode, 128, 128).unwrap() as f64 / slim.macs(mode, 128, 128).unwrap() as f64;
        assert!(ratio > 3.0, "half widths cost 1/{ratio:.2}");
        for bad in [0, 3, 32] {
            assert_eq!(
                full.with_channel_divisor(bad),
                Err(ArchError::UnsupportedChannelDivisor {
                    patch_size: 65,
                    divisor: bad
                })
            );
        }
    }

    #[test]
    fn effective_receptive_fields() {
        let fields: Vec<_> = PATCH_SIZES
            .iter()
            .map(|&p| {
                Architecture::for_patch_size(p)
                    .unwrap()
                    .effective_receptive_field()
            })
            .collect();
        assert_eq!(fields, vec![17, 32, 60]);
    }

    #[test]
    fn dense_map_has_the_image_size_and_strided_maps_divide_it() {
        for p in PATCH_SIZES {
            let arch = Architecture::for_patch_size(p).unwrap();
            for stride in arch.supported_strides() {
                let (h, w) = arch.output_size(Mode::Image { stride }, 256, 96).unwrap();
                assert_eq!((h, w), (256 / stride, 96 / stride), "p = {p}, s = {stride}");
            }
        }
    }

    #[test]
    fn dense_plan_dilates_after_each_pool() {
        let arch = Architecture::for_patch_size(65).unwrap();
        let plan = arch.plan(Mode::Image { stride: 1 }).unwrap();
        let dilations: Vec<_> = plan
            .iter()
            .map(|l| match l {
                PlannedLayer::Conv { dilation, .. } => (*dilation, 0),
                PlannedLayer::MaxPool { dilation, stride } => (*dilation, *stride),
            })
            .collect();
        assert_eq!(
            dilations,
            vec![
                (1, 0),
                (1, 1),
                (2, 0),
                (2, 1),
                (4, 0),
                (4, 1),
                (8, 0),
                (8, 0)
            ]
        );
        let strided = arch.plan(Mode::Image { stride: 4 }).unwrap();
        assert!(matches!(
            strided[5],
            PlannedLayer::MaxPool {
                stride: 1,
                dilation: 1
            }
        ));
        assert!(matches!(strided[6], PlannedLayer::Conv { dilation: 2, .. }));
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(
            Architecture::for_patch_size(31),
            Err(ArchError::UnknownPatchSize(31))
        );
        let arch = Architecture::for_patch_size(17).unwrap();
        assert!(matches!(
            arch.plan(Mode::Image { stride: 2 }),
            Err(ArchError::UnsupportedStride { .. })
        ));
        let arch = Architecture::for_patch_size(65).unwrap();
        assert!(arch.output_size(Mode::Patch, 40, 40).is_err());
    }
}
