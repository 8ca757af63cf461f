//! The backbone-feature teacher: its ONNX graph against the distillation targets computed
//! directly, its fit end to end, and its errors.

mod common;

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};
use tract_onnx::prelude::*;
use ustad_core::testing::shared_path;

use ustad_core::bundle::Bundle;
use ustad_core::bundle::onnx::{FeatureTap, FeatureTeacher, FeatureTeacherError, save_model};
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::networks::arch::{Architecture, DESCRIPTOR_DIM, Mode};
use ustad_train::backbone::{BackboneConfig, FeatureBackbone};
use ustad_train::teacher::targets::{Grid, dense_target};

fn backbone_onnx() -> PathBuf {
    shared_path("models/efficientnet_lite0_imagenet.onnx")
}

fn tap() -> FeatureTap {
    let config = BackboneConfig::load(&BackboneConfig::find(&backbone_onnx()).unwrap()).unwrap();
    let dense = config.dense.unwrap();
    FeatureTap {
        input: config.input,
        mean: config.mean,
        std: config.std,
        nodes: dense.nodes,
        neighbourhood: dense.neighbourhood,
    }
}

fn mtd_tile(side: u32) -> RgbImage {
    let files = ustad_core::images::images_in(&shared_path("data/mtd/train/good")).unwrap();
    let image = image::open(&files[0]).unwrap().to_rgb8();
    image::imageops::resize(&image, side, side, image::imageops::FilterType::Triangle)
}

fn run(path: &Path, input: &[f32], side: usize) -> Vec<f32> {
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor = tract_onnx::prelude::Tensor::from_shape(&[1, 3, side, side], input).unwrap();
    let out = plan.run(tvec![tensor.into_tvalue()]).unwrap();
    out[0]
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

#[test]
fn the_teacher_graph_equals_the_dense_targets_computed_directly() {
    let side = 128;
    let tile = mtd_tile(side as u32);
    let tap = tap();
    let (mh, mw) = Architecture::for_patch_size(33)
        .unwrap()
        .output_size(Mode::Image { stride: 4 }, side, side)
        .unwrap();

    // Direct: the backbone's node maps, averaged and resampled by the distillation code.
    let config = BackboneConfig::load(&BackboneConfig::find(&backbone_onnx()).unwrap()).unwrap();
    let backbone = FeatureBackbone::load(&backbone_onnx(), config, &tap.nodes, 1, side).unwrap();
    let maps = backbone.maps(std::slice::from_ref(&tile)).unwrap();
    let grid = Grid {
        input: side,
        stride: 4,
        height: mh,
        width: mw,
    };
    let direct = dense_target(&maps[0], tap.neighbourhood, &grid);

    // The exported graph on the bundle's (ImageNet-normalised) pixels.
    let teacher = FeatureTeacher::load(&backbone_onnx(), tap, side, side).unwrap();
    assert_eq!(teacher.channels(), 152, "res4 (40) + res10 (112)");
    let spec = InputSpec::imagenet(side, side);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("teacher.onnx");
    save_model(&teacher.graph(&spec, 4, (mh, mw), None).unwrap(), &path).unwrap();
    let input = ustad_core::judge::preprocess::to_input(&DynamicImage::ImageRgb8(tile), &spec);
    let graph = run(&path, &input, side);

    assert_eq!(graph.len(), direct.len());
    let spread = direct.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = graph
        .iter()
        .zip(&direct)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(spread > 0.1, "the features are not trivially zero");
    assert!(
        worst < 1e-3 * spread,
        "graph vs direct: worst {worst}, spread {spread}"
    );
}

#[test]
fn a_missing_node_or_a_corrupt_backbone_names_the_problem() {
    let mut bad_tap = tap();
    bad_tap.nodes = vec!["res4".into(), "no_such_node".into()];
    match FeatureTeacher::load(&backbone_onnx(), bad_tap, 64, 64) {
        Err(FeatureTeacherError::MissingNode { node, .. }) => assert_eq!(node, "no_such_node"),
        other => panic!("expected a missing-node error, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("backbone.onnx");
    std::fs::write(&corrupt, b"\x08\x07 definitely not a model").unwrap();
    let err = FeatureTeacher::load(&corrupt, tap(), 64, 64).unwrap_err();
    assert!(err.to_string().contains("backbone.onnx"), "{err}");
    let err = FeatureTeacher::load(&dir.path().join("absent.onnx"), tap(), 64, 64).unwrap_err();
    assert!(err.to_string().contains("absent.onnx"), "{err}");
}

/// Fits `scale` (a preset's `scales` entry) as a tiny backbone-teacher preset on 8 MTD tiles,
/// returning the fit's options (the bundle is in `options.out`), its report and the tiles.
fn tiny_backbone_fit(
    dir: &Path,
    students: usize,
    scale: &str,
) -> (
    ustad_train::fit::FitOptions,
    ustad_train::fit::FitReport,
    Vec<PathBuf>,
) {
    use burn::tensor::Device;
    use ustad_train::fit::{FitOptions, Preset, TeacherKind, fit};

    let good = dir.join("data/train/good");
    std::fs::create_dir_all(&good).unwrap();
    let mut files = ustad_core::images::images_in(&shared_path("data/mtd/train/good")).unwrap();
    files.truncate(8);
    for f in &files {
        std::fs::copy(f, good.join(f.file_name().unwrap())).unwrap();
    }
    let preset_path = dir.join("tiny.toml");
    std::fs::write(
        &preset_path,
        format!(
            r#"
name = "tiny-backbone"
description = "test preset"
width = 64
height = 64
students = {students}
epochs = 1
batch = 4
learning_rate = 1e-4
variance_weight = 0.0
whiten_residual = true
whitening_images = 1
scales = [{scale}]
[image_score]
smoothing_sigma = 1.0
top_fraction = 0.01
"#
        ),
    )
    .unwrap();
    let preset = Preset::load(preset_path.to_str().unwrap()).unwrap();
    assert_eq!(preset.scales[0].teacher, TeacherKind::Backbone);
    let options = FitOptions {
        data: dir.join("data"),
        out: dir.join("bundle"),
        preset,
        teachers: dir.join("no-teachers-needed"),
        backbone: backbone_onnx(),
        backbone_config: None,
        validation_fraction: 0.3,
        target_false_reject_rate: 0.1,
        margin: 0.1,
        weight_decay: 1e-5,
        symmetric: false,
        // 8 images: 3 validate, 3 fit, and of the 2 left over `whitening_images` keeps one to
        // measure the whitening.
        max_fit_images: 3,
        seed: 1,
        resume: false,
        progress: false,
        precision: ustad_train::fit::ExportPrecision::Both,
    };
    let report = fit(&options, &Device::flex().autodiff()).unwrap();
    (options, report, files)
}

#[test]
fn a_bundle_with_a_feature_teacher_loads_and_scores() {
    use ustad_core::engine::{Engine, EngineOptions};

    let dir = tempfile::tempdir().unwrap();
    let (options, report, files) = tiny_backbone_fit(
        dir.path(),
        2,
        r#"{ patch_size = 33, stride = 4, teacher = "backbone", student_channel_divisor = 2 }"#,
    );
    assert!(
        report.parity_max_abs < 1e-3,
        "burn vs tract student parity {}",
        report.parity_max_abs
    );
    let bundle = Bundle::load(&options.out).unwrap();
    let scale = &bundle.manifest.scales[0];
    // Half-width students: recorded in the manifest and what the exported graphs hold (the
    // parity above compared them with burn's).
    assert_eq!(scale.student_channel_divisor, 2);
    let costs = ustad_core::bundle::cost::scale_costs(&bundle).unwrap();
    assert!(
        costs[0].layers[0].layer.contains("3->64"),
        "{:?}",
        costs[0].layers
    );
    let mode = Mode::Image { stride: 4 };
    let narrow = scale
        .student_architecture()
        .unwrap()
        .macs(mode, 64, 64)
        .unwrap();
    let full = Architecture::for_patch_size(33)
        .unwrap()
        .macs(mode, 64, 64)
        .unwrap();
    assert!(narrow * 3 < full, "{narrow} vs {full}");
    let graphs = ustad_core::bundle::cost::network_macs(&bundle).unwrap();
    assert_eq!(
        &graphs[1..],
        &[narrow, narrow],
        "students' graphs: {graphs:?}"
    );
    // The int8 students share the f32 feature teacher.
    assert_eq!(scale.int8.as_ref().unwrap().teacher, scale.teacher);
    let teachers = bundle.manifest.provenance.extra["teachers"].to_string();
    assert!(
        teachers.contains("res4+res10 ") && teachers.contains("leading components"),
        "{teachers}"
    );
    // Whitened: the parity above ran the whitened students; the teacher statistics are folded.
    let whitening = bundle.manifest.provenance.extra["residual_whitening"].to_string();
    assert!(whitening.contains("on 1 held-out images"), "{whitening}");
    assert!(scale.teacher_mean.iter().all(|m| *m == 0.0));
    assert!(scale.teacher_std.iter().all(|s| *s == 1.0));
    assert_eq!(scale.calibration.variance_weight, 0.0);
    let mut engine = Engine::load(bundle, EngineOptions::default()).unwrap();
    let image = image::open(&files[0]).unwrap();
    let score = engine.analyze(&image).unwrap().score;
    assert!(score.is_finite());
}

/// A p = 33 scale of the backbone's deep taps, their trailing components (as `edge`'s).
const DEEP_TRAILING: &str = r#"{ patch_size = 33, stride = 4, teacher = "backbone", student_channel_divisor = 2, teacher_nodes = ["res4", "res10", "res12"], teacher_components = "trailing" }"#;

/// The score of the image in `file`, which must be a number.
fn finite_score(engine: &mut ustad_core::engine::Engine, file: &Path) -> f32 {
    let score = engine.analyze(&image::open(file).unwrap()).unwrap().score;
    assert!(score.is_finite(), "{}: {score}", file.display());
    score
}

#[test]
fn a_preset_scale_picks_the_backbone_taps_and_the_trailing_components() {
    use ustad_core::engine::{Engine, EngineOptions};

    let dir = tempfile::tempdir().unwrap();
    let (options, report, files) = tiny_backbone_fit(dir.path(), 2, DEEP_TRAILING);
    assert!(report.parity_max_abs < 1e-3, "{}", report.parity_max_abs);
    let bundle = Bundle::load(&options.out).unwrap();
    // The preset's taps, not the sidecar's two: 40 + 112 + 192 channels into the projection.
    let teachers = bundle.manifest.provenance.extra["teachers"].to_string();
    assert!(
        teachers.contains("res4+res10+res12")
            && teachers.contains("PCA 344 -> 128")
            && teachers.contains("trailing components"),
        "{teachers}"
    );
    let mut engine = Engine::load(bundle, EngineOptions::default()).unwrap();
    finite_score(&mut engine, &files[0]);
    // An unknown choice of components is refused, naming the file and the value.
    let text = std::fs::read_to_string(dir.path().join("tiny.toml")).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("\"trailing\"", "\"middle\"")).unwrap();
    let err = format!(
        "{:#}",
        ustad_train::fit::Preset::load(bad.to_str().unwrap()).unwrap_err()
    );
    assert!(err.contains("bad.toml") && err.contains("middle"), "{err}");
}

#[test]
fn without_students_the_bundle_scores_the_whitened_teacher_alone() {
    use ustad_core::bundle::Precision;
    use ustad_core::engine::{Engine, EngineOptions};

    let dir = tempfile::tempdir().unwrap();
    let (options, report, files) = tiny_backbone_fit(dir.path(), 0, DEEP_TRAILING);
    assert!(report.final_student_losses.iter().all(|l| l.is_empty()));
    let bundle = Bundle::load(&options.out).unwrap();
    let scale = &bundle.manifest.scales[0];
    assert!(scale.students.is_empty(), "{:?}", scale.students);
    // Asked for int8 too, but the backbone alone has no int8 graph: none is written.
    assert!(scale.int8.is_none());
    let int8 = Engine::load(
        bundle.clone(),
        EngineOptions {
            precision: Precision::Int8,
            ..EngineOptions::default()
        },
    );
    assert!(int8.is_err());
    let mut engine = Engine::load(bundle, EngineOptions::default()).unwrap();
    finite_score(&mut engine, &files[0]);
    // The error is the whitened teacher's squared norm, cell by cell.
    let teacher = engine.network_outputs()[0].1.to_vec();
    let maps = engine.scale_maps();
    let cells = maps[0].error.len();
    assert_eq!(teacher.len(), DESCRIPTOR_DIM * cells);
    for (cell, &error) in maps[0].error.iter().enumerate() {
        let norm: f32 = (0..DESCRIPTOR_DIM)
            .map(|c| teacher[c * cells + cell].powi(2))
            .sum();
        assert!(
            (error - norm).abs() <= 1e-4 * norm.max(1.0),
            "cell {cell}: {error} vs {norm}"
        );
        assert_eq!(maps[0].variance[cell], 0.0);
    }
}

/// `DEEP_TRAILING` seen as a 32² view of the 64² input, feeding the image score only.
const DEEP_TRAILING_REDUCED_SCORE: &str = r#"{ patch_size = 33, stride = 4, teacher = "backbone", teacher_nodes = ["res4", "res10", "res12"], teacher_components = "trailing", reduction = 2, role = "score" }"#;
/// A second 32² view, at stride 2, also feeding the score: `edge-map` judges on
/// two views. (A 16² view of this 64² input left the whitening a residual of no energy.)
const SECOND_REDUCED_SCORE: &str = r#"{ patch_size = 33, stride = 2, teacher = "backbone", teacher_nodes = ["res4", "res10", "res12"], teacher_components = "trailing", reduction = 2, role = "score" }"#;
/// `DEEP_TRAILING` at the full input, feeding the anomaly map only.
const DEEP_TRAILING_MAP: &str = r#"{ patch_size = 33, stride = 4, teacher = "backbone", teacher_nodes = ["res4", "res10", "res12"], teacher_components = "trailing", role = "map" }"#;

/// A scale's calibrated map upsampled to the input, as the engine fuses it.
fn calibrated_map(
    engine: &ustad_core::engine::Engine,
    index: usize,
    (height, width): (usize, usize),
) -> Vec<f32> {
    let spec = &engine.bundle().manifest.scales[index];
    let maps = engine.scale_maps();
    let m = &maps[index];
    let score: Vec<f32> = m
        .error
        .iter()
        .zip(m.variance)
        .map(|(&e, &v)| spec.calibration.normalise(e, v))
        .collect();
    let mut out = vec![0.0; height * width];
    ustad_core::judge::score::upsample_accumulate(
        &score,
        (m.height, m.width),
        spec.map_stride(),
        1.0,
        &mut out,
        (height, width),
    );
    out
}

#[test]
fn two_reduced_views_judge_the_part_and_the_full_view_maps_it() {
    use ustad_core::engine::{Engine, EngineError, EngineOptions};
    use ustad_core::judge::decide::ImageScorer;
    use ustad_core::judge::score::ScaleRole;

    let dir = tempfile::tempdir().unwrap();
    let scales =
        format!("{DEEP_TRAILING_REDUCED_SCORE}, {DEEP_TRAILING_MAP}, {SECOND_REDUCED_SCORE}");
    let (options, _, files) = tiny_backbone_fit(dir.path(), 0, &scales);
    let bundle = Bundle::load(&options.out).unwrap();
    let [coarse, fine, second] = &bundle.manifest.scales[..] else {
        panic!("three scales expected");
    };
    assert_eq!((coarse.reduction, coarse.role), (2, ScaleRole::Score));
    assert_eq!((fine.reduction, fine.role), (1, ScaleRole::Map));
    assert_eq!((second.reduction, second.role), (2, ScaleRole::Score));
    assert_eq!(coarse.teacher, "p33-s4-r2-teacher.onnx");
    assert_eq!(fine.teacher, "p33-s4-teacher.onnx");
    assert_eq!(second.teacher, "p33-s2-r2-teacher.onnx");
    // The coarse grid is the 32² view's at stride 4, cells 8 input pixels apart.
    assert_eq!(bundle.map_size(0), Some((8, 8)));
    assert_eq!(bundle.map_size(1), Some((16, 16)));
    assert_eq!(bundle.map_size(2), Some((16, 16)));

    let input = ustad_core::judge::preprocess::to_input(
        &image::open(&files[0]).unwrap(),
        &bundle.manifest.input,
    );
    let side = 64;

    // The engine scores the mean of the two coarse views and maps the fine scale alone.
    let rule = bundle.manifest.image_score;
    let mut engine = Engine::load(bundle, EngineOptions::default()).unwrap();
    // No map before a frame was judged.
    assert!(matches!(engine.map(), Err(EngineError::NotJudged)));
    let analysis = engine.analyze_input(&input).unwrap();
    let (score, map) = (analysis.score, analysis.map.to_vec());
    let coarse_map = calibrated_map(&engine, 0, (side, side));
    let fine_map = calibrated_map(&engine, 1, (side, side));
    let second_map = calibrated_map(&engine, 2, (side, side));
    let views: Vec<f32> = coarse_map
        .iter()
        .zip(&second_map)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let mut scorer = ImageScorer::new(rule, side, side);
    let expected = scorer.score(&views);
    assert!(
        (score - expected).abs() <= 1e-5 * expected.abs().max(1.0),
        "{score} vs {expected}"
    );
    for (name, alone) in [
        ("the map scale", &fine_map),
        ("one view alone", &coarse_map),
    ] {
        let other = scorer.score(alone);
        assert!(
            (score - other).abs() > 1e-3,
            "{name} gives the score ({score} vs {other})"
        );
    }
    let worst = map
        .iter()
        .zip(&fine_map)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "map differs from the fine scale's by {worst}");

    // Judging runs the two views alone; the map scale waits for `map`, which draws the same
    // map as a whole analysis. Another image in between would show through any stale buffer.
    let other = ustad_core::judge::preprocess::to_input(
        &image::open(&files[1]).unwrap(),
        &engine.bundle().manifest.input,
    );
    let other_score = engine.judge_input(&other).unwrap().score;
    assert!(engine.map_pending());
    let judged = engine.judge_input(&input).unwrap();
    assert_eq!(judged.score, score);
    let idle: Vec<&str> = engine
        .network_timings()
        .into_iter()
        .filter(|(_, t)| t.is_zero())
        .map(|(label, _)| label)
        .collect();
    assert_eq!(
        idle,
        [engine.network_timings()[1].0],
        "only the map scale waits"
    );
    let drawn = engine.map().unwrap();
    assert_eq!((drawn.score, drawn.map), (score, &map[..]));
    assert!(!engine.map_pending());
    assert!(engine.network_timings().iter().all(|(_, t)| !t.is_zero()));
    assert_eq!(engine.analyze_input(&other).unwrap().score, other_score);
    // A frame that could not be judged leaves no map to show, not the last frame's.
    assert!(engine.judge_input(&other[1..]).is_err());
    assert!(matches!(engine.map(), Err(EngineError::NotJudged)));

    // A manifest edited into a geometry or roles the engine cannot run is refused by name.
    let manifest = options.out.join("bundle.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    for (edit, expected) in [
        (
            text.replace("reduction = 2", "reduction = 3"),
            "scales[0].reduction",
        ),
        (
            text.replace("role = \"score\"", "role = \"map\""),
            "no scale feeds the image score",
        ),
    ] {
        std::fs::write(&manifest, edit).unwrap();
        let err = Bundle::load(&options.out).unwrap_err().to_string();
        assert!(
            err.contains("bundle.toml") && err.contains(expected),
            "{err}"
        );
    }
}

#[test]
fn a_reduced_view_or_a_role_that_cannot_work_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, scales: &str, students: usize| {
        let text = format!(
            "name = \"{name}\"\ndescription = \"\"\nwidth = 64\nheight = 64\nstudents = {students}\n\
             epochs = 1\nbatch = 1\nlearning_rate = 1e-4\nscales = [{scales}]\n\
             [image_score]\nsmoothing_sigma = 1.0\ntop_fraction = 0.01\n"
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        format!(
            "{:#}",
            ustad_train::fit::Preset::load(path.to_str().unwrap()).unwrap_err()
        )
    };
    let pair = |score: &str| format!("{score}, {DEEP_TRAILING_MAP}");
    let err = load("students", &pair(DEEP_TRAILING_REDUCED_SCORE), 2);
    assert!(
        err.contains("students.toml") && err.contains("reduction = 2"),
        "{err}"
    );
    let indivisible = DEEP_TRAILING_REDUCED_SCORE.replace("reduction = 2", "reduction = 3");
    let err = load("indivisible", &pair(&indivisible), 0);
    assert!(err.contains("reduction = 3 does not divide"), "{err}");
    let err = load("no-map", DEEP_TRAILING_REDUCED_SCORE, 0);
    assert!(
        err.contains("no-map.toml") && err.contains("no scale feeds the anomaly map"),
        "{err}"
    );
}

#[test]
fn a_reduced_view_sees_the_frame_as_a_smaller_resize_would() {
    use image::imageops::FilterType;
    use ustad_core::judge::preprocess::to_input;

    let dir = tempfile::tempdir().unwrap();
    let mut deep = tap();
    deep.nodes = vec!["res4".into(), "res10".into(), "res12".into()];
    let teacher = FeatureTeacher::load(&backbone_onnx(), deep, 32, 32).unwrap();
    let rgb = mtd_tile(64);
    let tile = DynamicImage::ImageRgb8(rgb.clone());
    let features = |spec: &InputSpec, image: &DynamicImage, name: &str| {
        let path = dir.path().join(name);
        save_model(&teacher.graph(spec, 4, (8, 8), None).unwrap(), &path).unwrap();
        run(&path, &to_input(image, spec), spec.width)
    };
    // The 64² input filtered down inside the graph ...
    let in_graph = features(&InputSpec::imagenet(64, 64), &tile, "reduced.onnx");
    // ... against the 32² backbone on the image crate's own Triangle resize of the tile, and
    // on a nearest-neighbour one (aliased: what a plain subsampling would show).
    let view = InputSpec::imagenet(32, 32);
    let resized = |filter| DynamicImage::ImageRgb8(image::imageops::resize(&rgb, 32, 32, filter));
    let triangle = features(&view, &resized(FilterType::Triangle), "triangle.onnx");
    let nearest = features(&view, &resized(FilterType::Nearest), "nearest.onnx");
    assert_eq!(in_graph.len(), teacher.channels() * 64);
    let rms = |a: &[f32], b: &[f32]| {
        (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
    };
    let (close, aliased) = (rms(&in_graph, &triangle), rms(&in_graph, &nearest));
    let spread = rms(&triangle, &vec![0.0; triangle.len()]);
    // 8-bit rounding of the resized tile is all that separates the first two.
    assert!(
        close < 0.05 * spread,
        "in-graph vs Triangle resize: {close} (features' rms {spread})"
    );
    assert!(
        aliased > 3.0 * close,
        "nearest {aliased} should differ more than {close}"
    );
}
