//! Pairing part-sensor triggers with camera frames (`trigger.mode = "gpio"`).
//!
//! The camera runs free; the sensor says when a part is under it. A part's frame is the
//! **first frame captured at or after the trigger's timestamp**: both timestamps are on the
//! same monotonic clock (kernel timestamps), so the pairing does not depend on when the
//! daemon's threads got round to reading them. Trigger events may reach the capture thread a
//! little after the frame they belong to (thread scheduling), so the last unpaired frame is
//! kept until the next one arrives.
//!
//! Every trigger leaves with exactly one outcome: a frame, or a fail-safe reason (the frame
//! that would have shown it was corrupt, or no frame came within the budget).

use std::collections::VecDeque;
use std::time::Duration;

use crate::actuate::trigger::TriggerEvent;
use crate::capture::Frame;
use crate::clock::Timestamp;

/// What became of a trigger.
#[derive(Debug)]
pub enum Pairing {
    /// Its frame.
    Frame(TriggerEvent, Frame),
    /// The frame that should have shown it could not be used (origin, why).
    CorruptFrame(TriggerEvent, String),
    /// No frame came within the wait limit.
    NoFrame(TriggerEvent),
}

/// Matches triggers to frames; pure logic, driven by the capture thread.
#[derive(Debug)]
pub struct TriggerPairer {
    pending: VecDeque<TriggerEvent>,
    /// The most recent frame, while no trigger has claimed it.
    recent: Option<Frame>,
    /// Timestamp of the frame before `recent` (or of the last frame seen, when `recent`
    /// was claimed): triggers after it and up to `recent` belong to `recent`.
    previous: Option<Timestamp>,
    max_wait: Duration,
}

impl TriggerPairer {
    /// Triggers waiting longer than `max_wait` for a frame get [`Pairing::NoFrame`].
    pub fn new(max_wait: Duration) -> Self {
        TriggerPairer {
            pending: VecDeque::new(),
            recent: None,
            previous: None,
            max_wait,
        }
    }

    /// Changes the wait limit (a reloaded frame budget).
    pub fn set_max_wait(&mut self, max_wait: Duration) {
        self.max_wait = max_wait;
    }

    /// Triggers waiting for a frame.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A trigger arrived. It pairs at once with the kept frame when that frame is the first
    /// one at or after it; otherwise it waits for the next frame.
    pub fn on_trigger(&mut self, event: TriggerEvent) -> Option<Pairing> {
        if let Some(frame) = &self.recent
            && event.timestamp <= frame.timestamp
            && self.previous.is_none_or(|p| event.timestamp > p)
        {
            let frame = self.recent.take()?;
            self.previous = Some(frame.timestamp);
            return Some(Pairing::Frame(event, frame));
        }
        self.pending.push_back(event);
        None
    }

    /// A frame arrived: every waiting trigger at or before it pairs with it.
    pub fn on_frame(&mut self, frame: Frame) -> Vec<Pairing> {
        let mut claimed: Vec<TriggerEvent> = Vec::new();
        while let Some(front) = self.pending.front() {
            if front.timestamp > frame.timestamp {
                break;
            }
            if let Some(ev) = self.pending.pop_front() {
                claimed.push(ev);
            }
        }
        let mut out = Vec::with_capacity(claimed.len());
        if claimed.is_empty() {
            self.previous = Some(
                self.recent
                    .as_ref()
                    .map_or(self.previous.unwrap_or(Timestamp::ZERO), |f| f.timestamp),
            );
            self.recent = Some(frame);
            return out;
        }
        self.previous = Some(frame.timestamp);
        self.recent = None;
        let last = claimed.len() - 1;
        for (i, ev) in claimed.into_iter().enumerate() {
            if i == last {
                out.push(Pairing::Frame(ev, frame));
                break;
            }
            // Two parts within one frame period share the frame (rare; needs a copy).
            out.push(Pairing::Frame(ev, frame.clone()));
        }
        out
    }

    /// A frame arrived unusable: waiting triggers at or before it get the fail-safe.
    pub fn on_failed_frame(&mut self, timestamp: Timestamp, origin: &str) -> Vec<Pairing> {
        let mut out = Vec::new();
        while let Some(front) = self.pending.front() {
            if front.timestamp > timestamp {
                break;
            }
            if let Some(ev) = self.pending.pop_front() {
                out.push(Pairing::CorruptFrame(ev, origin.to_string()));
            }
        }
        self.recent = None;
        self.previous = Some(timestamp);
        out
    }

    /// Triggers that have waited longer than the limit at `now`.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Pairing> {
        let mut out = Vec::new();
        while let Some(front) = self.pending.front() {
            if now - front.timestamp <= self.max_wait {
                break;
            }
            if let Some(ev) = self.pending.pop_front() {
                out.push(Pairing::NoFrame(ev));
            }
        }
        out
    }

    /// Everything still waiting, at shutdown: those parts get the fail-safe too.
    pub fn drain(&mut self) -> Vec<Pairing> {
        self.pending.drain(..).map(Pairing::NoFrame).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuate::trigger::EdgeKind;

    fn ev(ms: u64, count: u64) -> TriggerEvent {
        TriggerEvent {
            timestamp: Timestamp::from_millis(ms),
            edge: EdgeKind::Rising,
            count,
        }
    }

    fn frame(ms: u64, sequence: u64) -> Frame {
        Frame {
            image: image::RgbImage::new(2, 2),
            timestamp: Timestamp::from_millis(ms),
            sequence,
            origin: format!("f{sequence}"),
        }
    }

    fn frames_of(p: &[Pairing]) -> Vec<(u64, u64)> {
        p.iter()
            .map(|p| match p {
                Pairing::Frame(e, f) => (e.count, f.sequence),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn trigger_pairs_with_first_frame_at_or_after_it() {
        let mut p = TriggerPairer::new(Duration::from_millis(100));
        assert!(p.on_frame(frame(0, 0)).is_empty());
        assert!(p.on_trigger(ev(10, 0)).is_none());
        assert!(p.on_trigger(ev(20, 1)).is_none());
        // Two parts within one frame period share the frame.
        assert_eq!(frames_of(&p.on_frame(frame(33, 1))), [(0, 1), (1, 1)]);
        assert!(p.on_trigger(ev(66, 2)).is_none());
        assert_eq!(frames_of(&p.on_frame(frame(66, 2))), [(2, 2)]);
        assert!(p.on_frame(frame(99, 3)).is_empty());
    }

    #[test]
    fn late_delivered_trigger_takes_the_kept_frame() {
        let mut p = TriggerPairer::new(Duration::from_millis(100));
        assert!(p.on_frame(frame(0, 0)).is_empty());
        assert!(p.on_frame(frame(33, 1)).is_empty());
        // Trigger at 20 ms read after the 33 ms frame: that frame is its frame.
        let got = p.on_trigger(ev(20, 0)).expect("paired");
        assert_eq!(frames_of(&[got]), [(0, 1)]);
        // A trigger older than the previous frame cannot take it: it waits for the next one.
        assert!(p.on_trigger(ev(5, 1)).is_none());
        assert_eq!(frames_of(&p.on_frame(frame(66, 2))), [(1, 2)]);
    }

    #[test]
    fn corrupt_and_missing_frames_fail_safe() {
        let mut p = TriggerPairer::new(Duration::from_millis(50));
        p.on_trigger(ev(10, 0));
        let out = p.on_failed_frame(Timestamp::from_millis(12), "bad.jpg");
        assert!(
            matches!(&out[..], [Pairing::CorruptFrame(e, o)] if e.count == 0 && o == "bad.jpg")
        );
        p.on_trigger(ev(100, 1));
        assert!(p.expire(Timestamp::from_millis(150)).is_empty());
        let out = p.expire(Timestamp::from_millis(151));
        assert!(matches!(&out[..], [Pairing::NoFrame(e)] if e.count == 1));
        p.on_trigger(ev(200, 2));
        assert_eq!(p.drain().len(), 1);
        assert_eq!(p.pending(), 0);
    }
}
