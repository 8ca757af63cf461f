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

#[cfg(all(feature = "gpio", target_os = "linux"))]
pub mod gpio;
pub mod trigger;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use embedded_hal::digital::{ErrorType, OutputPin, PinState, StatefulOutputPin};

use crate::clock::{Clock, Timestamp};
use ustad_core::judge::decide::{FailSafePolicy, Verdict};

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

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActuatorStats {
    /// Parts submitted.
    pub parts: u64,
    /// Parts that asked for a reject (defective or fail-safe).
    pub rejects: u64,
    /// Of those, rejects due to the fail-safe policy.
    pub failsafe_rejects: u64,
    /// Unjudged parts passed by the `pass` policy.
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

// ---------------------------------------------------------------------------------------------
// Production: the scheduler on its own thread
// ---------------------------------------------------------------------------------------------

enum Command {
    Submit {
        part: u64,
        captured: Timestamp,
        verdict: Verdict,
        reply: mpsc::SyncSender<Result<Scheduled, ActuateError>>,
    },
    Arm {
        part: u64,
        captured: Timestamp,
        deadline: Timestamp,
    },
    Reconfigure(PulseTiming, FailSafePolicy),
    Shutdown,
}

/// `SCHED_FIFO` priority of the reject thread: above every normal thread (inference, capture),
/// low among real-time ones so it never competes with the kernel's own.
pub const REJECT_THREAD_PRIORITY: i32 = 10;

/// Puts the calling thread under `SCHED_FIFO` at [`REJECT_THREAD_PRIORITY`].
#[cfg(target_os = "linux")]
pub fn raise_to_realtime() -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: REJECT_THREAD_PRIORITY,
    };
    // SAFETY: pthread_self() is the calling thread and `param` outlives the call.
    let code =
        unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    match code {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Real-time scheduling is only implemented for Linux.
#[cfg(not(target_os = "linux"))]
pub fn raise_to_realtime() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "real-time threads are only set up on Linux",
    ))
}

/// A [`RejectScheduler`] on its own thread, waking at each deadline.
///
/// Submitting waits only for the scheduler to take the verdict (no pulse is waited for), so
/// the caller learns whether it counted. Dropping the worker (or [`RejectWorker::shutdown`])
/// drains pending pulses and leaves the line safe.
#[derive(Debug)]
pub struct RejectWorker {
    tx: mpsc::Sender<Command>,
    thread: Option<thread::JoinHandle<Result<ActuatorStats, ActuateError>>>,
    stats: Arc<Mutex<ActuatorStats>>,
}

impl RejectWorker {
    /// Moves `scheduler` onto a new thread named `ustad-reject` at normal priority.
    pub fn spawn<P, C>(scheduler: RejectScheduler<P, C>) -> Result<Self, ActuateError>
    where
        P: OutputPin + Send + 'static,
        C: Clock + 'static,
    {
        Self::spawn_with(scheduler, false)
    }

    /// As [`RejectWorker::spawn`], with the thread at real-time priority where the process may
    /// have it (`SCHED_FIFO`, see [`raise_to_realtime`]): inference saturates every core, and
    /// a normal-priority thread that wakes late starts the pulse late. Refused (no
    /// `RLIMIT_RTPRIO`), it logs why and runs at normal priority.
    pub fn spawn_realtime<P, C>(scheduler: RejectScheduler<P, C>) -> Result<Self, ActuateError>
    where
        P: OutputPin + Send + 'static,
        C: Clock + 'static,
    {
        Self::spawn_with(scheduler, true)
    }

    fn spawn_with<P, C>(
        mut scheduler: RejectScheduler<P, C>,
        realtime: bool,
    ) -> Result<Self, ActuateError>
    where
        P: OutputPin + Send + 'static,
        C: Clock + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(scheduler.stats()));
        let shared = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("ustad-reject".into())
            .spawn(move || {
                if realtime {
                    match raise_to_realtime() {
                        Ok(()) => log::info!(
                            "reject thread at real-time priority (SCHED_FIFO {REJECT_THREAD_PRIORITY})"
                        ),
                        Err(e) => log::warn!(
                            "reject thread stays at normal priority ({e}): pulses may start late while inference saturates the CPU; allow it with LimitRTPRIO={REJECT_THREAD_PRIORITY} (the shipped unit does)"
                        ),
                    }
                }
                let publish = |s: &RejectScheduler<P, C>| {
                    *shared.lock().unwrap_or_else(PoisonError::into_inner) = s.stats();
                };
                loop {
                    let msg = match scheduler.next_deadline() {
                        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                        Some(deadline) => {
                            let now = scheduler.clock().now();
                            if deadline <= now {
                                if let Err(e) = scheduler.poll(now) {
                                    log::error!("{e}");
                                }
                                publish(&scheduler);
                                continue;
                            }
                            rx.recv_timeout(deadline - now)
                        }
                    };
                    match msg {
                        Ok(Command::Submit {
                            part,
                            captured,
                            verdict,
                            reply,
                        }) => {
                            let result = scheduler.submit(part, captured, verdict);
                            if let Err(e) = &result {
                                log::error!("part {part}: {e}");
                            }
                            // The submitter may have given up waiting; the verdict counts.
                            let _ = reply.send(result);
                        }
                        Ok(Command::Arm {
                            part,
                            captured,
                            deadline,
                        }) => {
                            if let Err(e) = scheduler.arm(part, captured, deadline) {
                                log::error!("part {part}: {e}");
                            }
                        }
                        Ok(Command::Reconfigure(timing, policy)) => {
                            if let Err(e) = scheduler.reconfigure(timing, policy) {
                                log::error!("reject timing not changed: {e}");
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let now = scheduler.clock().now();
                            if let Err(e) = scheduler.poll(now) {
                                log::error!("{e}");
                            }
                        }
                        Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                            break;
                        }
                    }
                    publish(&scheduler);
                }
                let result = scheduler.drain();
                publish(&scheduler);
                result.map(|()| scheduler.stats())
            })
            .map_err(ActuateError::Spawn)?;
        Ok(RejectWorker {
            tx,
            thread: Some(thread),
            stats,
        })
    }

    /// Hands a part's verdict to the scheduler thread and returns what it did with it (see
    /// [`RejectScheduler::submit`]).
    pub fn submit(
        &self,
        part: u64,
        captured: Timestamp,
        verdict: Verdict,
    ) -> Result<Scheduled, ActuateError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send(Command::Submit {
                part,
                captured,
                verdict,
                reply,
            })
            .map_err(|_| ActuateError::Stopped)?;
        answer.recv().map_err(|_| ActuateError::Stopped)?
    }

    /// Arms a part at capture (see [`RejectScheduler::arm`]); does not wait.
    pub fn arm(
        &self,
        part: u64,
        captured: Timestamp,
        deadline: Timestamp,
    ) -> Result<(), ActuateError> {
        self.tx
            .send(Command::Arm {
                part,
                captured,
                deadline,
            })
            .map_err(|_| ActuateError::Stopped)
    }

    /// New timing and fail-safe policy for parts submitted after this call (see
    /// [`RejectScheduler::reconfigure`]). A zero pulse is refused here, before it reaches the
    /// thread, so the caller learns about it.
    pub fn reconfigure(
        &self,
        timing: PulseTiming,
        policy: FailSafePolicy,
    ) -> Result<(), ActuateError> {
        if timing.pulse.is_zero() {
            return Err(ActuateError::ZeroPulse);
        }
        self.tx
            .send(Command::Reconfigure(timing, policy))
            .map_err(|_| ActuateError::Stopped)
    }

    /// Counters as of the scheduler's last wake-up.
    pub fn stats(&self) -> ActuatorStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle that reads the same counters from elsewhere (the metrics endpoint), also
    /// after the worker has shut down.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.stats))
    }

    /// Fires the pending pulses, leaves the line safe, stops the thread.
    pub fn shutdown(mut self) -> Result<ActuatorStats, ActuateError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<ActuatorStats, ActuateError> {
        let Some(thread) = self.thread.take() else {
            return Err(ActuateError::Stopped);
        };
        // The thread may be gone already (panicked); joining tells.
        let _ = self.tx.send(Command::Shutdown);
        thread.join().map_err(|_| ActuateError::Stopped)?
    }
}

/// Read access to a [`RejectWorker`]'s counters (see [`RejectWorker::stats_handle`]).
#[derive(Debug, Clone, Default)]
pub struct StatsHandle(Arc<Mutex<ActuatorStats>>);

impl StatsHandle {
    /// Counters as of the scheduler's last wake-up.
    pub fn get(&self) -> ActuatorStats {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RejectWorker {
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.stop()
        {
            log::error!("reject scheduler shutdown: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output pins without hardware
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests;
