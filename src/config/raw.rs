//! Serde structs that mirror the file, every optional key an `Option`.
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) camera: RawCamera,
    pub(super) roi: Option<Roi>,
    pub(super) model: RawModel,
    #[serde(default)]
    pub(super) trigger: RawTrigger,
    pub(super) reject: RawReject,
    #[serde(default)]
    pub(super) failsafe: RawFailSafe,
    pub(super) archive: Option<RawArchive>,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) log: RawLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(super) enum SourceKind {
    #[serde(rename = "v4l2")]
    V4l2,
    #[serde(rename = "replay")]
    Replay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCamera {
    pub(super) source: SourceKind,
    // v4l2
    pub(super) device: Option<PathBuf>,
    pub(super) pixel_format: Option<PixelFormat>,
    pub(super) width: Option<u32>,
    pub(super) height: Option<u32>,
    pub(super) buffers: Option<u32>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) exposure: Option<Exposure>,
    pub(super) gain: Option<i64>,
    pub(super) controls: Option<BTreeMap<String, ControlValue>>,
    pub(super) reconnect_initial_ms: Option<u64>,
    pub(super) reconnect_max_ms: Option<u64>,
    // both
    pub(super) fps: Option<f64>,
    // replay
    pub(super) path: Option<PathBuf>,
    #[serde(rename = "loop")]
    pub(super) looping: Option<bool>,
    pub(super) max_pixels: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) bundle: PathBuf,
    #[serde(default = "default_precision")]
    pub(super) precision: Precision,
    pub(super) threshold: Option<f32>,
    #[serde(default = "one")]
    pub(super) sensitivity: f32,
}

pub(super) fn default_precision() -> Precision {
    Precision::F32
}

pub(super) fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub(super) enum TriggerMode {
    #[default]
    #[serde(rename = "free-run")]
    FreeRun,
    #[serde(rename = "gpio")]
    Gpio,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    #[serde(default)]
    pub(super) mode: TriggerMode,
    pub(super) line: Option<String>,
    pub(super) chip: Option<PathBuf>,
    pub(super) edge: Option<Edge>,
    pub(super) debounce_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub(super) enum ActuatorKind {
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
pub(super) struct RawReject {
    #[serde(default)]
    pub(super) actuator: ActuatorKind,
    pub(super) line: Option<String>,
    pub(super) chip: Option<PathBuf>,
    #[serde(default = "yes")]
    pub(super) active_high: bool,
    pub(super) pulse_ms: u64,
    pub(super) delay_ms: u64,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailSafe {
    #[serde(default)]
    pub(super) policy: FailSafePolicy,
    pub(super) frame_budget_ms: Option<u64>,
}

/// Default frame budget when the file gives none.
pub const DEFAULT_FRAME_BUDGET: Duration = Duration::from_millis(200);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArchive {
    pub(super) dir: PathBuf,
    #[serde(default = "default_max_bytes")]
    pub(super) max_bytes: u64,
    #[serde(default = "yes")]
    pub(super) keep_rejected: bool,
}

pub(super) fn default_max_bytes() -> u64 {
    1 << 30
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawLevel {
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
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) level: RawLevel,
}

/// A V4L2 control value: an integer, or a boolean written as `true`/`false` (stored as 1/0,
/// which is what V4L2 boolean controls take).
#[derive(Debug)]
pub(super) struct ControlValue(pub(super) i64);

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
