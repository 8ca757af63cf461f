//! A bad bundle is refused at load with an error that names the file and the field.

use ustad_core::testing as common;

use std::path::Path;

use ustad_core::bundle::{Bundle, BundleError, MANIFEST};
use ustad_core::judge::decide::ImageScoreRule;
use ustad_core::judge::preprocess::InputSpec;

fn good_bundle(dir: &Path) -> Bundle {
    let scales = vec![common::random_scale(17, 1, 2, 3)];
    common::write_random_bundle(
        dir,
        InputSpec::imagenet(16, 12),
        &scales,
        ImageScoreRule::default(),
        1.0,
    )
}

fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "manifest has no `{from}`:\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn load_error(dir: &Path) -> String {
    Bundle::load(dir)
        .expect_err("bundle should be refused")
        .to_string()
}

#[test]
fn a_written_bundle_loads_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = good_bundle(dir.path());
    assert_eq!(Bundle::load(dir.path()).unwrap(), bundle);
    assert_eq!(bundle.map_size(0), Some((12, 16)));
}

#[test]
fn missing_network_file_names_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = good_bundle(dir.path());
    let student = &bundle.manifest.scales[0].students[1];
    std::fs::remove_file(dir.path().join(student)).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains(student.as_str())
            && err.contains("scales[0].students[1]")
            && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn truncated_onnx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = good_bundle(dir.path());
    let teacher = dir.path().join(&bundle.manifest.scales[0].teacher);
    let bytes = std::fs::read(&teacher).unwrap();
    std::fs::write(&teacher, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("teacher.onnx")
            && err.contains("scales[0].teacher")
            && err.contains("not a readable ONNX"),
        "{err}"
    );
}

#[test]
fn unknown_format_version_is_refused_as_such() {
    let dir = tempfile::tempdir().unwrap();
    good_bundle(dir.path());
    edit_manifest(dir.path(), "format_version = 1", "format_version = 7");
    let err = Bundle::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, BundleError::UnsupportedVersion { found: 7, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bundle.toml"));
}

#[test]
fn nan_statistics_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    good_bundle(dir.path());
    edit_manifest(dir.path(), "error_std = 5.0", "error_std = nan");
    let err = load_error(dir.path());
    assert!(err.contains("scales[0].calibration.error_std"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    good_bundle(dir.path());
    let path = dir.path().join(MANIFEST);
    let mut manifest: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    manifest["scales"].as_array_mut().unwrap()[0]["teacher_std"]
        .as_array_mut()
        .unwrap()[0] = toml::Value::Float(f64::NAN);
    std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("scales[0].teacher_std[0]"), "{err}");
}

#[test]
fn shapes_that_disagree_with_the_manifest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    good_bundle(dir.path());
    edit_manifest(dir.path(), "width = 16", "width = 20");
    let err = load_error(dir.path());
    assert!(
        err.contains("input shape [1, 3, 12, 16]") && err.contains("[1, 3, 12, 20]"),
        "{err}"
    );
}

#[test]
fn unknown_fields_and_impossible_geometry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    good_bundle(dir.path());
    edit_manifest(
        dir.path(),
        "format_version = 1",
        "format_version = 1\nthreshhold = 3",
    );
    let err = load_error(dir.path());
    assert!(err.contains("threshhold"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    good_bundle(dir.path());
    edit_manifest(dir.path(), "stride = 1", "stride = 2");
    let err = load_error(dir.path());
    assert!(err.contains("scales[0].stride"), "{err}");
}

#[test]
fn a_single_student_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let scales = [common::random_scale(17, 1, 1, 3)];
    let exports = ustad_core::bundle::onnx::ScaleExport {
        stride: 1,
        reduction: 1,
        role: Default::default(),
        teacher: ustad_core::bundle::onnx::TeacherExport::Network(&scales[0].teacher),
        students: &scales[0].students,
        teacher_norm: scales[0].norm.clone(),
        calibration: scales[0].calibration,
    };
    let err = ustad_core::bundle::onnx::write_bundle(
        dir.path(),
        InputSpec::imagenet(16, 16),
        &[exports],
        ImageScoreRule::default(),
        ustad_core::judge::decide::Decision {
            threshold: 1.0,
            rule: String::new(),
        },
        Default::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("the variance needs at least 2"),
        "{err}"
    );
}

#[test]
fn a_network_zeroed_in_place_is_refused_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let scales = vec![common::random_scale(17, 1, 2, 3)];
    let bundle = common::write_random_bundle(
        dir.path(),
        InputSpec::imagenet(16, 12),
        &scales,
        ImageScoreRule::default(),
        1.0,
    );
    assert_eq!(
        bundle.manifest.checksums.len(),
        bundle.network_file_names().len(),
        "every network file has a checksum"
    );
    // Zero 4 KiB inside the teacher's second conv weights (not folded with any
    // normalisation, so stored exactly): size, protobuf framing and shapes stay valid.
    let teacher = &bundle.manifest.scales[0].teacher;
    let path = dir.path().join(teacher);
    let mut bytes = std::fs::read(&path).unwrap();
    let needle: Vec<u8> = scales[0].teacher.convs[1].weight[..8]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("conv weights stored as raw little-endian f32");
    bytes[at..at + 4096].iter_mut().for_each(|b| *b = 0);
    std::fs::write(&path, &bytes).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains(teacher.as_str())
            && err.contains("SHA-256")
            && err.contains("scales[0].teacher"),
        "{err}"
    );
    // Without the checksums the damaged bundle would load: nothing else can see it.
    let manifest_path = dir.path().join(MANIFEST);
    let mut manifest: ustad_core::bundle::Manifest =
        toml::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest.checksums.clear();
    std::fs::write(&manifest_path, toml::to_string(&manifest).unwrap()).unwrap();
    assert!(Bundle::load(dir.path()).is_ok());
}
