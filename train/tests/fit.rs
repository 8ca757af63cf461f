//! `fit` end to end on a tiny MVTec-layout dataset of real MTD images, and its error cases.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ustad_core::bundle::Bundle;
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::threshold::threshold_from_good;
use ustad_core::networks::weights::NetworkWeights;
use ustad_train::fit::{FitOptions, Preset, Schedule, channel_statistics, fit};

fn mtd() -> PathBuf {
    ustad_core::testing::shared_path("data/mtd")
}

/// `count` real good images (their sizes differ: the fit resizes them) in MVTec layout.
fn tiny_dataset(root: &Path, count: usize) -> PathBuf {
    let good = root.join("data/train/good");
    std::fs::create_dir_all(&good).unwrap();
    let mut files = ustad_core::images::images_in(&mtd().join("train/good")).unwrap();
    files.truncate(count);
    for f in &files {
        std::fs::copy(f, good.join(f.file_name().unwrap())).unwrap();
    }
    root.join("data")
}

fn small_preset(dir: &Path) -> Preset {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        r#"
name = "tiny"
description = "test preset"
width = 48
height = 48
students = 2
epochs = 1
batch = 4
learning_rate = 1e-4
scales = [{ patch_size = 33, stride = 4 }]
[image_score]
smoothing_sigma = 1.0
top_fraction = 0.01
"#,
    )
    .unwrap();
    Preset::load(path.to_str().unwrap()).unwrap()
}

fn options(root: &Path, data: PathBuf) -> FitOptions {
    let teachers = root.join("teachers");
    std::fs::create_dir_all(&teachers).unwrap();
    NetworkWeights::random(33, 5)
        .unwrap()
        .save(&teachers.join("p33.ustw"))
        .unwrap();
    FitOptions {
        data,
        out: root.join("bundle"),
        preset: small_preset(root),
        teachers,
        backbone: root.join("unused-backbone.onnx"),
        backbone_config: None,
        validation_fraction: 0.3,
        target_false_reject_rate: 0.1,
        margin: 0.1,
        weight_decay: 1e-5,
        symmetric: true,
        max_fit_images: 0,
        seed: 3,
        resume: false,
        progress: false,
        precision: ustad_train::fit::ExportPrecision::Both,
    }
}

#[test]
fn statistics_match_a_direct_computation() {
    // Two maps of 3 channels × 4 pixels.
    let maps = vec![
        vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 5.0, -5.0, 5.0, -5.0],
        vec![5.0, 6.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
    ];
    let norm = channel_statistics(&maps, 3);
    for c in 0..3 {
        let values: Vec<f64> = maps
            .iter()
            .flat_map(|m| m[c * 4..(c + 1) * 4].iter().map(|&v| v as f64))
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let std =
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
        assert!(
            (norm.mean[c] as f64 - mean).abs() < 1e-6,
            "channel {c} mean"
        );
        let want_std = if std > 1e-6 { std } else { 1.0 };
        assert!(
            (norm.std[c] as f64 - want_std).abs() < 1e-6,
            "channel {c} std {} vs {want_std}",
            norm.std[c]
        );
    }
}

#[test]
fn fit_exports_a_calibrated_bundle_that_scores_like_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 10);
    let mut options = options(dir.path(), data);
    options.preset.schedule = Schedule::Cosine;
    let report = fit(&options, &Device::flex().autodiff()).unwrap();
    assert_eq!((report.fit_images, report.validation_images), (7, 3));
    assert!(
        report.parity_max_abs < 1e-3,
        "burn vs tract parity {}",
        report.parity_max_abs
    );

    let bundle = Bundle::load(&options.out).unwrap();
    let scale = &bundle.manifest.scales[0];
    assert_eq!(scale.students.len(), 2);
    assert!(scale.teacher_std.iter().all(|s| *s > 0.0));
    // The threshold is what the rule gives on the validation images' scores.
    let mut engine = Engine::load(bundle.clone(), EngineOptions::default()).unwrap();
    let scores: Vec<f32> = report_validation_scores(&mut engine, &options);
    let want =
        threshold_from_good(&scores, options.target_false_reject_rate, options.margin).unwrap();
    assert!(
        (bundle.manifest.decision.threshold - want.threshold).abs() < 1e-4,
        "{} vs {}",
        bundle.manifest.decision.threshold,
        want.threshold
    );
    assert_eq!(
        bundle.manifest.provenance.extra["preset"].as_str(),
        Some("tiny")
    );
    // The training recipe is recorded, so a bundle says how it was made.
    let extra = &bundle.manifest.provenance.extra;
    assert_eq!(extra["schedule"].as_str(), Some("cosine"));
    assert_eq!(extra["learning_rate"].as_float(), Some(1e-4));
    assert_eq!(extra["batch"].as_integer(), Some(4));
}

/// The validation split is the last `n` of the seeded shuffle: recompute it as `fit` does.
fn report_validation_scores(engine: &mut Engine, options: &FitOptions) -> Vec<f32> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut paths = ustad_core::images::images_in(&options.data.join("train/good")).unwrap();
    paths.shuffle(&mut rand::rngs::StdRng::seed_from_u64(options.seed));
    let n_val = ((paths.len() as f64 * options.validation_fraction).ceil() as usize)
        .clamp(1, paths.len() - 1);
    paths[paths.len() - n_val..]
        .iter()
        .map(|p| engine.analyze(&image::open(p).unwrap()).unwrap().score)
        .collect()
}

#[test]
fn empty_and_unreadable_datasets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("train/good")).unwrap();
    let err = format!(
        "{:#}",
        fit(
            &options(dir.path(), empty.clone()),
            &Device::flex().autodiff()
        )
        .unwrap_err()
    );
    assert!(
        err.contains("no images") && err.contains("train/good"),
        "{err}"
    );

    let data = tiny_dataset(&dir.path().join("broken"), 6);
    let bad = data.join("train/good/zz_truncated.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let err = format!(
        "{:#}",
        fit(&options(dir.path(), data), &Device::flex().autodiff()).unwrap_err()
    );
    assert!(
        err.contains("zz_truncated.png") && err.contains("unreadable"),
        "{err}"
    );
}

#[test]
fn cosine_schedule_starts_at_the_rate_halves_midway_and_ends_at_zero() {
    let total = 640;
    let rates: Vec<f64> = (0..=total)
        .map(|step| Schedule::Cosine.rate(1e-3, step, total))
        .collect();
    assert_eq!(rates[0], 1e-3);
    assert!(
        (rates[total / 2] - 5e-4).abs() < 1e-12,
        "{}",
        rates[total / 2]
    );
    assert!(rates[total].abs() < 1e-12, "{}", rates[total]);
    assert!(rates.windows(2).all(|w| w[1] <= w[0]), "not decreasing");
    // Past the end (a resumed run asked for fewer epochs) the rate stays at zero, never rises.
    assert!(Schedule::Cosine.rate(1e-3, total + 50, total).abs() < 1e-12);
    assert!((0..total).all(|step| Schedule::Constant.rate(1e-3, step, total) == 1e-3));
}

#[test]
fn presets_read_the_schedule_and_refuse_an_unknown_one() {
    for name in [
        "edge",
        "edge-teacher",
        "edge-fast",
        "edge-shallow",
        "edge-p33",
        "edge-distilled",
        "edge-p65",
        "paper",
    ] {
        assert_eq!(
            Preset::load(name).unwrap().schedule,
            Schedule::Constant,
            "{name}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(small_preset(dir.path()).schedule, Schedule::Constant);
    let path = dir.path().join("bad.toml");
    let preset = std::fs::read_to_string(dir.path().join("tiny.toml")).unwrap();
    std::fs::write(&path, format!("schedule = \"linear\"\n{preset}")).unwrap();
    let err = format!("{:#}", Preset::load(path.to_str().unwrap()).unwrap_err());
    assert!(err.contains("bad.toml") && err.contains("linear"), "{err}");
}

/// The error of loading `file`, the tiny preset rewritten by `edit`.
fn tiny_variant_error(file: &str, edit: impl FnOnce(&str) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    small_preset(dir.path());
    let tiny = std::fs::read_to_string(dir.path().join("tiny.toml")).unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, edit(&tiny)).unwrap();
    format!("{:#}", Preset::load(path.to_str().unwrap()).unwrap_err())
}

#[test]
fn a_student_width_that_does_not_divide_is_refused_with_the_field() {
    let fast = Preset::load("edge-fast").unwrap();
    assert_eq!(fast.scales[0].student_channel_divisor, 4);
    assert_eq!(
        Preset::load("edge").unwrap().scales[0].student_channel_divisor,
        2
    );
    assert_eq!(
        Preset::load("edge-shallow").unwrap().scales[0].student_channel_divisor,
        1
    );
    let err = tiny_variant_error("odd.toml", |tiny| {
        tiny.replace("stride = 4 }", "stride = 4, student_channel_divisor = 3 }")
    });
    assert!(
        err.contains("odd.toml") && err.contains("student_channel_divisor"),
        "{err}"
    );
}

#[test]
fn backbone_teacher_fields_are_refused_elsewhere_and_when_empty() {
    for (file, field, scale) in [
        // The tiny preset's scale has a distilled teacher.
        (
            "distilled.toml",
            "teacher_components",
            r#"teacher_components = "trailing""#,
        ),
        (
            "empty.toml",
            "teacher_nodes",
            r#"teacher = "backbone", teacher_nodes = []"#,
        ),
    ] {
        let err = tiny_variant_error(file, |tiny| {
            tiny.replace("stride = 4 }", &format!("stride = 4, {scale} }}"))
        });
        assert!(err.contains(file) && err.contains(field), "{err}");
    }
}

#[test]
fn whitening_needs_at_least_one_image() {
    assert_eq!(Preset::load("edge").unwrap().whitening_images, 400);
    let err = tiny_variant_error("none.toml", |tiny| {
        format!("whiten_residual = true\nwhitening_images = 0\n{tiny}")
    });
    assert!(
        err.contains("none.toml") && err.contains("whitening_images"),
        "{err}"
    );
}
