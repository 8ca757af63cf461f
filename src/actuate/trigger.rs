//! Part-present triggers: an input edge says "a part is under the camera now".
//!
//! With a light barrier or proximity sensor the part's time is the **edge's kernel
//! timestamp**, not the time the daemon got round to reading it: the reject delay is timed
//! from the physical event. The real input is [`super::gpio::GpioTrigger`] (Linux, feature
//! `gpio`); [`Debouncer`] is kept separate so its logic is tested without hardware.

use std::time::Duration;

use crate::clock::Timestamp;

/// Which edge an event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// Inactive → active.
    Rising,
    /// Active → inactive.
    Falling,
}

/// One accepted trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerEvent {
    /// When the edge happened, on the daemon's monotonic clock (kernel timestamp).
    pub timestamp: Timestamp,
    /// Which edge.
    pub edge: EdgeKind,
    /// Accepted triggers so far, from 0: the part number as the sensor saw it.
    pub count: u64,
}

/// Why a trigger input failed.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The input line could not be found, requested or read.
    #[error("trigger input {line}: {message}")]
    Line {
        /// Line name.
        line: String,
        /// What went wrong.
        message: String,
    },
}

/// A source of part-present events.
pub trait Trigger: Send {
    /// Waits up to `timeout` for the next accepted edge; `Ok(None)` on timeout.
    fn wait(&mut self, timeout: Duration) -> Result<Option<TriggerEvent>, TriggerError>;
}

/// Software debounce on event timestamps: an edge closer than `period` to the last
/// *accepted* edge is dropped.
///
/// Kernel debounce (requested too where the chip supports it) filters contact bounce on the
/// line itself; this also drops a second trigger from a part that wobbles in front of a light
/// barrier, and works where the kernel cannot debounce.
#[derive(Debug, Clone)]
pub struct Debouncer {
    period: Duration,
    last: Option<Timestamp>,
    accepted: u64,
}

impl Debouncer {
    /// Drops edges within `period` of the last accepted one (`Duration::ZERO`: none dropped).
    pub fn new(period: Duration) -> Self {
        Debouncer {
            period,
            last: None,
            accepted: 0,
        }
    }

    /// Whether an edge at `t` is a new trigger; if so, it becomes the reference. Returns the
    /// accepted event.
    pub fn accept(&mut self, t: Timestamp, edge: EdgeKind) -> Option<TriggerEvent> {
        if let Some(last) = self.last
            && t >= last
            && t - last < self.period
        {
            return None;
        }
        self.last = Some(t);
        let event = TriggerEvent {
            timestamp: t,
            edge,
            count: self.accepted,
        };
        self.accepted += 1;
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounces_within_the_period_are_dropped() {
        let mut d = Debouncer::new(Duration::from_millis(5));
        let ms = Timestamp::from_millis;
        let accepted: Vec<_> = [0, 1, 4, 5, 6, 20, 24, 40]
            .into_iter()
            .filter_map(|t| d.accept(ms(t), EdgeKind::Rising))
            .map(|e| (e.timestamp, e.count))
            .collect();
        // 1 and 4 bounce off 0; 5 is a new part; 6 bounces off 5; 24 off 20.
        assert_eq!(accepted, [(ms(0), 0), (ms(5), 1), (ms(20), 2), (ms(40), 3)]);
    }

    #[test]
    fn zero_period_keeps_everything() {
        let mut d = Debouncer::new(Duration::ZERO);
        for (i, t) in [3u64, 3, 4].into_iter().enumerate() {
            let e = d
                .accept(Timestamp::from_millis(t), EdgeKind::Falling)
                .expect("accepted");
            assert_eq!(e.count, i as u64);
        }
    }
}
