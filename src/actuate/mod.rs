//! The reject actuator: turning verdicts into pulses on an output line at the right time.
//!
//! A part is photographed, travels along the belt, and passes the reject flap `delay` later.
//! A defective part's pulse must start at *capture time + delay* and last `pulse`, while the
//! next parts are already being judged. [`RejectScheduler`] keeps those pulses:
//!
//! - several parts in flight, each pulse due at its own time;
//! - pulses that overlap or touch merge into one longer pulse, so a valve or flap is not
//!   chattered off and on between two neighbouring defective parts;
//! - the line is set **inactive (safe) at start**, on [`RejectScheduler::finish`] and on drop;
//! - on a graceful stop, pending pulses still fire ([`RejectScheduler::drain`]): the parts are
//!   already on the belt;
//! - a part that could not be judged comes with the fail-safe policy's verdict (reject by
//!   default, [`FailSafePolicy::verdict`]) and is counted as such;
//! - a part can be **armed** when it is captured ([`RejectScheduler::arm`]): if its verdict has
//!   not arrived by its deadline (capture + frame budget), the scheduler applies the fail-safe
//!   itself, in time for the part's pulse window, and a verdict that comes later is refused
//!   ([`Scheduled::Expired`]). A wedged or overloaded inference thread therefore cannot let a
//!   part pass the flap unjudged while its verdict waits in a queue.
//!
//! The scheduler never reads the time itself: it is driven by `poll(now)` and tells when it
//! next needs attention (`next_deadline`). Time comes from a [`Clock`], so tests run on a
//! [`crate::clock::ManualClock`] and check exact timings without sleeping.
//! [`RejectWorker`] runs a scheduler on its own thread for production.
//!
//! The line is any `embedded_hal::digital::OutputPin`: a GPIO line ([`gpio`], Linux, feature
//! `gpio`), [`LogPin`] for dry runs, [`RecordingPin`] for tests and replay runs.
//!
//! Files: `scheduler.rs` (the timing), `worker.rs` (its thread), `pins.rs` (outputs without
//! hardware), `gpio.rs` (the GPIO character device), `trigger.rs` (part-present inputs),
//! `settings.rs` (what the lines need to open, built by the config layer).

#[cfg(all(feature = "gpio", target_os = "linux"))]
pub mod gpio;
mod pins;
mod scheduler;
mod settings;
pub mod trigger;
mod worker;

use std::time::Duration;

pub use pins::{LogPin, PinRecord, RecordingPin, Transition};
pub use scheduler::{ActuatorStats, RejectScheduler, Scheduled};
pub use settings::{Edge, GpioOutputConfig, GpioTriggerConfig};
pub use worker::{REJECT_THREAD_PRIORITY, RejectWorker, StatsHandle, raise_to_realtime};

/// When and how long to pulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PulseTiming {
    /// From capture/trigger time to the start of the pulse.
    pub delay: Duration,
    /// Length of one part's pulse; must be > 0.
    pub pulse: Duration,
}

/// Why the actuator failed.
#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    /// The output line refused a level change: the flap may be stuck.
    #[error("reject output {line}: cannot set it {level}: {message}")]
    Pin {
        /// Line name.
        line: String,
        /// `active` or `inactive (safe)`.
        level: &'static str,
        /// The driver's error.
        message: String,
    },
    /// A pulse length of zero would never move the flap.
    #[error("reject pulse length must be > 0")]
    ZeroPulse,
    /// The scheduler's thread has stopped (after a panic or shutdown).
    #[error("reject scheduler thread is not running")]
    Stopped,
    /// The scheduler's thread could not be started.
    #[error("cannot start the reject scheduler thread: {0}")]
    Spawn(#[source] std::io::Error),
}

#[cfg(test)]
mod tests;
