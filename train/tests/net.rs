//! The burn networks: dense rewrite equals the patch network, and the exported ONNX run by
//! tract equals burn's forward pass.

use burn::tensor::{Device, Tensor, TensorData};
use tract_onnx::prelude::*;

use ustad_core::bundle::onnx::{GraphSpec, network_graph, save_model};
use ustad_core::networks::arch::{Architecture, Mode, PATCH_SIZES};
use ustad_core::networks::reference::FeatureMap;
use ustad_train::net::{PatchNet, to_vec};

fn tensor(map: &FeatureMap, device: &Device) -> Tensor<4> {
    Tensor::from_data(
        TensorData::new(map.data.clone(), [1, map.channels, map.height, map.width]),
        device,
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn dense_output_equals_the_patch_network_on_the_centred_patch() {
    let device = Device::flex();
    for (p, size) in [(17, 20), (33, 24), (65, 22)] {
        let net = PatchNet::new(p, &device).unwrap();
        let arch = Architecture::for_patch_size(p).unwrap();
        let image = FeatureMap::random(3, size, size + 2, p as u64);
        for stride in [1, *arch.supported_strides().last().unwrap()] {
            let map = net
                .forward(tensor(&image, &device), Mode::Image { stride })
                .unwrap();
            let [_, channels, mh, mw] = map.dims();
            let values = to_vec(map);
            let at = |y: usize, x: usize| -> Vec<f32> {
                (0..channels)
                    .map(|c| values[(c * mh + y) * mw + x])
                    .collect()
            };
            // Interior and all four borders/corners.
            for (i, j) in [
                (0, 0),
                (mh / 2, mw / 2),
                (mh - 1, mw - 1),
                (0, mw - 1),
                (mh - 1, 0),
                (mh / 2, 0),
            ] {
                let (cy, cx) = (i * stride, j * stride);
                let half = ((p - 1) / 2) as isize;
                let patch = image.window(cy as isize - half, cx as isize - half, p);
                let want = to_vec(net.forward(tensor(&patch, &device), Mode::Patch).unwrap());
                let diff = max_abs_diff(&at(i, j), &want);
                assert!(
                    diff < 1e-4,
                    "p = {p}, s = {stride}, ({i}, {j}): max diff {diff}"
                );
            }
        }
    }
}

#[test]
fn tract_on_the_export_equals_burn() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    for p in PATCH_SIZES {
        let net = PatchNet::new(p, &device).unwrap();
        let weights = net.to_weights();
        let arch = Architecture::for_patch_size(p).unwrap();
        let (height, width) = (24, 32);
        let image = FeatureMap::random(3, height, width, 7);
        for stride in [
            1,
            2.min(*arch.supported_strides().last().unwrap()),
            *arch.supported_strides().last().unwrap(),
        ] {
            let mode = Mode::Image { stride };
            let want = to_vec(net.forward(tensor(&image, &device), mode).unwrap());
            let spec = GraphSpec {
                height,
                width,
                mode,
                output_norm: None,
            };
            let path = dir.path().join(format!("p{p}-s{stride}.onnx"));
            save_model(&network_graph(&weights, &spec).unwrap(), &path).unwrap();
            let model = tract_onnx::onnx()
                .model_for_path(&path)
                .unwrap()
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap();
            let input =
                tract_onnx::prelude::Tensor::from_shape(&[1, 3, height, width], &image.data)
                    .unwrap();
            let out = model.run(tvec![input.into_tvalue()]).unwrap();
            let got = out[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec();
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff < 1e-4,
                "p = {p}, s = {stride}: tract vs burn max diff {diff}"
            );
        }
    }
}

#[test]
fn weights_round_trip_through_the_library_format() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let net = PatchNet::new(33, &device).unwrap();
    let path = dir.path().join("n.ustw");
    net.to_weights().save(&path).unwrap();
    let back = PatchNet::from_weights(
        &ustad_core::networks::weights::NetworkWeights::load(&path).unwrap(),
        &device,
    )
    .unwrap();
    let image = FeatureMap::random(3, 40, 40, 3);
    let a = to_vec(
        net.forward(tensor(&image, &device), Mode::Image { stride: 4 })
            .unwrap(),
    );
    let b = to_vec(
        back.forward(tensor(&image, &device), Mode::Image { stride: 4 })
            .unwrap(),
    );
    assert_eq!(a, b);
}

#[test]
fn separately_built_students_differ() {
    let device = Device::flex();
    let a = PatchNet::new(17, &device).unwrap().to_weights();
    let b = PatchNet::new(17, &device).unwrap().to_weights();
    assert_ne!(a.convs[0].weight, b.convs[0].weight);
}
