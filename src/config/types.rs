//! The validated configuration: fully defaulted, with enums that make invalid combinations
//! unrepresentable.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;
pub use crate::actuate::{Edge, GpioOutputConfig, GpioTriggerConfig};
pub use crate::capture::{CameraConfig, Exposure, PixelFormat, ReplayConfig, V4l2Config};

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
