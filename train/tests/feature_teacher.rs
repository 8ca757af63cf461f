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
