//! Strided (and narrow) depthwise convolutions, run channel-last.
//!
//! tract runs a channel-first (NCHW, as ONNX has it) depthwise convolution with a vector
//! kernel only at stride 1, along rows; a strided one falls to a scalar walk over each plane,
//! and a row of a few pixels leaves the vector kernel little to do. Channel-last,
//! one output position is a contiguous run of channels, which the compiler vectorises (and
//! aarch64 and wasm have a dedicated kernel for). On the EfficientNet-Lite0 teacher, the two
//! stride-2 depthwise layers at the largest maps took a fifth of the frame: this rewrite makes
//! each about 3× faster, and the whole network runs in about 0.75 of its time
//! (`examples/profile_network.rs`, single thread, x86). Wider stride-1 layers keep their
//! layout: on x86 the channel-first vector kernel beats the channel-last walk there.
//!
//! The rewrite is tract's own `conv_nhwc` restricted to those depthwise convolutions: the
//! input is moved channel-last, the convolution is lowered to tract's `DepthWise` in
//! `NHWC`, and the output is moved back; declutter then folds what moves it can.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Rows at most this wide are too short for the channel-first vector kernel (8 lanes, a tail
/// walked in scalar): on the teacher, moving the 8-wide layers too saved another 12 % of the
/// network, moving the 16-wide ones lost it again.
const NARROW_WIDTH: usize = 8;

/// Rewrites every float, channel-first (NCHW or CHW) depthwise convolution with a stride above 1
/// or an input at most [`NARROW_WIDTH`] wide.
pub fn to_channel_last(model: &mut TypedModel) -> TractResult<()> {
    Rewriter::<()>::default()
        .with_rule_for("strided-depthwise-channel-last", rule)
        .rewrite(&(), model)
}

fn rule(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &Conv,
) -> TractResult<Option<TypedModelPatch>> {
    let fact = model.outlet_fact(node.inputs[0])?;
    let depthwise = node.inputs.len() == 3
        && op.group != 1
        && op.group == op.input_channels()
        && op.group == op.output_channels()
        && fact.shape.as_concrete().is_some();
    let strided = op.pool_spec.strides().iter().any(|&s| s > 1);
    let narrow = fact
        .shape
        .as_concrete()
        .and_then(|shape| shape.last().copied())
        .is_some_and(|width| width <= NARROW_WIDTH);
    let channel_last = match op.pool_spec.data_format {
        DataFormat::NCHW => DataFormat::NHWC,
        // Declutter drops a batch of one.
        DataFormat::CHW => DataFormat::HWC,
        _ => return Ok(None),
    };
    if op.q_params.is_some() || !depthwise || !(strided || narrow) {
        return Ok(None);
    }
    let rank = fact.rank();
    let c_axis = op.pool_spec.data_format.shape(&fact.shape)?.c_axis();
    let mut patch = TypedModelPatch::default();
    let inputs = patch.taps(model, &node.inputs)?;
    let x = patch.wire_node(
        format!("{name}.channel_last_in"),
        AxisOp::Move(c_axis, rank - 1),
        &[inputs[0]],
    )?;
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format: channel_last,
            ..op.pool_spec.clone()
        },
        ..op.clone()
    };
    let mut wires = tvec!(x[0]);
    wires.extend_from_slice(&inputs[1..]);
    let y = conv.wire_as_depth_wise(&mut patch, name, &wires)?;
    let y = patch.wire_node(
        format!("{name}.channel_last_out"),
        AxisOp::Move(rank - 1, c_axis),
        &[y],
    )?;
    patch.shunt_outside(model, node.id.into(), y[0])?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networks::weights::SplitMix64;

    const SIDE: usize = 128;

    fn teacher() -> TypedModel {
        let path = crate::testing::repo_path("models/bundles/mtd-edge-teacher/p65-s8-teacher.onnx");
        tract_onnx::onnx()
            .model_for_path(&path)
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, SIDE, SIDE]).into()))
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .expect("the shipped edge-teacher graph")
    }

    /// Depthwise convolutions still channel-first and strided.
    fn strided_channel_first(model: &TypedModel) -> usize {
        model
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<Conv>())
            .filter(|c| c.group > 1 && !c.pool_spec.data_format.c_is_last())
            .filter(|c| c.pool_spec.strides().iter().any(|&s| s > 1))
            .count()
    }

    fn run(model: TypedModel, input: &Tensor) -> Vec<f32> {
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .expect("optimised");
        let out = plan.run(tvec!(input.clone().into())).expect("run");
        out[0]
            .to_plain_array_view::<f32>()
            .expect("f32")
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn the_teachers_strided_depthwise_layers_move_channel_last_and_compute_the_same() {
        let plain = teacher();
        let mut moved = plain.clone();
        to_channel_last(&mut moved).expect("rewrite");
        // c5, c11, c17 and c35 of EfficientNet-Lite0 are stride 2. (Where tract has a
        // channel-last depthwise kernel, aarch64 and wasm, its declutter may move some itself.)
        #[cfg(target_arch = "x86_64")]
        assert_eq!(strided_channel_first(&plain), 4);
        assert_eq!(strided_channel_first(&moved), 0);

        let mut rng = SplitMix64(3);
        let values: Vec<f32> = (0..3 * SIDE * SIDE)
            .map(|_| rng.next_f32() * 4.0 - 2.0)
            .collect();
        let input = Tensor::from_shape(&[1, 3, SIDE, SIDE], &values).expect("input");
        let (want, got) = (run(plain, &input), run(moved, &input));
        assert_eq!(want.len(), got.len());
        let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4 * spread, "max |Δ| {worst} of {spread}");
    }
}
