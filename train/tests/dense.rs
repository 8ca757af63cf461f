//! Dense teacher distillation with the real backbone on real photos, kept tiny.

mod common;

use std::path::PathBuf;

use common::tiny_corpus;
use ustad_core::testing::shared_path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tract_onnx::prelude::*;

use ustad_core::networks::weights::NetworkWeights;
use ustad_train::backbone::{BackboneConfig, FeatureBackbone};
use ustad_train::teacher::dense::{dense_crop, dense_distillation_loss};
use ustad_train::teacher::targets::{Grid, dense_target};
use ustad_train::teacher::{Distillation, TeacherOptions, train_teacher};

fn backbone_onnx() -> PathBuf {
    shared_path("models/efficientnet_lite0_imagenet.onnx")
}

fn backbone_config() -> BackboneConfig {
    BackboneConfig::load(&BackboneConfig::find(&backbone_onnx()).unwrap()).unwrap()
}

fn photos(count: usize) -> Vec<RgbImage> {
    let mut files = ustad_core::images::images_in(&shared_path("data/imagenet-sample")).unwrap();
    files.truncate(count);
    files
        .iter()
        .map(|f| image::open(f).unwrap().to_rgb8())
        .collect()
}

fn tiny_options(out: PathBuf, images: PathBuf, iterations: usize) -> TeacherOptions {
    TeacherOptions {
        distillation: Distillation::Dense,
        crop_size: 64,
        iterations,
        batch: 2,
        learning_rate: 1e-3,
        lambda_c: 0.01,
        validation_crops: 2,
        validation_every: 2,
        checkpoint_every: 2,
        probe_cells: 256,
        progress: false,
        ..TeacherOptions::paper(33, backbone_onnx(), images, out)
    }
}

/// One node's output for one image, computed by tract directly from the ONNX file.
fn node_output(node: &str, image: &RgbImage, config: &BackboneConfig) -> (Vec<usize>, Vec<f32>) {
    let (w, h) = image.dimensions();
    let mut model = tract_onnx::onnx().model_for_path(backbone_onnx()).unwrap();
    model.select_outputs_by_name([node]).unwrap();
    let plan = model
        .with_input_fact(0, f32::fact([1, 3, h as usize, w as usize]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let plane = (w * h) as usize;
    let mut input = vec![0.0f32; 3 * plane];
    for (p, px) in image.pixels().enumerate() {
        for c in 0..3 {
            input[c * plane + p] = (px[c] as f32 - config.mean[c]) / config.std[c];
        }
    }
    let tensor =
        tract_onnx::prelude::Tensor::from_shape(&[1, 3, h as usize, w as usize], &input).unwrap();
    let out = plan.run(tvec![tensor.into_tvalue()]).unwrap();
    let view = out[0].try_as_plain_ram().unwrap();
    (
        out[0].shape().to_vec(),
        view.as_slice::<f32>().unwrap().to_vec(),
    )
}

#[test]
fn feature_maps_equal_the_backbone_nodes_computed_directly() {
    let config = backbone_config();
    let nodes = config.dense.clone().expect("sidecar has [dense]").nodes;
    let mut rng = StdRng::seed_from_u64(3);
    let crops: Vec<RgbImage> = photos(3)
        .iter()
        .map(|p| dense_crop(p, 64, 0.0, &mut rng))
        .collect();
    // Batch 2 over 3 crops: the last batch is padded, and must not leak into the results.
    let backbone = FeatureBackbone::load(&backbone_onnx(), config.clone(), &nodes, 2, 64).unwrap();
    let maps = backbone.maps(&crops).unwrap();
    assert_eq!(maps.len(), 3);
    for (crop, maps) in crops.iter().zip(&maps) {
        for (node, map) in nodes.iter().zip(maps) {
            let (shape, direct) = node_output(node, crop, &config);
            assert_eq!(
                shape,
                vec![1, map.channels, map.height, map.width],
                "{node}"
            );
            let worst = direct
                .iter()
                .zip(&map.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{node}: max |Δ| = {worst}");
        }
    }
}

#[test]
fn dense_target_equals_a_per_cell_recomputation() {
    let config = backbone_config();
    let dense = config.dense.clone().unwrap();
    let crop = dense_crop(&photos(1)[0], 64, 0.0, &mut StdRng::seed_from_u64(5));
    let backbone = FeatureBackbone::load(&backbone_onnx(), config, &dense.nodes, 1, 64).unwrap();
    let maps = backbone
        .maps(std::slice::from_ref(&crop))
        .unwrap()
        .remove(0);
    let grid = Grid {
        input: 64,
        stride: 4,
        height: 16,
        width: 16,
    };
    let target = dense_target(&maps, 3, &grid);
    let channels: usize = maps.iter().map(|m| m.channels).sum();
    assert_eq!(target.len(), channels * 16 * 16);
    // Reference: for each cell, the node cell its centre falls on (bilinear between the
    // neighbours), each neighbour the mean of its clipped 3×3 window.
    let mut offset = 0;
    for map in &maps {
        let stride = 64.0 / map.height as f32;
        let window = |c: usize, y: isize, x: isize| {
            let (mut s, mut n) = (0.0f32, 0.0f32);
            for yy in (y - 1).max(0)..=(y + 1).min(map.height as isize - 1) {
                for xx in (x - 1).max(0)..=(x + 1).min(map.width as isize - 1) {
                    s += map.values[(c * map.height + yy as usize) * map.width + xx as usize];
                    n += 1.0;
                }
            }
            s / n
        };
        for c in 0..map.channels {
            for i in 0..16 {
                for j in 0..16 {
                    let coord = |k: usize, len: usize| {
                        ((k as f32 * 4.0 - (stride - 1.0) / 2.0) / stride)
                            .clamp(0.0, (len - 1) as f32)
                    };
                    let (u, v) = (coord(i, map.height), coord(j, map.width));
                    let (y0, x0) = (u.floor() as isize, v.floor() as isize);
                    let y1 = (y0 + 1).min(map.height as isize - 1);
                    let x1 = (x0 + 1).min(map.width as isize - 1);
                    let (fy, fx) = (u - y0 as f32, v - x0 as f32);
                    let expected = (window(c, y0, x0) * (1.0 - fx) + window(c, y0, x1) * fx)
                        * (1.0 - fy)
                        + (window(c, y1, x0) * (1.0 - fx) + window(c, y1, x1) * fx) * fy;
                    let got = target[((offset + c) * 16 + i) * 16 + j];
                    assert!(
                        (got - expected).abs() < 1e-4,
                        "c {c} cell ({i}, {j}): {got} vs {expected}"
                    );
                }
            }
        }
        offset += map.channels;
    }
}

#[test]
fn dense_loss_equals_a_per_cell_recomputation() {
    let device = Device::flex();
    let (n, c, h, w) = (2, 5, 3, 4);
    let len = n * c * h * w;
    let a: Vec<f32> = (0..len)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let b: Vec<f32> = (0..len)
        .map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0)
        .collect();
    let ta: Tensor<4> = Tensor::from_data(TensorData::new(a.clone(), [n, c, h, w]), &device);
    let tb: Tensor<4> = Tensor::from_data(TensorData::new(b.clone(), [n, c, h, w]), &device);
    let loss: f32 = dense_distillation_loss(ta, tb)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()[0];
    let mut total = 0.0f64;
    for img in 0..n {
        for y in 0..h {
            for x in 0..w {
                let cell: f64 = (0..c)
                    .map(|ch| {
                        let i = ((img * c + ch) * h + y) * w + x;
                        (a[i] as f64 - b[i] as f64).powi(2)
                    })
                    .sum();
                total += cell;
            }
        }
    }
    let expected = total / (n * h * w) as f64;
    assert!(
        (loss as f64 - expected).abs() < 1e-5,
        "{loss} vs {expected}"
    );
}

#[test]
fn a_resumed_dense_run_equals_a_straight_one() {
    let dir = tempfile::tempdir().unwrap();
    let images = tiny_corpus(dir.path(), 6);
    let device =
        ustad_train::device::training_device(ustad_train::device::DeviceKind::Cpu).unwrap();

    let straight = dir.path().join("straight/p33.ustw");
    let report =
        train_teacher(&tiny_options(straight.clone(), images.clone(), 4), &device).unwrap();
    assert_eq!(report.distillation, Distillation::Dense);
    let dense = report.dense.as_ref().unwrap();
    assert_eq!((dense.stride, dense.grid), (4, [16, 16]));
    assert_eq!(dense.target_channels, 40 + 112);
    assert!(report.final_validation_k.is_finite() && report.fitted_validation_k.is_finite());

    let resumed = dir.path().join("resumed/p33.ustw");
    train_teacher(&tiny_options(resumed.clone(), images.clone(), 2), &device).unwrap();
    let options = TeacherOptions {
        resume: true,
        ..tiny_options(resumed.clone(), images, 4)
    };
    train_teacher(&options, &device).unwrap();

    let a = NetworkWeights::load(&straight).unwrap();
    let b = NetworkWeights::load(&resumed).unwrap();
    for (i, (ca, cb)) in a.convs.iter().zip(&b.convs).enumerate() {
        let worst = ca
            .weight
            .iter()
            .zip(&cb.weight)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "conv {i}: max |Δ| = {worst}");
    }
    let curve = std::fs::read_to_string(resumed.with_extension("loss.csv")).unwrap();
    assert_eq!(curve.lines().count(), 1 + 4, "header + one row per step");
    assert!(resumed.with_extension("loss.png").is_file());
}

#[test]
fn a_corrupt_backbone_or_an_empty_corpus_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let device =
        ustad_train::device::training_device(ustad_train::device::DeviceKind::Cpu).unwrap();
    let images = tiny_corpus(dir.path(), 2);

    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"not a protobuf at all").unwrap();
    std::fs::copy(
        BackboneConfig::find(&backbone_onnx()).unwrap(),
        corrupt.with_extension("toml"),
    )
    .unwrap();
    let options = TeacherOptions {
        backbone: corrupt.clone(),
        ..tiny_options(dir.path().join("t.ustw"), images.clone(), 1)
    };
    let error = format!("{:#}", train_teacher(&options, &device).unwrap_err());
    assert!(error.contains(&corrupt.display().to_string()), "{error}");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let options = tiny_options(dir.path().join("t.ustw"), empty.clone(), 1);
    let error = format!("{:#}", train_teacher(&options, &device).unwrap_err());
    assert!(error.contains(&empty.display().to_string()), "{error}");
}
