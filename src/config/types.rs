//! The validated configuration: fully defaulted, with enums that make invalid combinations
//! unrepresentable.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

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
