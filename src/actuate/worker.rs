//! The scheduler in production: [`RejectWorker`] runs a [`RejectScheduler`] on its own
//! (real-time, where allowed) thread and takes verdicts over a channel.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use embedded_hal::digital::OutputPin;
use ustad_core::judge::decide::{FailSafePolicy, Verdict};

use super::{ActuateError, ActuatorStats, PulseTiming, RejectScheduler, Scheduled};
use crate::clock::{Clock, Timestamp};

enum Command {
    Submit {
        part: u64,
        captured: Timestamp,
        /// `None`: the part could not be judged, the scheduler's fail-safe policy decides.
        verdict: Option<Verdict>,
        reply: mpsc::SyncSender<Result<(Verdict, Scheduled), ActuateError>>,
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
    /// The fail-safe policy last handed to the scheduler thread, for a caller that must name
    /// a failed part's verdict when the thread cannot answer (stopped, or its pin failed).
    policy: Mutex<FailSafePolicy>,
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
        let policy = Mutex::new(scheduler.policy());
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
                            let result = match verdict {
                                Some(verdict) => scheduler
                                    .submit(part, captured, verdict)
                                    .map(|scheduled| (verdict, scheduled)),
                                None => scheduler.submit_unjudged(part, captured),
                            };
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
            policy,
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
        self.send_verdict(part, captured, Some(verdict))
            .map(|(_, scheduled)| scheduled)
    }

    /// Hands over a part that could not be judged: the scheduler applies its fail-safe policy
    /// and says which verdict that gave (see [`RejectScheduler::submit_unjudged`]).
    pub fn submit_unjudged(
        &self,
        part: u64,
        captured: Timestamp,
    ) -> Result<(Verdict, Scheduled), ActuateError> {
        self.send_verdict(part, captured, None)
    }

    fn send_verdict(
        &self,
        part: u64,
        captured: Timestamp,
        verdict: Option<Verdict>,
    ) -> Result<(Verdict, Scheduled), ActuateError> {
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
            .map_err(|_| ActuateError::Stopped)?;
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = policy;
        Ok(())
    }

    /// The fail-safe policy in force (the one last handed to the scheduler).
    pub fn policy(&self) -> FailSafePolicy {
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner)
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
