//! Output pins without hardware: [`LogPin`] for dry runs on a real line, [`RecordingPin`] for
//! tests and replay runs.

use std::sync::{Arc, Mutex, PoisonError};

use embedded_hal::digital::{ErrorType, OutputPin, PinState, StatefulOutputPin};

use crate::clock::{Clock, Timestamp};

/// An output that only logs: for dry runs on a real line (`actuator = "log-only"`) and replay.
#[derive(Debug, Clone)]
pub struct LogPin {
    line: String,
    active: bool,
}

impl LogPin {
    /// A log-only output named `line` in its messages.
    pub fn new(line: impl Into<String>) -> Self {
        LogPin {
            line: line.into(),
            active: false,
        }
    }
}

impl ErrorType for LogPin {
    type Error = std::convert::Infallible;
}

impl OutputPin for LogPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        if self.active {
            log::info!("reject output {} -> inactive (log only)", self.line);
        }
        self.active = false;
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        if !self.active {
            log::info!("reject output {} -> ACTIVE (log only)", self.line);
        }
        self.active = true;
        Ok(())
    }
}

impl StatefulOutputPin for LogPin {
    fn is_set_high(&mut self) -> Result<bool, Self::Error> {
        Ok(self.active)
    }

    fn is_set_low(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.active)
    }
}

/// One level change of a [`RecordingPin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// When, on the pin's clock.
    pub at: Timestamp,
    /// The new level (`High` = active).
    pub state: PinState,
}

/// An output that records every level change with its time (`actuator = "mock"`); a
/// [`PinRecord`] handle reads the record from elsewhere (tests, the replay report).
#[derive(Debug, Clone)]
pub struct RecordingPin<C: Clock> {
    clock: C,
    record: PinRecord,
}

/// Shared read access to what a [`RecordingPin`] did.
#[derive(Debug, Clone, Default)]
pub struct PinRecord(Arc<Mutex<Vec<Transition>>>);

impl<C: Clock> RecordingPin<C> {
    /// A recording output timed by `clock`, and the handle to read it.
    pub fn new(clock: C) -> (Self, PinRecord) {
        let record = PinRecord::default();
        (
            RecordingPin {
                clock,
                record: record.clone(),
            },
            record,
        )
    }

    fn push(&self, state: PinState) {
        let at = self.clock.now();
        self.record
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Transition { at, state });
    }
}

impl PinRecord {
    /// Every level change, in order (repeated levels included).
    pub fn transitions(&self) -> Vec<Transition> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The active intervals `(start, end)`; an unfinished pulse is left out.
    pub fn pulses(&self) -> Vec<(Timestamp, Timestamp)> {
        let mut out = Vec::new();
        let mut started: Option<Timestamp> = None;
        for t in self.transitions() {
            match (t.state, started) {
                (PinState::High, None) => started = Some(t.at),
                (PinState::Low, Some(s)) => {
                    out.push((s, t.at));
                    started = None;
                }
                _ => {}
            }
        }
        out
    }

    /// The current level: `true` when active.
    pub fn is_active(&self) -> bool {
        self.transitions()
            .last()
            .is_some_and(|t| t.state == PinState::High)
    }
}

impl<C: Clock> ErrorType for RecordingPin<C> {
    type Error = std::convert::Infallible;
}

impl<C: Clock> OutputPin for RecordingPin<C> {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.push(PinState::Low);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.push(PinState::High);
        Ok(())
    }
}
