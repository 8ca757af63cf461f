//! `ustad bench` end to end with a small random bundle: every precision is measured or
//! explained, the recommendation is one of the measured ones, and `--dump` writes what
//! `benches/ort_compare.py` reads.

use ustad_core::testing as common;

use std::process::Command;

use serde_json::Value;
use ustad_core::bundle::Precision;
use ustad_core::judge::decide::ImageScoreRule;
use ustad_core::judge::preprocess::InputSpec;

/// Tiny, because f16 is emulated on x86 (~0.1 GFLOP/s): it is measured, so it must be cheap.
const SIDE: usize = 16;

#[test]
fn bench_reports_every_precision_and_dumps_outputs() {
    let bundle = tempfile::tempdir().unwrap();
    common::write_random_bundle(
        bundle.path(),
        InputSpec::imagenet(SIDE, SIDE),
        &[common::random_scale(33, 4, 2, 3)],
        ImageScoreRule::default(),
        1.0,
    );
    let dump = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ustad"))
        .args([
            "bench",
            "--bundle",
            bundle.path().to_str().unwrap(),
            "--precision",
            "all",
            "--threads",
            "1",
            "--warmup",
            "0",
            "--runs",
            "2",
            "--json",
            "--dump",
            dump.path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);

    let f32 = &results[0];
    assert_eq!(f32["status"], "measured");
    assert_eq!(f32["precision"], "f32");
    let median = f32["median_ms"].as_f64().unwrap();
    let p99 = f32["p99_ms"].as_f64().unwrap();
    assert!(median > 0.0 && p99 >= median, "median {median} p99 {p99}");
    assert!(f32["parity"].is_null(), "f32 is the reference");
    let networks = f32["networks"].as_array().unwrap();
    assert_eq!(networks.len(), 3, "teacher + 2 students");
    assert_eq!(networks[0]["network"], "p33/teacher");
    let macs: u64 = networks.iter().map(|n| n["macs"].as_u64().unwrap()).sum();
    assert_eq!(f32["macs"].as_u64(), Some(macs));
    assert!(macs > 0 && f32["gflops"].as_f64().unwrap() > 0.0);

    // f16 may be slow on x86, but it is measured (or its failure explained) and compared.
    let f16 = &results[1];
    assert_eq!(f16["precision"], "f16");
    if f16["status"] == "measured" {
        assert!(f16["parity"]["relative"].as_f64().unwrap() < 0.05);
    } else {
        assert_eq!(f16["status"], "failed");
    }
    let int8 = &results[2];
    assert_eq!(int8["status"], "missing");
    assert!(int8["reason"].as_str().unwrap().contains("int8"));

    let recommended: Precision = serde_json::from_value(json["recommendation"].clone()).unwrap();
    assert_ne!(recommended, Precision::Int8);
    assert!(
        json["recommendation_reason"]
            .as_str()
            .unwrap()
            .contains("int8 is not in the bundle")
    );

    // The dump: input and one output per network, sized as dump.json says.
    let dir = dump.path().join("f32");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dump.json")).unwrap()).unwrap();
    let input = std::fs::metadata(dir.join("input.f32")).unwrap().len();
    assert_eq!(input as usize, 4 * 3 * SIDE * SIDE);
    for n in manifest["networks"].as_array().unwrap() {
        let shape: usize = n["output_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .product();
        let bytes = std::fs::metadata(dir.join(n["output"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(bytes as usize, 4 * shape);
        assert!(std::path::Path::new(n["onnx"].as_str().unwrap()).is_file());
    }
}

#[test]
fn bench_table_is_printed_without_json() {
    let bundle = tempfile::tempdir().unwrap();
    common::write_random_bundle(
        bundle.path(),
        InputSpec::imagenet(SIDE, SIDE),
        &[common::random_scale(17, 1, 2, 5)],
        ImageScoreRule::default(),
        1.0,
    );
    let o = Command::new(env!("CARGO_BIN_EXE_ustad"))
        .args([
            "bench",
            "--bundle",
            bundle.path().to_str().unwrap(),
            "--precision",
            "f32,int8",
            "--runs",
            "2",
            "--warmup",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for needle in [
        "median ms",
        "p17/teacher",
        "int8",
        "skipped",
        "recommendation: f32",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from\n{stdout}");
    }
}

#[test]
fn network_macs_are_counted_from_the_graphs() {
    use ustad_core::bundle::Bundle;
    use ustad_core::networks::arch::{Architecture, Mode};
    // Patch networks: the graph count is the architecture's.
    let dir = tempfile::tempdir().unwrap();
    common::write_random_bundle(
        dir.path(),
        InputSpec::imagenet(48, 48),
        &[common::random_scale(33, 4, 2, 3)],
        ImageScoreRule::default(),
        1.0,
    );
    let bundle = Bundle::load(dir.path()).unwrap();
    let arch = Architecture::for_patch_size(33)
        .unwrap()
        .macs(Mode::Image { stride: 4 }, 48, 48)
        .unwrap();
    assert_eq!(
        ustad_core::bundle::cost::network_macs(&bundle).unwrap(),
        vec![arch; 3]
    );
    // The shipped bundles' teacher is the backbone (cut after `res12`): cheaper than even the
    // narrowest of its patch-network students, whose cost follows their widths (edge:
    // half-width students, edge-fast: quarter-width).
    let mut per_student = Vec::new();
    for name in ["mtd-edge", "mtd-edge-fast"] {
        let shipped = Bundle::load(&common::repo_path("models/bundles").join(name)).unwrap();
        let macs = ustad_core::bundle::cost::network_macs(&shipped).unwrap();
        let scale = &shipped.manifest.scales[0];
        let input = &shipped.manifest.input;
        let student = Architecture::new(scale.patch_size, scale.student_channel_divisor)
            .unwrap()
            .macs(
                Mode::Image {
                    stride: scale.stride,
                },
                input.height,
                input.width,
            )
            .unwrap();
        assert!(macs[1..].iter().all(|m| *m == student), "{name}: {macs:?}");
        assert!(
            macs[0] > 0 && macs[0] < student / 2,
            "{name}: teacher {} vs student {student}",
            macs[0]
        );
        per_student.push(student);
    }
    // Halving every hidden width again divides most of the work by about four.
    assert!(
        per_student[1] * 3 < per_student[0],
        "edge-fast {} vs edge {} MAC per student",
        per_student[1],
        per_student[0]
    );
}
