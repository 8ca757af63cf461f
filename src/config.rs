//! The daemon configuration, `ustad.toml`.
//!
//! A line controller edits this file by hand, often on the machine itself, and a typo must not
//! turn into a silently ignored setting on a production line (a misspelt `delay_ms` would kick
//! the wrong part). So loading is strict:
//!
//! - unknown keys are refused (`deny_unknown_fields` on every section);
//! - bad values are refused with the reason;
//! - settings that contradict each other or the hardware (a region of interest outside the
//!   camera image, a frame budget longer than the time to the reject flap) are refused too;
//! - every error names the file, the line and column, and the dotted key (`reject.pulse_ms`).
//!
//! Parsing happens in two steps: serde fills private `Raw*` structs that mirror the file (all
//! optional fields as `Option`), then [`validate`] turns them into the public, fully-defaulted
//! [`Config`] whose enums make invalid combinations unrepresentable (a replay source has no
//! device path). Line numbers for the second step come from the document's spans, found again
//! by key path.
//!
//! Relative paths in the file are kept as written, i.e. relative to the daemon's working
//! directory (the repository root for `ustad run --config config/replay.toml`; set
//! `WorkingDirectory=` or use absolute paths under systemd).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Inference precision (`f32`, `f16`, `int8`): the bundle's own type, so the two cannot drift.
pub use crate::bundle::Precision;
use serde::de::{self, Deserializer, Visitor};

/// Where an error sits in the configuration text (1-based, column in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a key or value is wrong.
    #[error("{}", render_invalid(file, location, field.as_deref(), message))]
    Invalid {
        /// The file (or `<string>` for [`Config::from_str`]).
        file: PathBuf,
        /// Line and column, when the error could be placed.
        location: Option<Location>,
        /// The dotted key the error is about (`camera.width`), when known.
        field: Option<String>,
        /// The reason.
        message: String,
    },
    /// Well-formed, but what it names cannot be used here (found by `check-config`, which
    /// opens the bundle, the replay folder and the archive folder as `run` would).
    #[error("{}: `{field}`: {message}", file.display())]
    Unusable {
        /// The config file.
        file: PathBuf,
        /// The dotted key naming the unusable thing.
        field: String,
        /// Why it cannot be used.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line of the error, if it could be placed.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { location, .. } => location.map(|l| l.line),
            ConfigError::Read { .. } | ConfigError::Unusable { .. } => None,
        }
    }

    /// The dotted key the error is about, if known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => field.as_deref(),
            ConfigError::Unusable { field, .. } => Some(field),
            ConfigError::Read { .. } => None,
        }
    }
}

fn render_invalid(
    file: &Path,
    location: &Option<Location>,
    field: Option<&str>,
    message: &str,
) -> String {
    let mut s = file.display().to_string();
    if let Some(loc) = location {
        s.push_str(&format!(":{loc}"));
    }
    s.push_str(": ");
    if let Some(field) = field {
        s.push_str(&format!("`{field}`: "));
    }
    s.push_str(message);
    s
}

// ---------------------------------------------------------------------------------------------
// Public, validated configuration
// ---------------------------------------------------------------------------------------------

/// The whole daemon configuration, validated and with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where frames come from.
    pub camera: CameraConfig,
    /// The part of the frame that is judged; `None` = the whole frame.
    pub roi: Option<Roi>,
    /// The model bundle and how to run it.
    pub model: ModelConfig,
    /// When a frame is taken to be a part.
    pub trigger: TriggerConfig,
    /// The reject actuator and its timing.
    pub reject: RejectConfig,
    /// What happens to a part that could not be judged.
    pub failsafe: FailSafeConfig,
    /// Archive of rejected frames and per-part records; `None` = no archive.
    pub archive: Option<ArchiveConfig>,
    /// The observability endpoint.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
}

/// The frame source.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraConfig {
    /// A V4L2 camera (USB/UVC webcams, most industrial USB cameras).
    V4l2(V4l2Config),
    /// A folder of images played back as if a camera took them.
    Replay(ReplayConfig),
}

/// A V4L2 camera.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Config {
    /// Device node, e.g. `/dev/video0` (default) or a stable `/dev/v4l/by-id/...` link.
    pub device: PathBuf,
    /// Pixel format to request.
    pub pixel_format: PixelFormat,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frame rate to request; `None` keeps the driver's current rate.
    pub fps: Option<f64>,
    /// Number of mmap buffers (default 4).
    pub buffers: u32,
    /// How long to wait for a frame before the source reports a timeout (default 1000 ms).
    pub timeout: Duration,
    /// Exposure; `None` leaves the camera's setting alone.
    pub exposure: Option<Exposure>,
    /// Analogue gain; `None` leaves the camera's setting alone.
    pub gain: Option<i64>,
    /// Further controls by their V4L2 name (case-insensitive, e.g. `"Brightness"`).
    pub controls: BTreeMap<String, i64>,
    /// Reconnect back-off after the camera disappears: first wait.
    pub reconnect_initial: Duration,
    /// Reconnect back-off: longest wait between attempts.
    pub reconnect_max: Duration,
}

/// Camera exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Let the camera choose (aperture-priority auto exposure).
    Auto,
    /// Manual exposure time in V4L2 units of 100 µs (`exposure_time_absolute`).
    Manual(u32),
}

/// Pixel formats the daemon decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PixelFormat {
    /// Motion JPEG: compressed, the only way to get high resolutions at full rate over USB 2.
    #[serde(rename = "MJPEG", alias = "mjpeg", alias = "MJPG")]
    Mjpeg,
    /// Packed YUV 4:2:2: uncompressed, no compression artefacts, more USB bandwidth.
    #[serde(rename = "YUYV", alias = "yuyv")]
    Yuyv,
}

/// A folder of images played back as frames.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// Folder; images in sub-folders are included, in sorted path order.
    pub path: PathBuf,
    /// Fixed frame rate; `None` = as fast as the pipeline takes them.
    pub fps: Option<f64>,
    /// Start again from the first image after the last one.
    pub looping: bool,
    /// Largest image decoded, in pixels (`camera.max_pixels`); larger files are corrupt
    /// frames, refused before any pixel buffer is allocated.
    pub max_pixels: u64,
}

/// Region of interest in camera pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width, > 0.
    pub width: u32,
    /// Height, > 0.
    pub height: u32,
}

/// The model bundle and how to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Bundle folder (holding `bundle.toml`).
    pub bundle: PathBuf,
    /// Arithmetic precision to run the networks in.
    pub precision: Precision,
    /// Replaces the bundle's calibrated image-score threshold.
    pub threshold: Option<f32>,
    /// Divides the threshold: 1.0 = as calibrated, > 1 rejects more, < 1 rejects less.
    pub sensitivity: f32,
}

/// When a frame is taken to be a part.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerConfig {
    /// Every frame is judged as a part.
    FreeRun,
    /// A part-present sensor on a GPIO input line triggers judging.
    Gpio(GpioTriggerConfig),
}

/// A part-present sensor on a GPIO input.
#[derive(Debug, Clone, PartialEq)]
pub struct GpioTriggerConfig {
    /// Line name as the kernel knows it (`gpioinfo`), e.g. `GPIO27`.
    pub line: String,
    /// Chip (`gpiochip0` or `/dev/gpiochip0`); `None` searches all chips.
    pub chip: Option<PathBuf>,
    /// Which edge means "part present".
    pub edge: Edge,
    /// Edges closer than this to the previous accepted edge are ignored.
    pub debounce: Duration,
}

/// Signal edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// Inactive → active.
    Rising,
    /// Active → inactive.
    Falling,
    /// Either.
    Both,
}

/// The reject actuator and its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectConfig {
    /// What drives the flap.
    pub actuator: ActuatorConfig,
    /// How long the output stays active per reject.
    pub pulse: Duration,
    /// From capture (or trigger) time to the start of the pulse: the part's travel time from
    /// the camera to the flap.
    pub delay: Duration,
}

/// What drives the reject flap.
#[derive(Debug, Clone, PartialEq)]
pub enum ActuatorConfig {
    /// A GPIO output line.
    Gpio(GpioOutputConfig),
    /// Log what would be done; drives nothing (dry run, replay). `line` is only used in logs.
    LogOnly {
        /// Line name for the log messages, if given.
        line: Option<String>,
    },
    /// Record pulses in memory (tests).
    Mock,
}

/// A GPIO output line.
#[derive(Debug, Clone, PartialEq)]
pub struct GpioOutputConfig {
    /// Line name as the kernel knows it (`gpioinfo`), e.g. `GPIO17`.
    pub line: String,
    /// Chip (`gpiochip0` or `/dev/gpiochip0`); `None` searches all chips.
    pub chip: Option<PathBuf>,
    /// `true`: a reject drives the line high; `false`: low (active-low driver boards).
    pub active_high: bool,
}

/// What happens to a part that could not be judged (frame lost, corrupt, or too slow).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailSafeConfig {
    /// Reject (default) or pass unjudged parts.
    pub policy: FailSafePolicy,
    /// Time a frame may take from capture to verdict before the policy applies.
    pub frame_budget: Duration,
}

/// Fail-safe policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailSafePolicy {
    /// Reject parts that could not be judged: nothing unchecked ships (default).
    #[default]
    Reject,
    /// Pass them: for lines where a wrong reject costs more than a missed defect.
    Pass,
}

/// Archive of rejected frames and per-part records.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveConfig {
    /// Folder to write into.
    pub dir: PathBuf,
    /// Disk budget; the oldest files are deleted beyond it.
    pub max_bytes: u64,
    /// Keep the frames (and heatmaps) of rejected parts.
    pub keep_rejected: bool,
}

/// The observability endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// Listen address (default `127.0.0.1:9180`).
    pub listen: SocketAddr,
}

/// Logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Maximum level (default `info`).
    pub level: log::LevelFilter,
}

/// Default HTTP listen address: local only, so exposing metrics is a deliberate choice.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9180";

// ---------------------------------------------------------------------------------------------
// Raw serde structs: mirror the file
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    camera: RawCamera,
    roi: Option<Roi>,
    model: RawModel,
    #[serde(default)]
    trigger: RawTrigger,
    reject: RawReject,
    #[serde(default)]
    failsafe: RawFailSafe,
    archive: Option<RawArchive>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum SourceKind {
    #[serde(rename = "v4l2")]
    V4l2,
    #[serde(rename = "replay")]
    Replay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCamera {
    source: SourceKind,
    // v4l2
    device: Option<PathBuf>,
    pixel_format: Option<PixelFormat>,
    width: Option<u32>,
    height: Option<u32>,
    buffers: Option<u32>,
    timeout_ms: Option<u64>,
    exposure: Option<Exposure>,
    gain: Option<i64>,
    controls: Option<BTreeMap<String, ControlValue>>,
    reconnect_initial_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    // both
    fps: Option<f64>,
    // replay
    path: Option<PathBuf>,
    #[serde(rename = "loop")]
    looping: Option<bool>,
    max_pixels: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    bundle: PathBuf,
    #[serde(default = "default_precision")]
    precision: Precision,
    threshold: Option<f32>,
    #[serde(default = "one")]
    sensitivity: f32,
}

fn default_precision() -> Precision {
    Precision::F32
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
enum TriggerMode {
    #[default]
    #[serde(rename = "free-run")]
    FreeRun,
    #[serde(rename = "gpio")]
    Gpio,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    #[serde(default)]
    mode: TriggerMode,
    line: Option<String>,
    chip: Option<PathBuf>,
    edge: Option<Edge>,
    debounce_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
enum ActuatorKind {
    #[default]
    #[serde(rename = "gpio")]
    Gpio,
    #[serde(rename = "log-only")]
    LogOnly,
    #[serde(rename = "mock")]
    Mock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReject {
    #[serde(default)]
    actuator: ActuatorKind,
    line: Option<String>,
    chip: Option<PathBuf>,
    #[serde(default = "yes")]
    active_high: bool,
    pulse_ms: u64,
    delay_ms: u64,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFailSafe {
    #[serde(default)]
    policy: FailSafePolicy,
    frame_budget_ms: Option<u64>,
}

/// Default frame budget when the file gives none.
pub const DEFAULT_FRAME_BUDGET: Duration = Duration::from_millis(200);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    dir: PathBuf,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "yes")]
    keep_rejected: bool,
}

fn default_max_bytes() -> u64 {
    1 << 30
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum RawLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    level: RawLevel,
}

/// A V4L2 control value: an integer, or a boolean written as `true`/`false` (stored as 1/0,
/// which is what V4L2 boolean controls take).
#[derive(Debug)]
struct ControlValue(i64);

impl<'de> Deserialize<'de> for ControlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ControlValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ControlValue, E> {
                Ok(ControlValue(i64::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ControlValue, E> {
                Ok(ControlValue(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ControlValue, E> {
                i64::try_from(v)
                    .map(ControlValue)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Exposure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Exposure;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a positive exposure time in units of 100 µs")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Exposure, E> {
                if v.eq_ignore_ascii_case("auto") {
                    Ok(Exposure::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Exposure, E> {
                match u32::try_from(v) {
                    Ok(n) if n > 0 => Ok(Exposure::Manual(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Exposure, E> {
                match u32::try_from(v) {
                    Ok(n) if n > 0 => Ok(Exposure::Manual(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads and validates a configuration file. Errors name the file, line and key.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, path)
    }

    /// Parses and validates configuration text; errors name the file as `<string>`.
    #[allow(clippy::should_implement_trait)] // also provided as `FromStr`
    pub fn from_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("<string>"))
    }

    /// Parses and validates configuration text, naming `file` in errors.
    pub fn from_str_named(text: &str, file: impl AsRef<Path>) -> Result<Config, ConfigError> {
        parse(text, file.as_ref())
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Config::from_str(s)
    }
}

fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    // Spans of every key, for placing errors: also catches TOML syntax errors first.
    let doc = toml::de::DeTable::parse(text).map_err(|e| toml_error(text, file, &[], &e))?;
    let keys = flatten_keys(doc.get_ref());

    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, file, &keys, &e))?;
    validate(raw).map_err(|p| {
        let span = locate(&keys, &p.path);
        ConfigError::Invalid {
            file: file.to_path_buf(),
            location: span.map(|s| location(text, s.start)),
            field: Some(p.path.join(".")),
            message: p.message,
        }
    })
}

/// A key of the document with the spans of the key and its value.
struct KeySpan {
    path: Vec<String>,
    key: Range<usize>,
    value: Range<usize>,
}

fn flatten_keys(table: &toml::de::DeTable<'_>) -> Vec<KeySpan> {
    fn walk(table: &toml::de::DeTable<'_>, prefix: &[String], out: &mut Vec<KeySpan>) {
        for (k, v) in table.iter() {
            let mut path = prefix.to_vec();
            path.push(k.get_ref().to_string());
            out.push(KeySpan {
                path: path.clone(),
                key: k.span(),
                value: v.span(),
            });
            if let Some(t) = v.get_ref().as_table() {
                walk(t, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(table, &[], &mut out);
    out
}

/// The span of `path` in the document, or of its closest existing ancestor (a missing key is
/// reported at its section header).
fn locate(keys: &[KeySpan], path: &[String]) -> Option<Range<usize>> {
    (1..=path.len()).rev().find_map(|n| {
        keys.iter()
            .find(|k| k.path.as_slice() == &path[..n])
            .map(|k| k.key.clone())
    })
}

/// The key an error at byte `pos` is about: the key whose key or value holds `pos`, else the
/// last key starting before it.
fn key_at(keys: &[KeySpan], pos: usize) -> Option<&KeySpan> {
    let holding = keys
        .iter()
        .filter(|k| k.key.contains(&pos) || k.value.contains(&pos))
        .max_by_key(|k| k.path.len());
    holding.or_else(|| {
        keys.iter()
            .filter(|k| k.key.start <= pos)
            .max_by_key(|k| (k.key.start, k.path.len()))
    })
}

fn toml_error(text: &str, file: &Path, keys: &[KeySpan], e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let field = span
        .as_ref()
        .and_then(|s| key_at(keys, s.start))
        .map(|k| k.path.join("."));
    ConfigError::Invalid {
        file: file.to_path_buf(),
        location: span.map(|s| location(text, s.start)),
        field,
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn location(text: &str, pos: usize) -> Location {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    Location { line, column }
}

// ---------------------------------------------------------------------------------------------
// Semantic validation
// ---------------------------------------------------------------------------------------------

/// A semantic error: the key path it is about and why.
struct Problem {
    path: Vec<String>,
    message: String,
}

fn problem(path: &[&str], message: impl Into<String>) -> Problem {
    Problem {
        path: path.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    }
}

/// Frame rates a line can have: one frame every 100 s up to 1000 frames/s. Outside this a
/// typo (`1e-30`) would overflow the frame period.
const FPS_RANGE: std::ops::RangeInclusive<f64> = 0.01..=1000.0;

fn positive_fps(path: &[&str], fps: Option<f64>) -> Result<Option<f64>, Problem> {
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

fn validate(raw: RawConfig) -> Result<Config, Problem> {
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

fn nonempty_line(line: Option<String>, section: &str) -> Result<String, Problem> {
    match line {
        Some(l) if !l.trim().is_empty() => Ok(l),
        Some(_) => Err(problem(&[section, "line"], "must not be empty")),
        None => Err(problem(
            &[section, "line"],
            "is required: the GPIO line name as `gpioinfo` lists it, e.g. \"GPIO17\"",
        )),
    }
}

fn validate_camera(c: RawCamera) -> Result<CameraConfig, Problem> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
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
        assert_eq!(cfg.model.bundle, PathBuf::from("models/bundles/mtd-edge"));
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
        let with = |line: &str| {
            MINIMAL.replace("path = \"frames\"", &format!("path = \"frames\"\n{line}"))
        };
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
        assert_eq!(cfg.model.precision, crate::bundle::Precision::Int8);
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
}
