//! What the GPIO lines need to open: the reject output and the part-present input, after
//! validation. The config layer builds these; the drivers never read the config file's types.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
