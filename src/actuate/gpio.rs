//! Real GPIO lines through the Linux GPIO character device (uAPI v2, `gpiocdev`).
//!
//! Lines are looked up **by name** (`GPIO17`, as `gpioinfo` lists them), optionally on one
//! chip: offsets and chip numbers change between boards and kernel versions (Pi 5 moved the
//! header to another chip), names do not. The deprecated sysfs interface and uAPI v1
//! (`gpio-cdev`, `linux-embedded-hal`, `rppal`) are not used.
//!
//! - [`open_reject_output`]: the reject line as an `embedded_hal` `OutputPin`
//!   (`gpiocdev-embedded-hal`), requested **inactive** so that taking the line never fires the
//!   flap; active-low wiring is handled by the kernel's active-low flag, so "high" always means
//!   "reject".
//! - [`GpioTrigger`]: a part-present sensor input with edge events, kernel `CLOCK_MONOTONIC`
//!   timestamps (the daemon's clock), kernel debounce where available plus a software
//!   [`Debouncer`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gpiocdev::Request;
use gpiocdev::line::{EdgeDetection, EventClock, Offset, Value};

use crate::actuate::trigger::{Debouncer, EdgeKind, Trigger, TriggerError, TriggerEvent};
use crate::actuate::{Edge, GpioOutputConfig, GpioTriggerConfig};
use crate::clock::Timestamp;

/// The reject output: a single-line request wrapped for `embedded_hal`.
pub type GpioOutput = gpiocdev_embedded_hal::OutputPin;

/// Why a GPIO line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// No chip has a line of that name.
    #[error(
        "no GPIO line named `{line}`{}; available chips: {chips}",
        on_chip(chip)
    )]
    LineNotFound {
        /// The name looked for.
        line: String,
        /// The chip searched, if one was given.
        chip: Option<PathBuf>,
        /// Chips present, for the message.
        chips: String,
    },
    /// The kernel refused the request or an operation on it (line busy, no permission...).
    #[error("GPIO line `{line}` ({context}): {source}")]
    Line {
        /// The line name.
        line: String,
        /// What we were doing.
        context: &'static str,
        /// The library error.
        source: gpiocdev::Error,
    },
    /// The `embedded-hal` wrapper refused the request.
    #[error("GPIO line `{line}`: {source}")]
    Hal {
        /// The line name.
        line: String,
        /// The wrapper's error.
        source: gpiocdev_embedded_hal::Error,
    },
}

fn on_chip(chip: &Option<PathBuf>) -> String {
    chip.as_ref()
        .map_or(String::new(), |c| format!(" on {}", c.display()))
}

impl From<GpioError> for TriggerError {
    fn from(e: GpioError) -> Self {
        let line = match &e {
            GpioError::LineNotFound { line, .. }
            | GpioError::Line { line, .. }
            | GpioError::Hal { line, .. } => line.clone(),
        };
        TriggerError::Line {
            line,
            message: e.to_string(),
        }
    }
}

/// `gpiochip0` → `/dev/gpiochip0`; paths are kept.
pub fn chip_path(chip: &Path) -> PathBuf {
    if chip.components().count() == 1 && !chip.has_root() {
        Path::new("/dev").join(chip)
    } else {
        chip.to_path_buf()
    }
}

/// Finds a line by name: on `chip` if given, else on all chips. Returns the chip and offset.
pub fn find_line(name: &str, chip: Option<&Path>) -> Result<(PathBuf, Offset), GpioError> {
    let not_found = || GpioError::LineNotFound {
        line: name.to_string(),
        chip: chip.map(chip_path),
        chips: gpiocdev::chip::chips()
            .map(|c| {
                if c.is_empty() {
                    "none".to_string()
                } else {
                    c.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            })
            .unwrap_or_else(|e| format!("cannot list ({e})")),
    };
    match chip {
        None => gpiocdev::find_named_line(name)
            .map(|found| (found.chip, found.info.offset))
            .ok_or_else(not_found),
        Some(chip) => {
            let path = chip_path(chip);
            let c = gpiocdev::chip::Chip::from_path(&path).map_err(|source| GpioError::Line {
                line: name.to_string(),
                context: "open chip",
                source,
            })?;
            c.find_line_info(name)
                .map(|info| (path, info.offset))
                .ok_or_else(not_found)
        }
    }
}

/// Requests the reject output line, **inactive** from the first instant.
pub fn open_reject_output(cfg: &GpioOutputConfig) -> Result<GpioOutput, GpioError> {
    let (chip, offset) = find_line(&cfg.line, cfg.chip.as_deref())?;
    let mut builder = Request::builder();
    builder
        .on_chip(chip)
        .with_consumer("ustad-reject")
        .with_line(offset)
        .as_output(Value::Inactive);
    if !cfg.active_high {
        builder.as_active_low();
    }
    let req = builder.request().map_err(|source| GpioError::Line {
        line: cfg.line.clone(),
        context: "request as output",
        source,
    })?;
    GpioOutput::try_from(req).map_err(|source| GpioError::Hal {
        line: cfg.line.clone(),
        source,
    })
}

/// A part-present sensor on a GPIO input.
#[derive(Debug)]
pub struct GpioTrigger {
    req: Request,
    line: String,
    debouncer: Debouncer,
}

impl GpioTrigger {
    /// Requests the input line with edge detection and monotonic kernel timestamps.
    pub fn open(cfg: &GpioTriggerConfig) -> Result<Self, GpioError> {
        let (chip, offset) = find_line(&cfg.line, cfg.chip.as_deref())?;
        let edge = match cfg.edge {
            Edge::Rising => EdgeDetection::RisingEdge,
            Edge::Falling => EdgeDetection::FallingEdge,
            Edge::Both => EdgeDetection::BothEdges,
        };
        let mut builder = Request::builder();
        builder
            .on_chip(chip)
            .with_consumer("ustad-trigger")
            .with_line(offset)
            .as_input()
            .with_edge_detection(edge)
            .with_event_clock(EventClock::Monotonic);
        if !cfg.debounce.is_zero() {
            builder.with_debounce_period(cfg.debounce);
        }
        let req = builder.request().map_err(|source| GpioError::Line {
            line: cfg.line.clone(),
            context: "request as input with edge detection",
            source,
        })?;
        Ok(GpioTrigger {
            req,
            line: cfg.line.clone(),
            debouncer: Debouncer::new(cfg.debounce),
        })
    }

    fn error(&self, context: &'static str, source: gpiocdev::Error) -> TriggerError {
        GpioError::Line {
            line: self.line.clone(),
            context,
            source,
        }
        .into()
    }
}

impl Trigger for GpioTrigger {
    fn wait(&mut self, timeout: Duration) -> Result<Option<TriggerEvent>, TriggerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = self
                .req
                .wait_edge_event(left)
                .map_err(|e| self.error("wait for edge", e))?;
            if !ready {
                return Ok(None);
            }
            let event = self
                .req
                .read_edge_event()
                .map_err(|e| self.error("read edge event", e))?;
            let edge = match event.kind {
                gpiocdev::line::EdgeKind::Rising => EdgeKind::Rising,
                gpiocdev::line::EdgeKind::Falling => EdgeKind::Falling,
            };
            if let Some(accepted) = self
                .debouncer
                .accept(Timestamp::from_nanos(event.timestamp_ns), edge)
            {
                return Ok(Some(accepted));
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuate::{PulseTiming, RejectScheduler};
    use crate::clock::{Clock, MonotonicClock};
    use ustad_core::judge::decide::{FailSafePolicy, Verdict};

    #[test]
    fn chip_names_become_device_paths() {
        assert_eq!(
            chip_path(Path::new("gpiochip0")),
            PathBuf::from("/dev/gpiochip0")
        );
        assert_eq!(
            chip_path(Path::new("/dev/gpiochip4")),
            PathBuf::from("/dev/gpiochip4")
        );
    }

    #[test]
    fn unknown_line_is_a_clear_error() {
        let e = find_line("USTAD_NO_SUCH_LINE", None).expect_err("no such line");
        let msg = e.to_string();
        assert!(msg.contains("USTAD_NO_SUCH_LINE"), "{msg}");
        assert!(msg.contains("available chips"), "{msg}");
    }

    /// Pulses GPIO17 three times through the scheduler; watch it with a LED or `gpiomon`.
    #[test]
    #[ignore = "needs a board with a GPIO line named GPIO17 (Raspberry Pi)"]
    fn real_board_reject_pulses() {
        let out = open_reject_output(&GpioOutputConfig {
            line: "GPIO17".into(),
            chip: None,
            active_high: true,
        })
        .expect("GPIO17");
        let clock = MonotonicClock::new();
        let timing = PulseTiming {
            delay: Duration::from_millis(100),
            pulse: Duration::from_millis(200),
        };
        let mut s = RejectScheduler::new(out, clock, "GPIO17", timing, FailSafePolicy::Reject)
            .expect("scheduler");
        let now = clock.now();
        for i in 0..3u64 {
            s.submit(i, now + Duration::from_millis(500 * i), Verdict::Reject)
                .expect("submit");
        }
        s.drain().expect("drain");
        assert_eq!(s.stats().pulses, 3);
    }

    /// Waits 10 s for a rising edge on GPIO27 (a button or light barrier).
    #[test]
    #[ignore = "needs a board with a GPIO line named GPIO27 and someone to press a button"]
    fn real_board_trigger_edge() {
        let mut t = GpioTrigger::open(&GpioTriggerConfig {
            line: "GPIO27".into(),
            chip: None,
            edge: Edge::Rising,
            debounce: Duration::from_millis(5),
        })
        .expect("GPIO27");
        let event = t
            .wait(Duration::from_secs(10))
            .expect("wait")
            .expect("an edge within 10 s");
        let age = MonotonicClock::new().now() - event.timestamp;
        assert!(age < Duration::from_secs(1), "kernel timestamp {age:?} old");
    }
}
