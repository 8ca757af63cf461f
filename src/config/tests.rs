use std::path::PathBuf;

use super::load::location;
use super::*;

fn repo_file(rel: &str) -> PathBuf {
    ustad_core::testing::repo_path(rel)
}

const MINIMAL: &str = r#"
[camera]
source = "replay"
path = "frames"

[model]
bundle = "models/bundles/x"

[reject]
actuator = "log-only"
pulse_ms = 50
delay_ms = 300
"#;

fn err(text: &str) -> ConfigError {
    match Config::from_str(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn example_pi_config_parses() {
    let cfg = Config::load(repo_file("config/ustad.toml")).expect("config/ustad.toml");
    let CameraConfig::V4l2(cam) = &cfg.camera else {
        panic!("expected a V4L2 camera, got {:?}", cfg.camera)
    };
    assert_eq!(cam.device, PathBuf::from("/dev/video0"));
    assert_eq!(cam.pixel_format, PixelFormat::Mjpeg);
    assert_eq!(cam.controls.get("white_balance_automatic"), Some(&0));
    assert_eq!(cam.exposure, Some(Exposure::Manual(40)));
    let ActuatorConfig::Gpio(out) = &cfg.reject.actuator else {
        panic!("expected a GPIO actuator, got {:?}", cfg.reject.actuator)
    };
    assert_eq!(out.line, "GPIO17");
    assert_eq!(cfg.failsafe.policy, FailSafePolicy::Reject);
    assert!(cfg.failsafe.frame_budget <= cfg.reject.delay);
    let roi = cfg.roi.expect("the example sets a region of interest");
    assert!(roi.x + roi.width <= cam.width && roi.y + roi.height <= cam.height);
}

#[test]
fn example_replay_config_parses() {
    let cfg = Config::load(repo_file("config/replay.toml")).expect("config/replay.toml");
    let CameraConfig::Replay(rep) = &cfg.camera else {
        panic!("expected a replay source, got {:?}", cfg.camera)
    };
    assert_eq!(rep.path, PathBuf::from("../shared/data/mtd/test"));
    assert!(!rep.looping);
    assert_eq!(
        cfg.model.bundle,
        PathBuf::from("models/bundles/mtd-edge-map")
    );
    assert!(matches!(
        cfg.reject.actuator,
        ActuatorConfig::LogOnly { .. }
    ));
    assert_eq!(cfg.trigger, TriggerConfig::FreeRun);
}

#[test]
fn replay_pixel_limit_is_configurable_and_checked() {
    let CameraConfig::Replay(rep) = Config::from_str(MINIMAL).expect("minimal").camera else {
        panic!("replay")
    };
    assert_eq!(rep.max_pixels, crate::capture::decode::DEFAULT_MAX_PIXELS);
    let with =
        |line: &str| MINIMAL.replace("path = \"frames\"", &format!("path = \"frames\"\n{line}"));
    let CameraConfig::Replay(rep) = Config::from_str(&with("max_pixels = 640000"))
        .expect("limit")
        .camera
    else {
        panic!("replay")
    };
    assert_eq!(rep.max_pixels, 640_000);
    let e = Config::from_str(&with("max_pixels = 0")).expect_err("zero");
    assert!(e.to_string().contains("camera.max_pixels"), "{e}");
    let v4l2 = with("max_pixels = 640000").replace(
        "source = \"replay\"\npath = \"frames\"",
        "source = \"v4l2\"",
    );
    let e = Config::from_str(&v4l2).expect_err("v4l2 has its negotiated format");
    assert!(e.to_string().contains("camera.max_pixels"), "{e}");
}

#[test]
fn defaults_are_what_a_user_expects() {
    let cfg = Config::from_str(MINIMAL).expect("minimal config");
    assert_eq!(cfg.failsafe.policy, FailSafePolicy::Reject);
    assert_eq!(cfg.failsafe.frame_budget, DEFAULT_FRAME_BUDGET);
    assert_eq!(cfg.trigger, TriggerConfig::FreeRun);
    assert_eq!(cfg.model.precision, Precision::F32);
    assert_eq!(cfg.model.sensitivity, 1.0);
    assert_eq!(cfg.http.listen.to_string(), DEFAULT_HTTP_LISTEN);
    assert_eq!(cfg.log.level, log::LevelFilter::Info);
    assert_eq!(cfg.archive, None);
    assert_eq!(cfg.roi, None);
}

#[test]
fn unknown_key_names_its_line_and_key() {
    let text = MINIMAL.replace("pulse_ms = 50", "pulse_ms = 50\npuls_ms = 60");
    let e = err(&text);
    assert_eq!(e.line(), Some(12), "{e}");
    assert_eq!(e.field(), Some("reject.puls_ms"), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("<string>:12:1: "), "{msg}");
    assert!(msg.contains("unknown field `puls_ms`"), "{msg}");
}

#[test]
fn unknown_section_is_refused() {
    let e = err(&format!("{MINIMAL}\n[camra]\nx = 1\n"));
    assert_eq!(e.line(), Some(14), "{e}");
    assert!(e.to_string().contains("unknown field `camra`"), "{e}");
}

#[test]
fn bad_value_names_its_line_and_reason() {
    let text = MINIMAL.replace("delay_ms = 300", "delay_ms = -5");
    let e = err(&text);
    assert_eq!(e.line(), Some(12), "{e}");
    assert_eq!(e.field(), Some("reject.delay_ms"), "{e}");

    let text = MINIMAL.replace("actuator = \"log-only\"", "actuator = \"relay\"");
    let e = err(&text);
    assert_eq!(e.line(), Some(10), "{e}");
    assert!(e.to_string().contains("relay"), "{e}");

    let text = MINIMAL.replace("pulse_ms = 50", "pulse_ms = \"fast\"");
    let e = err(&text);
    assert_eq!(
        (e.line(), e.field()),
        (Some(11), Some("reject.pulse_ms")),
        "{e}"
    );
}

#[test]
fn syntax_error_names_its_line() {
    let text = MINIMAL.replace("pulse_ms = 50", "pulse_ms = = 50");
    let e = err(&text);
    assert_eq!(e.line(), Some(11), "{e}");
}

#[test]
fn missing_required_key_is_reported() {
    let text = MINIMAL.replace("bundle = \"models/bundles/x\"", "");
    let e = err(&text);
    assert!(e.to_string().contains("missing field `bundle`"), "{e}");
    // Reported at the section it is missing from.
    assert_eq!((e.line(), e.field()), (Some(6), Some("model")), "{e}");
}

#[test]
fn semantic_errors_name_line_and_key() {
    let e = err(&MINIMAL.replace("pulse_ms = 50", "pulse_ms = 0"));
    assert_eq!(
        (e.line(), e.field()),
        (Some(11), Some("reject.pulse_ms")),
        "{e}"
    );

    let e = err(&MINIMAL.replace(
        "delay_ms = 300",
        "delay_ms = 300\n[failsafe]\nframe_budget_ms = 400",
    ));
    assert_eq!(e.line(), Some(14), "{e}");
    assert_eq!(e.field(), Some("failsafe.frame_budget_ms"), "{e}");
    assert!(e.to_string().contains("passed the reject flap"), "{e}");

    // gpio actuator without a line: reported at the [reject] header.
    let e = err(&MINIMAL.replace("actuator = \"log-only\"", "actuator = \"gpio\""));
    assert_eq!((e.line(), e.field()), (Some(9), Some("reject.line")), "{e}");

    // a replay-only key on a camera
    let e = err(&MINIMAL.replace(
        "path = \"frames\"",
        "path = \"frames\"\ndevice = \"/dev/video0\"",
    ));
    assert_eq!(
        (e.line(), e.field()),
        (Some(5), Some("camera.device")),
        "{e}"
    );

    let e = err(&MINIMAL.replace(
        "delay_ms = 300",
        "delay_ms = 300\n[http]\nlisten = \"localhost\"",
    ));
    assert_eq!(
        (e.line(), e.field()),
        (Some(14), Some("http.listen")),
        "{e}"
    );
}

#[test]
fn roi_must_lie_inside_the_camera_image() {
    let text = r#"
[camera]
source = "v4l2"
width = 640
height = 480

[roi]
x = 600
y = 0
width = 100
height = 100

[model]
bundle = "b"

[reject]
line = "GPIO17"
pulse_ms = 50
delay_ms = 300
"#;
    let e = err(text);
    assert_eq!((e.line(), e.field()), (Some(10), Some("roi.width")), "{e}");
    assert!(e.to_string().contains("outside"), "{e}");
    let ok = text.replace("x = 600", "x = 540");
    let cfg = Config::from_str(&ok).expect("roi inside");
    assert_eq!(
        cfg.roi,
        Some(Roi {
            x: 540,
            y: 0,
            width: 100,
            height: 100
        })
    );
}

#[test]
fn exposure_accepts_auto_or_positive_time() {
    let base = "[camera]\nsource = \"v4l2\"\nwidth = 640\nheight = 480\nexposure = EXP\n\
                [model]\nbundle = \"b\"\n[reject]\nline = \"GPIO17\"\npulse_ms = 5\ndelay_ms = 300\n";
    let cam = |text: &str| match Config::from_str(text).map(|c| c.camera) {
        Ok(CameraConfig::V4l2(c)) => c.exposure,
        other => panic!("{other:?}"),
    };
    assert_eq!(cam(&base.replace("EXP", "\"auto\"")), Some(Exposure::Auto));
    assert_eq!(
        cam(&base.replace("EXP", "150")),
        Some(Exposure::Manual(150))
    );
    let e = err(&base.replace("EXP", "-3"));
    assert_eq!(
        (e.line(), e.field()),
        (Some(5), Some("camera.exposure")),
        "{e}"
    );
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, MINIMAL.replace("pulse_ms = 50", "pulse_ms = 0")).expect("write");
    let e = Config::load(&path).expect_err("pulse 0");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:11:", path.display())), "{msg}");
    let e = Config::load(dir.path().join("missing.toml")).expect_err("missing");
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

#[test]
fn precision_is_the_bundle_precision() {
    let text = MINIMAL.replace("[model]", "[model]\nprecision = \"int8\"");
    let cfg = Config::from_str(&text).expect("int8");
    assert_eq!(cfg.model.precision, ustad_core::bundle::Precision::Int8);
    let e = err(&MINIMAL.replace("[model]", "[model]\nprecision = \"f64\""));
    assert_eq!(
        (e.line(), e.field()),
        (Some(7), Some("model.precision")),
        "{e}"
    );
}

#[test]
fn location_counts_lines_and_characters() {
    assert_eq!(location("a\nbé = 1", 5), Location { line: 2, column: 3 });
    assert_eq!(location("abc", 0), Location { line: 1, column: 1 });
}
