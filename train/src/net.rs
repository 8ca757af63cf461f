//! The teacher/student network in burn, built from the library's architecture tables.
//!
//! One module holds the conv weights; [`PatchNet::forward`] evaluates them in any
//! [`Mode`](ustad_core::networks::arch::Mode) by following [`Architecture::plan`], the same plan the ONNX
//! exporter writes. Patch mode (teacher pretraining) and image mode (students, dense or strided)
//! therefore share weights and geometry by construction.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::leaky_relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use ustad_core::networks::arch::{ArchError, Architecture, LEAKY_SLOPE, Mode, PlannedLayer};
use ustad_core::networks::weights::{ConvWeights, NetworkWeights, WeightsError};

/// A patch network (teacher or student) of receptive field `patch_size`.
#[derive(Module, Debug)]
pub struct PatchNet {
    pub convs: Vec<Conv2d>,
    pub patch_size: usize,
    /// [`Architecture::channel_divisor`]: 1 for the paper's widths.
    pub channel_divisor: usize,
}

impl PatchNet {
    /// Fresh weights with burn's default (Kaiming-uniform) initialisation. Each call draws new
    /// random weights: students built by separate calls are independent, as the method needs.
    pub fn new(patch_size: usize, device: &Device) -> Result<Self, ArchError> {
        Ok(Self::from_architecture(
            Architecture::for_patch_size(patch_size)?,
            device,
        ))
    }

    /// [`Self::new`] for any architecture, narrow students included.
    pub fn from_architecture(arch: Architecture, device: &Device) -> Self {
        let convs = arch
            .conv_shapes()
            .into_iter()
            .map(|(i, o, k)| Conv2dConfig::new([i, o], [k, k]).init(device))
            .collect();
        Self {
            convs,
            patch_size: arch.patch_size,
            channel_divisor: arch.channel_divisor,
        }
    }

    fn architecture(&self) -> Architecture {
        Architecture::new(self.patch_size, self.channel_divisor)
            .expect("PatchNet is only built from valid architectures")
    }

    /// Evaluates the network on `[batch, 3, H, W]` in `mode`.
    pub fn forward(&self, input: Tensor<4>, mode: Mode) -> Result<Tensor<4>, ArchError> {
        let plan = self.architecture().plan(mode)?;
        let mut x = input;
        let mut convs = self.convs.iter();
        for layer in plan {
            x = match layer {
                PlannedLayer::Conv {
                    dilation,
                    padding: [top, left, bottom, right],
                    activation,
                    ..
                } => {
                    let conv = convs.next().expect("one module per planned conv");
                    let options = ConvOptions::new_with_padding(
                        [1, 1],
                        [(top, bottom), (left, right)],
                        [dilation, dilation],
                        1,
                    );
                    let y = conv2d(
                        x,
                        conv.weight.val(),
                        conv.bias.as_ref().map(|b| b.val()),
                        options,
                    );
                    if activation {
                        leaky_relu(y, LEAKY_SLOPE as f64)
                    } else {
                        y
                    }
                }
                PlannedLayer::MaxPool { stride, dilation } => max_pool2d(
                    x,
                    MaxPoolOptions::new([2, 2])
                        .with_stride([stride, stride])
                        .with_dilation([dilation, dilation]),
                ),
            };
        }
        Ok(x)
    }

    /// Patch mode, flattened to `[batch, 128]` descriptors.
    pub fn descriptors(&self, patches: Tensor<4>) -> Tensor<2> {
        let out = self
            .forward(patches, Mode::Patch)
            .expect("patch mode is always valid");
        let [batch, channels, _, _] = out.dims();
        out.reshape([batch, channels])
    }

    /// Framework-free copy of the weights (for export and checkpoints).
    pub fn to_weights(&self) -> NetworkWeights {
        let convs = self
            .convs
            .iter()
            .map(|conv| {
                let [o, i, k, _] = conv.weight.val().dims();
                let weight = conv
                    .weight
                    .val()
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("f32 weights");
                let bias = conv
                    .bias
                    .as_ref()
                    .map(|b| b.val().into_data().try_into_vec::<f32>().expect("f32 bias"))
                    .unwrap_or_else(|| vec![0.0; o]);
                ConvWeights {
                    in_channels: i,
                    out_channels: o,
                    kernel: k,
                    weight,
                    bias,
                }
            })
            .collect();
        NetworkWeights {
            patch_size: self.patch_size,
            channel_divisor: self.channel_divisor,
            convs,
            metadata: Vec::new(),
        }
    }

    /// Builds a module from validated weights on `device`.
    pub fn from_weights(weights: &NetworkWeights, device: &Device) -> Result<Self, WeightsError> {
        let arch = weights.validate("weights")?;
        let mut net = Self::from_architecture(arch, device);
        for (conv, w) in net.convs.iter_mut().zip(&weights.convs) {
            let (o, i, k) = (w.out_channels, w.in_channels, w.kernel);
            conv.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(w.weight.clone(), [o, i, k, k]),
                device,
            ));
            conv.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(w.bias.clone(), [o]),
                device,
            )));
        }
        Ok(net)
    }
}

/// CHW values of a `[1, C, H, W]` tensor.
pub fn to_vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 tensor")
}
