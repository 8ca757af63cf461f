//! The scoring engine against a straightforward reference computation: exported graphs run by
//! tract must equal the direct-loop network, teacher normalisation must be folded correctly,
//! and the fused map and image score must follow the formulas of the paper.

use ustad_core::testing as common;

use ustad_core::bundle::onnx::{ChannelNorm, GraphSpec, network_graph, save_model};
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::decide::ImageScoreRule;
use ustad_core::judge::preprocess;
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::networks::arch::{DESCRIPTOR_DIM, Mode};
use ustad_core::networks::reference::{self, FeatureMap};
use ustad_core::networks::weights::NetworkWeights;

use tract_onnx::prelude::*;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn run_tract(path: &std::path::Path, input: &FeatureMap) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor =
        Tensor::from_shape(&[1, input.channels, input.height, input.width], &input.data).unwrap();
    let out = model.run(tvec![tensor.into_tvalue()]).unwrap();
    out[0]
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

/// tract on the exported file equals the reference, for every p, at the densest and sparsest
/// strides, with and without the folded teacher normalisation.
#[test]
fn exported_graphs_match_the_reference_network() {
    let dir = tempfile::tempdir().unwrap();
    for (p, height, width) in [(17, 16, 19), (33, 20, 16), (65, 16, 24)] {
        let weights = NetworkWeights::random(p, p as u64 + 1000).unwrap();
        let arch = weights.architecture().unwrap();
        let input = FeatureMap::random(3, height, width, p as u64);
        let strides = arch.supported_strides();
        for &stride in [strides[0], *strides.last().unwrap()]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
        {
            let mode = Mode::Image { stride };
            let want = reference::forward(&weights, mode, &input).unwrap();
            for folded in [false, true] {
                let norm = ChannelNorm {
                    mean: (0..DESCRIPTOR_DIM).map(|c| c as f32 * 0.01 - 0.5).collect(),
                    std: (0..DESCRIPTOR_DIM)
                        .map(|c| 0.25 + c as f32 * 0.02)
                        .collect(),
                };
                let spec = GraphSpec {
                    height,
                    width,
                    mode,
                    output_norm: folded.then(|| norm.clone()),
                };
                let path = dir.path().join(format!("p{p}-s{stride}-{folded}.onnx"));
                save_model(&network_graph(&weights, &spec).unwrap(), &path).unwrap();
                let got = run_tract(&path, &input);
                let pixels = want.height * want.width;
                let expected: Vec<f32> = if folded {
                    want.data
                        .iter()
                        .enumerate()
                        .map(|(i, y)| (y - norm.mean[i / pixels]) / norm.std[i / pixels])
                        .collect()
                } else {
                    want.data.clone()
                };
                let diff = max_abs_diff(&got, &expected);
                assert!(
                    diff < 1e-4,
                    "p = {p}, s = {stride}, folded = {folded}: max diff {diff}"
                );
            }
        }
    }
}

/// The engine's fused map and image score follow e, v, calibration, upsampling and averaging
/// as defined, recomputed here one descriptor at a time from the reference networks.
#[test]
fn engine_scores_follow_the_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let (width, height) = (24, 20);
    let input_spec = InputSpec::imagenet(width, height);
    let scales = vec![
        common::random_scale(17, 1, 3, 1),
        common::random_scale(33, 4, 3, 2),
    ];
    // No smoothing and a one-pixel top fraction: the image score is the map's maximum.
    let rule = ImageScoreRule {
        smoothing_sigma: 0.0,
        top_fraction: 1e-6,
        border: 0,
    };
    let bundle = common::write_random_bundle(dir.path(), input_spec.clone(), &scales, rule, 0.5);
    let mut engine = Engine::load(bundle, EngineOptions::default()).unwrap();

    let image = common::test_image(37, 29);
    let input_values = preprocess::to_input(&image, &input_spec);
    let input = FeatureMap {
        channels: 3,
        height,
        width,
        data: input_values,
    };
    let analysis = engine.analyze(&image).unwrap();
    let (map, score) = (analysis.map.to_vec(), analysis.score);

    let mut fused = vec![0.0f32; width * height];
    for scale in &scales {
        let mode = Mode::Image {
            stride: scale.stride,
        };
        let t = reference::forward(&scale.teacher, mode, &input).unwrap();
        let students: Vec<FeatureMap> = scale
            .students
            .iter()
            .map(|s| reference::forward(s, mode, &input).unwrap())
            .collect();
        let (mh, mw) = (t.height, t.width);
        let mut scale_map = vec![0.0f32; mh * mw];
        for y in 0..mh {
            for x in 0..mw {
                let target: Vec<f32> = t
                    .descriptor(y, x)
                    .iter()
                    .enumerate()
                    .map(|(c, v)| (v - scale.norm.mean[c]) / scale.norm.std[c])
                    .collect();
                let preds: Vec<Vec<f32>> = students.iter().map(|s| s.descriptor(y, x)).collect();
                let m = preds.len() as f32;
                let mean: Vec<f32> = (0..DESCRIPTOR_DIM)
                    .map(|c| preds.iter().map(|p| p[c]).sum::<f32>() / m)
                    .collect();
                let e: f32 = mean.iter().zip(&target).map(|(a, b)| (a - b).powi(2)).sum();
                let v = preds
                    .iter()
                    .map(|p| p.iter().map(|a| a * a).sum::<f32>())
                    .sum::<f32>()
                    / m
                    - mean.iter().map(|a| a * a).sum::<f32>();
                let c = &scale.calibration;
                scale_map[y * mw + x] = (e - c.error_mean) / c.error_std
                    + c.variance_weight * (v - c.variance_mean) / c.variance_std;
            }
        }
        // Bilinear between samples at multiples of the stride, clamped past the last one.
        let s = scale.stride as f32;
        for y in 0..height {
            for x in 0..width {
                let (fy, fx) = (y as f32 / s, x as f32 / s);
                let (y0, x0) = ((fy as usize).min(mh - 1), (fx as usize).min(mw - 1));
                let (y1, x1) = ((y0 + 1).min(mh - 1), (x0 + 1).min(mw - 1));
                let (ty, tx) = ((fy - y0 as f32).min(1.0), (fx - x0 as f32).min(1.0));
                let at = |yy: usize, xx: usize| scale_map[yy * mw + xx];
                let top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx;
                let bottom = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx;
                fused[y * width + x] += (top * (1.0 - ty) + bottom * ty) / scales.len() as f32;
            }
        }
    }
    let scale_of_values = fused.iter().map(|v| v.abs()).fold(1.0, f32::max);
    let diff = max_abs_diff(&map, &fused);
    assert!(
        diff < 1e-3 * scale_of_values,
        "fused map differs by {diff} (values up to {scale_of_values})"
    );
    let want_score = fused.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    assert!(
        (score - want_score).abs() < 1e-3 * scale_of_values,
        "score {score} vs {want_score}"
    );

    // The raw maps are exposed for calibration, and a second frame reuses the buffers.
    assert_eq!(engine.scale_maps().len(), 2);
    let again = engine.analyze(&image).unwrap();
    assert_eq!(again.map, map.as_slice());
}

/// Students initialised identically have zero variance and, at the teacher's weights, zero
/// error: the calibrated score is then exactly -(e_μ/e_σ + v_μ/v_σ) everywhere.
#[test]
fn students_equal_to_the_teacher_score_the_calibration_floor() {
    let dir = tempfile::tempdir().unwrap();
    let mut scale = common::random_scale(17, 1, 2, 9);
    scale.norm = ChannelNorm {
        mean: vec![0.0; DESCRIPTOR_DIM],
        std: vec![1.0; DESCRIPTOR_DIM],
    };
    scale.students = vec![scale.teacher.clone(), scale.teacher.clone()];
    let c = scale.calibration;
    let bundle = common::write_random_bundle(
        dir.path(),
        InputSpec::imagenet(16, 16),
        &[scale],
        ImageScoreRule::default(),
        0.0,
    );
    let mut engine = Engine::load(bundle, EngineOptions::default()).unwrap();
    let analysis = engine.analyze(&common::test_image(16, 16)).unwrap();
    let floor =
        -(c.error_mean / c.error_std + c.variance_weight * c.variance_mean / c.variance_std);
    for v in analysis.map {
        assert!((v - floor).abs() < 1e-3, "{v} vs {floor}");
    }
}

#[test]
fn f16_precision_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let scales = vec![common::random_scale(33, 2, 3, 4)];
    let bundle = common::write_random_bundle(
        dir.path(),
        InputSpec::imagenet(24, 24),
        &scales,
        ImageScoreRule::default(),
        0.5,
    );
    let image = common::test_image(24, 24);
    let mut f32_engine = Engine::load(bundle.clone(), EngineOptions::default()).unwrap();
    let want = f32_engine.analyze(&image).unwrap().map.to_vec();
    let options = EngineOptions {
        precision: ustad_core::bundle::Precision::F16,
        threads: 1,
    };
    let mut f16_engine = Engine::load(bundle, options).unwrap();
    let got = f16_engine.analyze(&image).unwrap().map.to_vec();
    let spread = want.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - want.iter().cloned().fold(f32::INFINITY, f32::min);
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff < 0.05 * spread.max(1.0),
        "f16 map differs by {diff} (spread {spread})"
    );
}

#[test]
fn the_engine_resizes_a_frame_once_and_returns_what_it_judged() {
    let bundle =
        ustad_core::bundle::Bundle::load(&common::repo_path("models/bundles/mtd-edge-fast"))
            .expect("shipped bundle");
    let spec = bundle.manifest.input.clone();
    let tile = common::shared_path("data/mtd/test/good/exp0_num_743.jpg");
    let image = image::open(&tile).expect("MTD tile");
    assert_ne!(
        (image.width() as usize, image.height() as usize),
        (spec.width, spec.height),
        "the tile must need resizing for this test to mean anything"
    );
    let mut engine = Engine::load(bundle, EngineOptions::default()).expect("engine");
    let analysis = engine.analyze(&image).expect("judged");
    // The overlay's picture is the network's input, not a second resize of the frame.
    assert_eq!(*analysis.input, preprocess::resize_rgb(&image, &spec));
    assert_eq!(
        (
            analysis.input.width() as usize,
            analysis.input.height() as usize
        ),
        (spec.width, spec.height)
    );
    assert_eq!(
        **engine.judged_image(),
        preprocess::resize_rgb(&image, &spec)
    );
    let input = preprocess::to_input(&image, &spec);
    let again = engine.analyze_input(&input).expect("judged input");
    assert!(
        again.input.is_empty(),
        "no frame stands behind a normalised input"
    );
}

#[test]
fn a_lone_teacher_judges_alike_on_one_thread_and_on_two() {
    let bundle =
        ustad_core::bundle::Bundle::load(&common::repo_path("models/bundles/mtd-edge-teacher"))
            .expect("shipped bundle");
    assert!(bundle.manifest.scales[0].students.is_empty());
    let tile = common::shared_path("data/mtd/test/blowhole/exp1_num_108719.jpg");
    let image = image::open(&tile).expect("MTD tile");
    let judge = |threads: usize| {
        let options = EngineOptions {
            threads,
            ..EngineOptions::default()
        };
        let mut engine = Engine::load(bundle.clone(), options).expect("engine");
        let analysis = engine.analyze(&image).expect("judged");
        (analysis.score, analysis.map.to_vec())
    };
    // One network and two threads: the second works inside the network's kernels.
    let (one_score, one_map) = judge(1);
    let (two_score, two_map) = judge(2);
    assert!(one_score.is_finite() && one_score > 0.0, "{one_score}");
    let spread = one_map.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - one_map.iter().cloned().fold(f32::INFINITY, f32::min);
    let diff = max_abs_diff(&one_map, &two_map);
    assert!(diff <= 1e-4 * spread.max(1.0), "maps differ by {diff}");
    assert!((one_score - two_score).abs() <= 1e-4 * one_score.abs().max(1.0));
}

/// Tool, not a check: writes the random-weight bundles that `ustad bench` times for the
/// foundation's speed numbers (one p = 65 scale, teacher + 3 students, 256×256, stride 1 and 8):
/// `USTAD_BENCH_BUNDLES=/tmp/bench cargo test --test engine -- --ignored write_speed_bundles`
/// then `ustad bench --bundle /tmp/bench/p65-s1 --runs 3 --warmup 1`.
#[test]
#[ignore = "tool: writes bundles for `ustad bench`"]
fn write_speed_bundles() {
    let Some(root) = std::env::var_os("USTAD_BENCH_BUNDLES") else {
        panic!("set USTAD_BENCH_BUNDLES to the output folder");
    };
    let root = std::path::PathBuf::from(root);
    for stride in [1, 8] {
        let scales = vec![common::random_scale(65, stride, 3, 7)];
        let dir = root.join(format!("p65-s{stride}"));
        common::write_random_bundle(
            &dir,
            InputSpec::imagenet(256, 256),
            &scales,
            ImageScoreRule::default(),
            0.5,
        );
    }
}
