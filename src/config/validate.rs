//! Semantic validation: raw structs to [`Config`], with the rules that span fields.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// A semantic error: the key path it is about and why.
pub(super) struct Problem {
    pub(super) path: Vec<String>,
    pub(super) message: String,
}

pub(super) fn problem(path: &[&str], message: impl Into<String>) -> Problem {
    Problem {
        path: path.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    }
}

/// Frame rates a line can have: one frame every 100 s up to 1000 frames/s. Outside this a
/// typo (`1e-30`) would overflow the frame period.
pub(super) const FPS_RANGE: std::ops::RangeInclusive<f64> = 0.01..=1000.0;

pub(super) fn positive_fps(path: &[&str], fps: Option<f64>) -> Result<Option<f64>, Problem> {
    match fps {
        Some(f) if !(f.is_finite() && FPS_RANGE.contains(&f)) => Err(problem(
            path,
            format!(
                "must be a frame rate between {} and {} frames/s, got {f}",
                FPS_RANGE.start(),
                FPS_RANGE.end()
            ),
        )),
        other => Ok(other),
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, Problem> {
    let camera = validate_camera(raw.camera)?;

    let roi = match raw.roi {
        None => None,
        Some(roi) => {
            if roi.width == 0 || roi.height == 0 {
                let key = if roi.width == 0 { "width" } else { "height" };
                return Err(problem(&["roi", key], "must be > 0"));
            }
            if let CameraConfig::V4l2(cam) = &camera {
                let right = u64::from(roi.x) + u64::from(roi.width);
                let bottom = u64::from(roi.y) + u64::from(roi.height);
                if right > u64::from(cam.width) {
                    return Err(problem(
                        &["roi", "width"],
                        format!(
                            "region x + width = {right} lies outside the {}-pixel-wide camera image",
                            cam.width
                        ),
                    ));
                }
                if bottom > u64::from(cam.height) {
                    return Err(problem(
                        &["roi", "height"],
                        format!(
                            "region y + height = {bottom} lies outside the {}-pixel-high camera image",
                            cam.height
                        ),
                    ));
                }
            }
            Some(roi)
        }
    };

    let m = raw.model;
    if let Some(t) = m.threshold
        && !(t.is_finite() && t > 0.0)
    {
        return Err(problem(
            &["model", "threshold"],
            format!(
                "must be a finite number > 0 (an image score is the upper tail of a map normalised to mean 0 on good parts: a threshold ≤ 0 rejects nearly every part), got {t}"
            ),
        ));
    }
    if !(m.sensitivity.is_finite() && m.sensitivity > 0.0) {
        return Err(problem(
            &["model", "sensitivity"],
            format!("must be > 0 (1.0 = as calibrated), got {}", m.sensitivity),
        ));
    }
    if m.bundle.as_os_str().is_empty() {
        return Err(problem(&["model", "bundle"], "must not be empty"));
    }
    let model = ModelConfig {
        bundle: m.bundle,
        precision: m.precision,
        threshold: m.threshold,
        sensitivity: m.sensitivity,
    };

    let t = raw.trigger;
    let trigger = match t.mode {
        TriggerMode::FreeRun => {
            for (key, present) in [
                ("line", t.line.is_some()),
                ("chip", t.chip.is_some()),
                ("edge", t.edge.is_some()),
                ("debounce_ms", t.debounce_ms.is_some()),
            ] {
                if present {
                    return Err(problem(
                        &["trigger", key],
                        "only applies to mode = \"gpio\" (mode is \"free-run\")",
                    ));
                }
            }
            TriggerConfig::FreeRun
        }
        TriggerMode::Gpio => {
            let line = nonempty_line(t.line, "trigger")?;
            TriggerConfig::Gpio(GpioTriggerConfig {
                line,
                chip: t.chip,
                edge: t.edge.unwrap_or(Edge::Rising),
                debounce: Duration::from_millis(t.debounce_ms.unwrap_or(5)),
            })
        }
    };

    let r = raw.reject;
    if r.pulse_ms == 0 {
        return Err(problem(&["reject", "pulse_ms"], "must be > 0"));
    }
    let actuator = match r.actuator {
        ActuatorKind::Gpio => ActuatorConfig::Gpio(GpioOutputConfig {
            line: nonempty_line(r.line, "reject")?,
            chip: r.chip,
            active_high: r.active_high,
        }),
        ActuatorKind::LogOnly => ActuatorConfig::LogOnly { line: r.line },
        ActuatorKind::Mock => ActuatorConfig::Mock,
    };
    let reject = RejectConfig {
        actuator,
        pulse: Duration::from_millis(r.pulse_ms),
        delay: Duration::from_millis(r.delay_ms),
    };

    let f = raw.failsafe;
    let frame_budget = match f.frame_budget_ms {
        Some(0) => return Err(problem(&["failsafe", "frame_budget_ms"], "must be > 0")),
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_FRAME_BUDGET.min(reject.delay),
    };
    if frame_budget > reject.delay {
        let path: &[&str] = if f.frame_budget_ms.is_some() {
            &["failsafe", "frame_budget_ms"]
        } else {
            &["reject", "delay_ms"]
        };
        return Err(problem(
            path,
            format!(
                "frame budget {} ms exceeds reject.delay_ms = {} ms: a verdict could arrive after \
                 the part has passed the reject flap",
                frame_budget.as_millis(),
                reject.delay.as_millis()
            ),
        ));
    }
    if frame_budget.is_zero() {
        return Err(problem(
            &["reject", "delay_ms"],
            "is 0, which leaves no time to judge a part; set reject.delay_ms to the travel time \
             from camera to flap",
        ));
    }
    let failsafe = FailSafeConfig {
        policy: f.policy,
        frame_budget,
    };

    let archive = match raw.archive {
        None => None,
        Some(a) => {
            if a.dir.as_os_str().is_empty() {
                return Err(problem(&["archive", "dir"], "must not be empty"));
            }
            if a.max_bytes == 0 {
                return Err(problem(&["archive", "max_bytes"], "must be > 0"));
            }
            Some(ArchiveConfig {
                dir: a.dir,
                max_bytes: a.max_bytes,
                keep_rejected: a.keep_rejected,
            })
        }
    };

    let listen_text = raw
        .http
        .listen
        .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|e| {
        problem(
            &["http", "listen"],
            format!("`{listen_text}` is not an address like 127.0.0.1:9180: {e}"),
        )
    })?;

    let level = match raw.log.level {
        RawLevel::Off => log::LevelFilter::Off,
        RawLevel::Error => log::LevelFilter::Error,
        RawLevel::Warn => log::LevelFilter::Warn,
        RawLevel::Info => log::LevelFilter::Info,
        RawLevel::Debug => log::LevelFilter::Debug,
        RawLevel::Trace => log::LevelFilter::Trace,
    };

    Ok(Config {
        camera,
        roi,
        model,
        trigger,
        reject,
        failsafe,
        archive,
        http: HttpConfig { listen },
        log: LogConfig { level },
    })
}

pub(super) fn nonempty_line(line: Option<String>, section: &str) -> Result<String, Problem> {
    match line {
        Some(l) if !l.trim().is_empty() => Ok(l),
        Some(_) => Err(problem(&[section, "line"], "must not be empty")),
        None => Err(problem(
            &[section, "line"],
            "is required: the GPIO line name as `gpioinfo` lists it, e.g. \"GPIO17\"",
        )),
    }
}

pub(super) fn validate_camera(c: RawCamera) -> Result<CameraConfig, Problem> {
    match c.source {
        SourceKind::V4l2 => {
            for (key, present) in [
                ("path", c.path.is_some()),
                ("loop", c.looping.is_some()),
                ("max_pixels", c.max_pixels.is_some()),
            ] {
                if present {
                    return Err(problem(
                        &["camera", key],
                        "only applies to source = \"replay\" (source is \"v4l2\")",
                    ));
                }
            }
            let width = c.width.ok_or_else(|| {
                problem(&["camera", "width"], "is required for source = \"v4l2\"")
            })?;
            let height = c.height.ok_or_else(|| {
                problem(&["camera", "height"], "is required for source = \"v4l2\"")
            })?;
            if width == 0 {
                return Err(problem(&["camera", "width"], "must be > 0"));
            }
            if height == 0 {
                return Err(problem(&["camera", "height"], "must be > 0"));
            }
            let pixel_format = c.pixel_format.unwrap_or(PixelFormat::Mjpeg);
            if pixel_format == PixelFormat::Yuyv && !width.is_multiple_of(2) {
                return Err(problem(
                    &["camera", "width"],
                    "must be even for YUYV (two pixels share one chroma sample)",
                ));
            }
            let buffers = c.buffers.unwrap_or(4);
            if !(2..=32).contains(&buffers) {
                return Err(problem(
                    &["camera", "buffers"],
                    format!("must be between 2 and 32, got {buffers}"),
                ));
            }
            let timeout_ms = c.timeout_ms.unwrap_or(1000);
            if timeout_ms == 0 {
                return Err(problem(&["camera", "timeout_ms"], "must be > 0"));
            }
            let initial = c.reconnect_initial_ms.unwrap_or(100);
            let max = c.reconnect_max_ms.unwrap_or(5000);
            if initial == 0 {
                return Err(problem(&["camera", "reconnect_initial_ms"], "must be > 0"));
            }
            if max < initial {
                return Err(problem(
                    &["camera", "reconnect_max_ms"],
                    format!("must be >= reconnect_initial_ms ({initial})"),
                ));
            }
            Ok(CameraConfig::V4l2(V4l2Config {
                device: c.device.unwrap_or_else(|| PathBuf::from("/dev/video0")),
                pixel_format,
                width,
                height,
                fps: positive_fps(&["camera", "fps"], c.fps)?,
                buffers,
                timeout: Duration::from_millis(timeout_ms),
                exposure: c.exposure,
                gain: c.gain,
                controls: c
                    .controls
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
                reconnect_initial: Duration::from_millis(initial),
                reconnect_max: Duration::from_millis(max),
            }))
        }
        SourceKind::Replay => {
            for (key, present) in [
                ("device", c.device.is_some()),
                ("pixel_format", c.pixel_format.is_some()),
                ("width", c.width.is_some()),
                ("height", c.height.is_some()),
                ("buffers", c.buffers.is_some()),
                ("timeout_ms", c.timeout_ms.is_some()),
                ("exposure", c.exposure.is_some()),
                ("gain", c.gain.is_some()),
                ("controls", c.controls.is_some()),
                ("reconnect_initial_ms", c.reconnect_initial_ms.is_some()),
                ("reconnect_max_ms", c.reconnect_max_ms.is_some()),
            ] {
                if present {
                    return Err(problem(
                        &["camera", key],
                        "only applies to source = \"v4l2\" (source is \"replay\")",
                    ));
                }
            }
            let path = c.path.ok_or_else(|| {
                problem(
                    &["camera", "path"],
                    "is required for source = \"replay\": a folder of images",
                )
            })?;
            if path.as_os_str().is_empty() {
                return Err(problem(&["camera", "path"], "must not be empty"));
            }
            Ok(CameraConfig::Replay(ReplayConfig {
                path,
                fps: positive_fps(&["camera", "fps"], c.fps)?,
                looping: c.looping.unwrap_or(false),
                max_pixels: match c.max_pixels {
                    Some(0) => {
                        return Err(problem(
                            &["camera", "max_pixels"],
                            "must be at least 1 (the largest frame decoded, in pixels)",
                        ));
                    }
                    Some(n) => n,
                    None => crate::capture::decode::DEFAULT_MAX_PIXELS,
                },
            }))
        }
    }
}
