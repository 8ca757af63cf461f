//! [`RejectScheduler`]: verdicts in, pulses on the line at capture time + delay, merged when
//! they touch, with armed parts failed safe at their deadline. Driven by `poll(now)` on a
//! [`Clock`], so it never reads the time itself.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use embedded_hal::digital::OutputPin;
use ustad_core::judge::decide::{FailSafePolicy, Verdict};

use super::{ActuateError, PulseTiming};
use crate::clock::{Clock, Timestamp};

/// What [`RejectScheduler::submit`] did with a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// No pulse (good part, or failed safe under the `pass` policy).
    Pass,
    /// A pulse is scheduled (or already running) from `start` to `end`. `end` is the end of
    /// the merged pulse the part's pulse joined, as known now.
    Pulse {
        /// Start of the part's own pulse (later than asked if submitted late).
        start: Timestamp,
        /// End of the (merged) pulse.
        end: Timestamp,
        /// Whether it joined a pulse already running or scheduled.
        merged: bool,
    },
    /// The part's whole pulse window was already over when it was submitted: it has passed
    /// the flap unrejected. Counted and logged; the pipeline should alarm.
    Missed {
        /// How late the verdict was, measured from the pulse's scheduled end.
        late_by: Duration,
    },
    /// The part was armed and its deadline passed before this verdict came: the fail-safe
    /// policy was applied at `decided` and stands; this verdict is ignored.
    Expired {
        /// When the scheduler applied the fail-safe.
        decided: Timestamp,
        /// The fail-safe verdict it applied.
        verdict: Verdict,
    },
}

/// Counters for metrics, and the `actuator` object of the daemon's `/status`. The part and
/// fail-safe counts are left out there: `/status` has them per verdict from the pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ActuatorStats {
    /// Parts submitted.
    #[serde(skip)]
    pub parts: u64,
    /// Parts that asked for a reject (defective or fail-safe).
    pub rejects: u64,
    /// Of those, rejects due to the fail-safe policy.
    #[serde(skip)]
    pub failsafe_rejects: u64,
    /// Unjudged parts passed by the `pass` policy.
    #[serde(skip)]
    pub failsafe_passes: u64,
    /// Pulses actually driven on the line (merged pulses count once).
    pub pulses: u64,
    /// Part pulses merged into another pulse.
    pub merged: u64,
    /// Pulses started later than scheduled (verdict late, but within the pulse window).
    pub late: u64,
    /// Rejects that could not be fired at all (verdict after the pulse window).
    pub missed: u64,
    /// Armed parts whose verdict did not come by their deadline: the scheduler applied the
    /// fail-safe policy itself.
    pub expired: u64,
    /// Failed level changes on the line.
    pub pin_errors: u64,
}

/// A pulse waiting to start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pulse {
    start: Timestamp,
    end: Timestamp,
    parts: Vec<u64>,
}

/// Keeps the reject pulses of parts in flight and drives the output line.
pub struct RejectScheduler<P: OutputPin, C: Clock> {
    /// `None` only after `finish` has handed the pin back.
    pin: Option<P>,
    clock: C,
    line: String,
    timing: PulseTiming,
    policy: FailSafePolicy,
    /// Sorted by start, non-overlapping, all starting after `active_until`.
    pending: VecDeque<Pulse>,
    /// End of the pulse being driven, while the line is active.
    active_until: Option<Timestamp>,
    /// Parts awaiting their verdict, by (part, capture time), with their deadlines.
    armed: BTreeMap<(u64, Timestamp), Timestamp>,
    /// Parts the fail-safe was applied to at their deadline, with when and the verdict it
    /// gave, until their late verdict arrives.
    expired: BTreeMap<(u64, Timestamp), (Timestamp, Verdict)>,
    stats: ActuatorStats,
}

impl<P: OutputPin, C: Clock> fmt::Debug for RejectScheduler<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectScheduler")
            .field("line", &self.line)
            .field("timing", &self.timing)
            .field("policy", &self.policy)
            .field("pending", &self.pending)
            .field("active_until", &self.active_until)
            .field("armed", &self.armed.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<P: OutputPin, C: Clock> RejectScheduler<P, C> {
    /// Takes the line and sets it inactive (safe) at once: whatever state a previous run or
    /// the boot left it in, the flap must not be open while nothing is judged.
    ///
    /// `line` names the output in logs and errors.
    pub fn new(
        mut pin: P,
        clock: C,
        line: impl Into<String>,
        timing: PulseTiming,
        policy: FailSafePolicy,
    ) -> Result<Self, ActuateError> {
        let line = line.into();
        if timing.pulse.is_zero() {
            return Err(ActuateError::ZeroPulse);
        }
        pin.set_low().map_err(|e| pin_error(&line, false, &e))?;
        Ok(RejectScheduler {
            pin: Some(pin),
            clock,
            line,
            timing,
            policy,
            pending: VecDeque::new(),
            active_until: None,
            armed: BTreeMap::new(),
            expired: BTreeMap::new(),
            stats: ActuatorStats::default(),
        })
    }

    /// The clock the scheduler was built with.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Counters so far.
    pub fn stats(&self) -> ActuatorStats {
        self.stats
    }

    /// Whether the line is being driven active now.
    pub fn is_active(&self) -> bool {
        self.active_until.is_some()
    }

    /// Number of pulses waiting to start (after merging).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Changes the timing and fail-safe policy for parts submitted from now on (a reloaded
    /// configuration). Pulses already scheduled keep the times they were given: those parts
    /// were photographed under the old belt timing.
    pub fn reconfigure(
        &mut self,
        timing: PulseTiming,
        policy: FailSafePolicy,
    ) -> Result<(), ActuateError> {
        if timing.pulse.is_zero() {
            return Err(ActuateError::ZeroPulse);
        }
        self.timing = timing;
        self.policy = policy;
        Ok(())
    }

    /// Takes a part's verdict. `captured` is the part's capture (or trigger) time; its pulse is
    /// due at `captured + delay`. Updates the line at once if the pulse is already due.
    ///
    /// A part armed with [`RejectScheduler::arm`] is disarmed by its verdict; if its deadline
    /// has already passed, the fail-safe applied then stands and the verdict is ignored
    /// ([`Scheduled::Expired`]).
    pub fn submit(
        &mut self,
        part: u64,
        captured: Timestamp,
        verdict: Verdict,
    ) -> Result<Scheduled, ActuateError> {
        let now = self.clock.now();
        // A deadline that passed while this verdict was on its way is applied first.
        self.expire_armed(now)?;
        if let Some((decided, verdict)) = self.expired.remove(&(part, captured)) {
            return Ok(Scheduled::Expired { decided, verdict });
        }
        self.armed.remove(&(part, captured));
        self.decide(part, captured, verdict)
    }

    /// The fail-safe policy applied to parts that cannot be judged.
    pub fn policy(&self) -> FailSafePolicy {
        self.policy
    }

    /// Takes a part that could not be judged (no usable frame, an engine error, an overrun):
    /// the fail-safe policy, held here and nowhere else, gives its verdict, which is returned
    /// with what was done. An armed part already expired keeps the verdict applied then.
    pub fn submit_unjudged(
        &mut self,
        part: u64,
        captured: Timestamp,
    ) -> Result<(Verdict, Scheduled), ActuateError> {
        let failsafe = self.policy.verdict();
        let scheduled = self.submit(part, captured, failsafe)?;
        let verdict = match scheduled {
            Scheduled::Expired { verdict, .. } => verdict,
            _ => failsafe,
        };
        Ok((verdict, scheduled))
    }

    /// Registers a part whose verdict is on its way: if none has come by `deadline`, the
    /// fail-safe policy is applied to it then (at once if `deadline` has passed). Call it when
    /// the part is captured, before its frame is queued for judging.
    pub fn arm(
        &mut self,
        part: u64,
        captured: Timestamp,
        deadline: Timestamp,
    ) -> Result<(), ActuateError> {
        self.armed.insert((part, captured), deadline);
        let now = self.clock.now();
        self.expire_armed(now)?;
        self.poll(now)
    }

    /// Number of armed parts still waiting for their verdict.
    pub fn armed(&self) -> usize {
        self.armed.len()
    }

    /// Applies the fail-safe to armed parts whose deadline is at or before `now`.
    fn expire_armed(&mut self, now: Timestamp) -> Result<(), ActuateError> {
        while let Some((&key, &deadline)) = self.armed.iter().min_by_key(|(_, d)| **d) {
            if deadline > now {
                break;
            }
            self.armed.remove(&key);
            let (part, captured) = key;
            self.stats.expired += 1;
            log::warn!(
                "part {part}: no verdict {} ms after capture (deadline passed {} ms ago); \
                 applying the fail-safe",
                (deadline - captured).as_millis(),
                (now - deadline).as_millis()
            );
            let verdict = self.policy.verdict();
            self.expired.insert(key, (now, verdict));
            self.decide(part, captured, verdict)?;
        }
        // A late verdict normally follows within a frame or two; one that never comes (its
        // thread died) must not keep the entry forever.
        if self.expired.len() > 4096 {
            let horizon = self.timing.delay + self.timing.pulse + Duration::from_secs(60);
            self.expired
                .retain(|_, (decided, _)| now.saturating_duration_since(*decided) < horizon);
        }
        Ok(())
    }

    /// Acts on a verdict: counts it and schedules its pulse if it asks for one.
    fn decide(
        &mut self,
        part: u64,
        captured: Timestamp,
        verdict: Verdict,
    ) -> Result<Scheduled, ActuateError> {
        self.stats.parts += 1;
        match verdict {
            Verdict::FailsafeReject => self.stats.failsafe_rejects += 1,
            Verdict::FailsafePass => {
                self.stats.failsafe_passes += 1;
                log::warn!("part {part}: not judged, passed by the fail-safe policy");
            }
            Verdict::Pass | Verdict::Reject => {}
        }
        let fire = verdict.rejects();
        if !fire {
            return Ok(Scheduled::Pass);
        }
        self.stats.rejects += 1;

        let now = self.clock.now();
        let mut start = captured + self.timing.delay;
        let end = start + self.timing.pulse;
        if end <= now {
            self.stats.missed += 1;
            let late_by = now - end;
            log::error!(
                "part {part}: reject verdict {} ms too late, the part has passed the flap",
                late_by.as_millis()
            );
            return Ok(Scheduled::Missed { late_by });
        }
        if start < now {
            self.stats.late += 1;
            log::warn!(
                "part {part}: reject starts {} ms late",
                (now - start).as_millis()
            );
            start = now;
        }

        let merged = self.insert(Pulse {
            start,
            end,
            parts: vec![part],
        });
        if merged {
            self.stats.merged += 1;
        }
        self.drive(now)?;
        let merged_end = self
            .active_until
            .filter(|&until| start <= until)
            .or_else(|| {
                self.pending
                    .iter()
                    .find(|p| p.start <= start && start <= p.end)
                    .map(|p| p.end)
            })
            .unwrap_or(end);
        Ok(Scheduled::Pulse {
            start,
            end: merged_end,
            merged,
        })
    }

    /// Adds a pulse, merging it with the running one or with pending ones it overlaps or
    /// touches. Returns whether it was merged.
    fn insert(&mut self, pulse: Pulse) -> bool {
        if let Some(until) = self.active_until
            && pulse.start <= until
        {
            self.active_until = Some(until.max(pulse.end));
            self.absorb_pending_into_active();
            return true;
        }
        let pos = self.pending.partition_point(|p| p.start <= pulse.start);
        self.pending.insert(pos, pulse);
        let before = self.pending.len();
        // Coalesce neighbours; the list is sorted by start.
        let mut merged: VecDeque<Pulse> = VecDeque::with_capacity(before);
        for p in self.pending.drain(..) {
            match merged.back_mut() {
                Some(last) if p.start <= last.end => {
                    last.end = last.end.max(p.end);
                    last.parts.extend(p.parts);
                }
                _ => merged.push_back(p),
            }
        }
        self.pending = merged;
        self.pending.len() < before
    }

    /// While active, pending pulses starting before the active one ends join it.
    fn absorb_pending_into_active(&mut self) {
        while let (Some(until), Some(front)) = (self.active_until, self.pending.front()) {
            if front.start > until {
                break;
            }
            let end = front.end;
            self.pending.pop_front();
            self.active_until = Some(until.max(end));
        }
    }

    /// Brings the line up to date at time `now`: ends a finished pulse, starts a due one.
    /// Call it at [`RejectScheduler::next_deadline`] (or any time; it is idempotent).
    pub fn poll(&mut self, now: Timestamp) -> Result<(), ActuateError> {
        self.expire_armed(now)?;
        self.drive(now)
    }

    /// Ends a finished pulse and starts a due one.
    fn drive(&mut self, now: Timestamp) -> Result<(), ActuateError> {
        loop {
            if let Some(until) = self.active_until {
                if now < until {
                    return Ok(());
                }
                self.set(false)?;
                self.active_until = None;
            }
            let Some(front) = self.pending.front() else {
                return Ok(());
            };
            if front.start > now {
                return Ok(());
            }
            let Some(pulse) = self.pending.pop_front() else {
                return Ok(());
            };
            if pulse.end <= now {
                // Polled too late for the whole window (a stalled thread): firing now would hit
                // the wrong part.
                self.stats.missed += pulse.parts.len() as u64;
                log::error!(
                    "reject pulse for parts {:?} missed: polled {} ms after its end",
                    pulse.parts,
                    (now - pulse.end).as_millis()
                );
                continue;
            }
            self.set(true)?;
            self.stats.pulses += 1;
            self.active_until = Some(pulse.end);
            log::debug!(
                "{}: reject pulse for parts {:?} until {}",
                self.line,
                pulse.parts,
                pulse.end
            );
        }
    }

    /// When the scheduler next needs [`RejectScheduler::poll`]: the end of the running
    /// pulse, else the start of the next pending one; `None` when idle.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let line = self
            .active_until
            .or_else(|| self.pending.front().map(|p| p.start));
        let armed = self.armed.values().min().copied();
        match (line, armed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every pending pulse at its time (waiting on the clock) and leaves the line
    /// inactive: on a graceful stop the parts already judged are still on the belt.
    ///
    /// Armed parts still without a verdict get the fail-safe now: nothing will judge them.
    pub fn drain(&mut self) -> Result<(), ActuateError> {
        if !self.armed.is_empty() {
            log::warn!(
                "{}: {} armed parts never got a verdict; applying the fail-safe",
                self.line,
                self.armed.len()
            );
            // Their deadline is now: the usual expiry applies the fail-safe to each.
            let now = self.clock.now();
            for deadline in self.armed.values_mut() {
                *deadline = (*deadline).min(now);
            }
            self.poll(now)?;
        }
        while let Some(deadline) = self.next_deadline() {
            self.clock.sleep_until(deadline);
            let now = self.clock.now();
            self.poll(now)?;
        }
        self.set(false)
    }

    /// Drops pending pulses and sets the line inactive now (emergency stop, fatal error).
    pub fn abort(&mut self) -> Result<(), ActuateError> {
        let dropped: usize = self.pending.iter().map(|p| p.parts.len()).sum();
        if dropped > 0 {
            log::warn!("{}: dropping {dropped} pending rejects", self.line);
        }
        self.pending.clear();
        self.active_until = None;
        self.set(false)
    }

    /// Drains pending pulses, sets the line safe and hands the pin back with the counters.
    pub fn finish(mut self) -> Result<(P, ActuatorStats), ActuateError> {
        self.drain()?;
        let pin = self.pin.take().ok_or(ActuateError::Stopped)?;
        Ok((pin, self.stats))
    }

    fn set(&mut self, active: bool) -> Result<(), ActuateError> {
        let Some(pin) = self.pin.as_mut() else {
            return Err(ActuateError::Stopped);
        };
        let result = if active {
            pin.set_high()
        } else {
            pin.set_low()
        };
        result.map_err(|e| {
            self.stats.pin_errors += 1;
            pin_error(&self.line, active, &e)
        })
    }
}

impl<P: OutputPin, C: Clock> Drop for RejectScheduler<P, C> {
    /// Leaves the line safe, whatever happened. Pending pulses are *not* fired here (a drop
    /// may come from a panic); graceful stops call `finish` or `drain` first.
    fn drop(&mut self) {
        if let Some(pin) = self.pin.as_mut() {
            if !self.pending.is_empty() {
                log::warn!(
                    "{}: {} pending reject pulses dropped without drain",
                    self.line,
                    self.pending.len()
                );
            }
            if let Err(e) = pin.set_low() {
                log::error!("{}", pin_error(&self.line, false, &e));
            }
        }
    }
}

fn pin_error<E: fmt::Debug>(line: &str, active: bool, e: &E) -> ActuateError {
    ActuateError::Pin {
        line: line.to_string(),
        level: if active { "active" } else { "inactive (safe)" },
        message: format!("{e:?}"),
    }
}
