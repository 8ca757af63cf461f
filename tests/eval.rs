//! `ustad eval` end to end with a random bundle: the MVTec loader, scoring, the report and its
//! files. The metrics themselves are tested in `src/eval/metrics.rs`; here the point is that the
//! report is complete and consistent with its own per-image scores.

use ustad_core::testing as common;

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{GrayImage, Luma};
use serde_json::Value;
use ustad::capture::decode::DEFAULT_MAX_PIXELS;
use ustad::eval::ThresholdReport;
use ustad::eval::run::{self, EvalReport};
use ustad_core::bundle::Bundle;
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::decide::ImageScoreRule;
use ustad_core::judge::preprocess::InputSpec;

const SIDE: usize = 64;

fn random_bundle(dir: &Path, threshold: f32) -> Bundle {
    common::write_random_bundle(
        dir,
        InputSpec::imagenet(SIDE, SIDE),
        &[common::random_scale(33, 4, 2, 1)],
        ImageScoreRule {
            smoothing_sigma: 1.0,
            top_fraction: 0.01,
            border: 0,
        },
        threshold,
    )
}

/// A small MVTec-layout dataset: textured good parts, and defect parts with a bright blob and
/// its mask, at sizes other than the input size (as in MTD).
fn synthetic_dataset(root: &Path) {
    let part = |seed: u32, blob: Option<(u32, u32)>| {
        GrayImage::from_fn(80, 72, |x, y| {
            let texture = ((x * 7 + y * 13 + seed * 31) % 17) as u8 * 3;
            let hot = blob.is_some_and(|(bx, by)| x.abs_diff(bx) < 8 && y.abs_diff(by) < 6);
            Luma([if hot { 250 } else { 90 + texture }])
        })
    };
    let save = |img: &GrayImage, path: PathBuf| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    };
    for i in 0..4 {
        save(&part(i, None), root.join(format!("test/good/{i:03}.png")));
    }
    for (d, defect) in ["crack", "hole"].iter().enumerate() {
        for i in 0..3u32 {
            let at = (20 + 15 * i + 5 * d as u32, 30 + 8 * i);
            save(
                &part(10 + i, Some(at)),
                root.join(format!("test/{defect}/{i:03}.png")),
            );
            let mask = GrayImage::from_fn(80, 72, |x, y| {
                Luma([if x.abs_diff(at.0) < 8 && y.abs_diff(at.1) < 6 {
                    255
                } else {
                    0
                }])
            });
            save(
                &mask,
                root.join(format!("ground_truth/{defect}/{i:03}_mask.png")),
            );
        }
    }
}

/// Scores `data`, with the threshold moved to the median score so the report has both
/// decisions (and mistakes) to show.
fn evaluate(data: &Path, limit: Option<usize>, out: &Path) -> (EvalReport, Value) {
    let bundle_dir = tempfile::tempdir().unwrap();
    let bundle = random_bundle(bundle_dir.path(), 0.0);
    let split = run::load_test_split(data, limit).unwrap();
    let mut engine = Engine::load(bundle, EngineOptions::default()).unwrap();
    let first = run::score_test_split(&mut engine, &split, DEFAULT_MAX_PIXELS, |_| {}).unwrap();
    let mut scores: Vec<f32> = first.images.iter().map(|i| i.score).collect();
    scores.sort_by(f32::total_cmp);
    engine.set_threshold(scores[scores.len() / 2]);
    let mut calls = 0;
    let evaluation = run::score_test_split(&mut engine, &split, DEFAULT_MAX_PIXELS, |done| {
        calls += 1;
        assert_eq!(done, calls);
    })
    .unwrap();
    assert_eq!(calls, split.len(), "progress once per image");
    let (mut report, pixels) =
        EvalReport::build(&evaluation, bundle_dir.path(), data, "f32", 0.3, 2).unwrap();
    run::write_outputs(out, &mut report, &evaluation, &pixels).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    (report, json)
}

fn check_report(json: &Value, out: &Path, categories: &[&str], per_category: usize) {
    for field in [
        "image_auroc",
        "pixel_auroc",
        "au_pro",
        "threshold",
        "mean_frame_ms",
    ] {
        let v = json[field].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite(), "{field} = {}", json[field]);
    }
    for field in ["image_auroc", "pixel_auroc", "au_pro"] {
        let v = json[field].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{field} = {v}");
    }
    // The confusion counts must be those of the per-image scores at the reported threshold.
    let scores = json["scores"].as_array().unwrap();
    let s: Vec<f32> = scores
        .iter()
        .map(|i| i["score"].as_f64().unwrap() as f32)
        .collect();
    let d: Vec<bool> = scores
        .iter()
        .map(|i| i["defective"].as_bool().unwrap())
        .collect();
    let threshold = json["threshold"].as_f64().unwrap() as f32;
    let expected = ThresholdReport::at_threshold(&s, &d, threshold).unwrap();
    let t = &json["at_threshold"];
    assert_eq!(
        t["true_positives"].as_u64(),
        Some(expected.true_positives as u64)
    );
    assert_eq!(
        t["false_positives"].as_u64(),
        Some(expected.false_positives as u64)
    );
    assert_eq!(
        t["true_negatives"].as_u64(),
        Some(expected.true_negatives as u64)
    );
    assert_eq!(
        t["false_negatives"].as_u64(),
        Some(expected.false_negatives as u64)
    );
    assert_eq!(
        t["false_reject_rate"].as_f64(),
        expected.false_reject_rate()
    );
    assert_eq!(t["escape_rate"].as_f64(), expected.escape_rate());
    for (i, image) in scores.iter().enumerate() {
        assert_eq!(image["rejected"].as_bool(), Some(s[i] >= threshold));
    }
    assert_eq!(json["images"].as_u64(), Some(scores.len() as u64));
    assert_eq!(
        json["good"].as_u64(),
        Some(d.iter().filter(|&&x| !x).count() as u64)
    );
    assert_eq!(
        json["image_auroc"].as_f64(),
        Some(ustad::eval::image_auroc(&s, &d).unwrap())
    );
    let ci = &json["image_auroc_interval"];
    let interval = ustad::eval::image_auroc_interval(&s, &d).unwrap();
    assert_eq!(ci["standard_error"].as_f64(), Some(interval.standard_error));
    let (low, high) = (ci["low"].as_f64().unwrap(), ci["high"].as_f64().unwrap());
    let auroc = json["image_auroc"].as_f64().unwrap();
    assert!(low <= auroc && auroc <= high, "{low} {auroc} {high}");

    let per_defect = json["per_defect"].as_array().unwrap();
    let names: Vec<&str> = per_defect
        .iter()
        .map(|p| p["defect"].as_str().unwrap())
        .collect();
    assert_eq!(names, categories);
    let mut escapes = 0;
    for p in per_defect {
        assert_eq!(p["images"].as_u64(), Some(per_category as u64));
        let auroc = p["image_auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc));
        escapes += p["escapes"].as_u64().unwrap();
    }
    assert_eq!(escapes, expected.false_negatives as u64);

    for file in ["roc.png", "pixel_roc.png", "pro.png"] {
        let img = image::open(out.join(file)).unwrap();
        assert_eq!((img.width(), img.height()), (600, 600), "{file}");
    }
    let examples = &json["examples"];
    let mut overlays = 0;
    for kind in ["false_rejects", "escapes", "detections"] {
        for e in examples[kind].as_array().unwrap() {
            let name = e["overlay"].as_str().unwrap();
            let img = image::open(out.join(name)).unwrap();
            assert_eq!((img.width() as usize, img.height() as usize), (SIDE, SIDE));
            overlays += 1;
        }
    }
    assert_eq!(
        std::fs::read_dir(out.join("overlays")).unwrap().count(),
        overlays
    );
    assert_eq!(
        examples["false_rejects"].as_array().unwrap().len(),
        expected.false_positives.min(2)
    );
    assert_eq!(
        examples["escapes"].as_array().unwrap().len(),
        expected.false_negatives.min(2)
    );
}

#[test]
fn report_is_complete_and_consistent_on_a_synthetic_dataset() {
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let (report, json) = evaluate(data.path(), None, out.path());
    check_report(&json, out.path(), &["crack", "hole"], 3);
    assert_eq!((report.good, report.defective), (4, 6));
    let summary = report.summary();
    for needle in [
        "image AUROC",
        "pixel AUROC",
        "AU-PRO",
        "false rejects",
        "escapes",
        "crack",
    ] {
        assert!(summary.contains(needle), "{needle} missing from\n{summary}");
    }
}

/// The real MTD test split (a few images per defect type), when the shared data is present.
#[test]
fn report_on_a_subset_of_mtd() {
    let data = std::env::var_os("USTAD_MTD")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::shared_path("data/mtd"));
    if !data.join("test/good").is_dir() {
        eprintln!("skipped: no MTD at {}", data.display());
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let (_, json) = evaluate(&data, Some(2), out.path());
    check_report(
        &json,
        out.path(),
        &["blowhole", "break", "crack", "fray", "uneven"],
        2,
    );
}

fn ustad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ustad"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn cli_writes_the_report_and_names_a_missing_mask() {
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path());
    let bundle = tempfile::tempdir().unwrap();
    random_bundle(bundle.path(), 0.0);
    let out = tempfile::tempdir().unwrap();
    let report_dir = out.path().join("report");
    let b = bundle.path().to_str().unwrap();
    let d = data.path().to_str().unwrap();
    let o = ustad(&[
        "eval",
        "--bundle",
        b,
        "--data",
        d,
        "--out",
        report_dir.to_str().unwrap(),
        "--threads",
        "1",
        "--limit",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("image AUROC"), "{stdout}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["images"].as_u64(), Some(6), "2 per category");
    assert!(report_dir.join("pro.png").is_file());

    // Images and masks are read within the pixel limit, as the daemon reads frames.
    let o = ustad(&["eval", "--bundle", b, "--data", d, "--max-pixels", "1000"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("test/good/000.png") && stderr.contains("exceeds the limit"),
        "{stderr}"
    );
    // A mask whose header declares 20000² pixels is refused before any pixel is decoded.
    let mask = data.path().join("ground_truth/crack/000_mask.png");
    let original = std::fs::read(&mask).unwrap();
    let mut bomb = original.clone();
    bomb[16..20].copy_from_slice(&20_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&20_000u32.to_be_bytes());
    std::fs::write(&mask, &bomb).unwrap();
    let o = ustad(&["eval", "--bundle", b, "--data", d, "--limit", "1"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("000_mask.png") && stderr.contains("20000x20000 exceeds the limit"),
        "{stderr}"
    );
    std::fs::write(&mask, &original).unwrap();

    std::fs::remove_file(data.path().join("ground_truth/hole/001_mask.png")).unwrap();
    let o = ustad(&["eval", "--bundle", b, "--data", d]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("hole/001.png") && stderr.contains("001_mask.png"),
        "{stderr}"
    );

    std::fs::remove_dir_all(data.path().join("test/good")).unwrap();
    let o = ustad(&["eval", "--bundle", b, "--data", d]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("test/good"), "{stderr}");
}

/// `ustad score` judges files as the daemon does: a truncated JPEG is a reject and a failing
/// exit, and heatmaps of same-named images in different folders do not overwrite each other.
#[test]
fn score_uses_the_daemons_decoder_and_keeps_every_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    let data = common::shared_path("data/mtd/test");
    for category in ["crack", "good"] {
        let first = ustad_core::images::images_in(&data.join(category)).unwrap()[0].clone();
        std::fs::create_dir_all(inputs.join(category)).unwrap();
        std::fs::copy(&first, inputs.join(category).join("000.jpg")).unwrap();
    }
    let good = std::fs::read(inputs.join("good/000.jpg")).unwrap();
    std::fs::write(inputs.join("truncated.jpg"), &good[..good.len() / 2]).unwrap();
    let maps = dir.path().join("maps");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ustad"))
        .args(["score", "--bundle"])
        .arg(common::repo_path("models/bundles/mtd-edge"))
        .arg("--heatmaps")
        .arg(&maps)
        .arg(&inputs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "an unreadable image fails the run:\n{stdout}"
    );
    let truncated = stdout
        .lines()
        .find(|l| l.contains("truncated.jpg"))
        .unwrap_or_else(|| panic!("no line for the truncated file:\n{stdout}"));
    assert!(truncated.contains("reject"), "{truncated}");
    assert!(maps.join("crack__000.png").is_file() && maps.join("good__000.png").is_file());
}
