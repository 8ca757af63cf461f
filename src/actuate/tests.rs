//! Scheduler tests: `embedded-hal-mock` checks the exact sequence of level changes on the
//! line, a [`RecordingPin`] on a [`ManualClock`] checks their exact times.

use super::*;
use std::time::Duration;

use embedded_hal::digital::{ErrorType, OutputPin, StatefulOutputPin};
use ustad_core::judge::decide::{FailSafePolicy, Verdict};

use crate::clock::{Clock, ManualClock, MonotonicClock, Timestamp};
use embedded_hal_mock::eh1::MockError;
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as T};

const DELAY: Duration = Duration::from_millis(300);
const PULSE: Duration = Duration::from_millis(50);

fn ms(v: u64) -> Timestamp {
    Timestamp::from_millis(v)
}

/// Drives a mock (for the sequence) and a recording pin (for the times) together.
struct Checked {
    mock: PinMock,
    timed: RecordingPin<ManualClock>,
}

impl ErrorType for Checked {
    type Error = MockError;
}

impl OutputPin for Checked {
    fn set_low(&mut self) -> Result<(), MockError> {
        self.mock.set_low()?;
        let _ = self.timed.set_low();
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), MockError> {
        self.mock.set_high()?;
        let _ = self.timed.set_high();
        Ok(())
    }
}

struct Rig {
    clock: ManualClock,
    mock: PinMock,
    record: PinRecord,
    sched: RejectScheduler<Checked, ManualClock>,
}

/// The rig's pulse timing: [`DELAY`], then [`PULSE`].
fn rig_timing() -> PulseTiming {
    PulseTiming {
        delay: DELAY,
        pulse: PULSE,
    }
}

/// A scheduler at t = 1000 ms expecting exactly `expected` (after the initial safe `Low`).
fn rig(expected: &[T], policy: FailSafePolicy) -> Rig {
    let clock = ManualClock::new(ms(1000));
    let mut all = vec![T::set(State::Low)];
    all.extend_from_slice(expected);
    let mock = PinMock::new(&all);
    let (timed, record) = RecordingPin::new(clock.clone());
    let pin = Checked {
        mock: mock.clone(),
        timed,
    };
    let sched = RejectScheduler::new(pin, clock.clone(), "GPIO17", rig_timing(), policy)
        .expect("scheduler");
    Rig {
        clock,
        mock,
        record,
        sched,
    }
}

impl Rig {
    /// Moves the clock to `t`, polling at every deadline on the way (what the worker does).
    fn run_until(&mut self, t: Timestamp) {
        while let Some(d) = self.sched.next_deadline() {
            if d > t {
                break;
            }
            self.clock.set(d);
            self.sched.poll(d).expect("poll");
        }
        self.clock.set(t);
        self.sched.poll(t).expect("poll");
    }

    /// Switches the fail-safe policy, keeping the rig's timing (a reload of the policy alone).
    fn set_policy(&mut self, policy: FailSafePolicy) {
        self.sched
            .reconfigure(rig_timing(), policy)
            .expect("reconfigure");
    }

    /// Finishes the scheduler (drain + safe) and checks the mock saw exactly what was expected.
    fn finish(mut self) -> (ActuatorStats, Vec<(Timestamp, Timestamp)>) {
        let (_pin, stats) = self.sched.finish().expect("finish");
        self.mock.done();
        (stats, self.record.pulses())
    }
}

fn pulse(from: u64, to: u64) -> (Timestamp, Timestamp) {
    (ms(from), ms(to))
}

/// A worker on the real clock with a recording pin and the reject policy.
fn real_clock_worker(timing: PulseTiming) -> (RejectWorker, PinRecord) {
    let clock = MonotonicClock::new();
    let (pin, record) = RecordingPin::new(clock);
    let sched = RejectScheduler::new(pin, clock, "test", timing, FailSafePolicy::Reject)
        .expect("scheduler");
    (RejectWorker::spawn(sched).expect("spawn"), record)
}

fn timing_ms(delay: u64, pulse: u64) -> PulseTiming {
    PulseTiming {
        delay: Duration::from_millis(delay),
        pulse: Duration::from_millis(pulse),
    }
}

#[test]
fn line_is_safe_at_start_and_after_drop() {
    let clock = ManualClock::new(ms(0));
    let mut mock = PinMock::new(&[T::set(State::Low), T::set(State::Low)]);
    let timing = rig_timing();
    let sched = RejectScheduler::new(
        mock.clone(),
        clock,
        "GPIO17",
        timing,
        FailSafePolicy::Reject,
    )
    .expect("scheduler");
    assert!(!sched.is_active());
    drop(sched);
    mock.done();
}

#[test]
fn zero_pulse_is_refused() {
    let timing = PulseTiming {
        delay: DELAY,
        pulse: Duration::ZERO,
    };
    let e = RejectScheduler::new(
        LogPin::new("x"),
        ManualClock::default(),
        "x",
        timing,
        FailSafePolicy::Reject,
    )
    .expect_err("zero pulse");
    assert!(matches!(e, ActuateError::ZeroPulse));
}

#[test]
fn reject_fires_at_capture_plus_delay_for_pulse_length() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    // Verdict 40 ms after capture.
    r.clock.set(ms(1040));
    let s = r
        .sched
        .submit(7, ms(1000), Verdict::Reject)
        .expect("submit");
    assert_eq!(
        s,
        Scheduled::Pulse {
            start: ms(1300),
            end: ms(1350),
            merged: false
        }
    );
    assert_eq!(r.sched.next_deadline(), Some(ms(1300)));
    r.run_until(ms(1299));
    assert!(!r.record.is_active());
    r.run_until(ms(1300));
    assert!(r.record.is_active());
    assert_eq!(r.sched.next_deadline(), Some(ms(1350)));
    r.run_until(ms(2000));
    assert!(!r.record.is_active());
    assert_eq!(r.sched.next_deadline(), None);
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350)]);
    assert_eq!((stats.parts, stats.rejects, stats.pulses), (1, 1, 1));
}

#[test]
fn parts_in_flight_fire_in_order_at_their_own_times() {
    // Parts every 100 ms, verdicts 60 ms after capture; parts 1 and 3 are defective.
    let mut r = rig(
        &[
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::Low),
        ],
        FailSafePolicy::Reject,
    );
    let verdicts = [
        Verdict::Pass,
        Verdict::Reject,
        Verdict::Pass,
        Verdict::Reject,
        Verdict::Pass,
    ];
    for (i, v) in verdicts.into_iter().enumerate() {
        let captured = ms(1000 + 100 * i as u64);
        r.run_until(captured + Duration::from_millis(60));
        r.sched.submit(i as u64, captured, v).expect("submit");
    }
    // At 1460 part 1's pulse (1400..1450) is over and part 3's (1600..1650) is pending.
    assert_eq!(r.sched.pending(), 1);
    r.run_until(ms(3000));
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1400, 1450), pulse(1600, 1650)]);
    assert_eq!((stats.parts, stats.rejects, stats.pulses), (5, 2, 2));
}

#[test]
fn verdicts_out_of_order_still_fire_in_time_order() {
    let mut r = rig(
        &[
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::Low),
        ],
        FailSafePolicy::Reject,
    );
    r.clock.set(ms(1250));
    r.sched
        .submit(2, ms(1200), Verdict::Reject)
        .expect("submit");
    r.sched
        .submit(1, ms(1000), Verdict::Reject)
        .expect("submit");
    assert_eq!(r.sched.next_deadline(), Some(ms(1300)));
    let (_, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350), pulse(1500, 1550)]);
}

#[test]
fn overlapping_and_touching_pulses_merge_into_one() {
    // Captures at 1000, 1030 (overlaps), 1080 (touches 1030's end), then 1200 (separate).
    let mut r = rig(
        &[
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::Low),
        ],
        FailSafePolicy::Reject,
    );
    r.clock.set(ms(1100));
    let a = r.sched.submit(0, ms(1000), Verdict::Reject).expect("a");
    let b = r.sched.submit(1, ms(1030), Verdict::Reject).expect("b");
    assert_eq!(
        a,
        Scheduled::Pulse {
            start: ms(1300),
            end: ms(1350),
            merged: false
        }
    );
    assert_eq!(
        b,
        Scheduled::Pulse {
            start: ms(1330),
            end: ms(1380),
            merged: true
        }
    );
    assert_eq!(r.sched.pending(), 1);
    // Third part's verdict arrives while the merged pulse is already running.
    r.run_until(ms(1320));
    assert!(r.record.is_active());
    let c = r.sched.submit(2, ms(1080), Verdict::Reject).expect("c");
    assert_eq!(
        c,
        Scheduled::Pulse {
            start: ms(1380),
            end: ms(1430),
            merged: true
        }
    );
    r.sched.submit(3, ms(1200), Verdict::Reject).expect("d");
    r.run_until(ms(2000));
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1430), pulse(1500, 1550)]);
    assert_eq!((stats.rejects, stats.pulses, stats.merged), (4, 2, 2));
}

#[test]
fn a_pending_pulse_is_absorbed_when_the_running_one_grows_into_it() {
    // Running 1300..1350, pending 1390..1440; a part at 1045 (1345..1395) bridges them.
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.clock.set(ms(1200));
    r.sched.submit(0, ms(1000), Verdict::Reject).expect("a");
    r.sched.submit(1, ms(1090), Verdict::Reject).expect("b");
    r.run_until(ms(1310));
    r.sched
        .submit(2, ms(1045), Verdict::Reject)
        .expect("bridge");
    assert_eq!(r.sched.pending(), 0);
    let (_, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1440)]);
}

#[test]
fn unjudged_parts_are_rejected_by_default_policy() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.clock.set(ms(1200));
    r.sched
        .submit(0, ms(1000), FailSafePolicy::Reject.verdict())
        .expect("submit");
    r.sched.submit(1, ms(1100), Verdict::Pass).expect("submit");
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350)]);
    assert_eq!((stats.rejects, stats.failsafe_rejects), (1, 1));
}

/// The policy lives in the scheduler alone: an unjudged part gets the one in force there, a
/// reconfigure changes it for the next part.
#[test]
fn an_unjudged_part_gets_the_schedulers_policy_also_after_a_reconfigure() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.clock.set(ms(1200));
    let (verdict, _) = r.sched.submit_unjudged(0, ms(1000)).expect("submit");
    assert_eq!(verdict, Verdict::FailsafeReject);
    r.set_policy(FailSafePolicy::Pass);
    assert_eq!(
        r.sched.submit_unjudged(1, ms(1100)).expect("submit"),
        (Verdict::FailsafePass, Scheduled::Pass)
    );
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350)]);
    assert_eq!((stats.failsafe_rejects, stats.failsafe_passes), (1, 1));
}

/// An armed part whose deadline passed keeps the fail-safe applied then, whatever the policy
/// says when its failure is reported.
#[test]
fn an_unjudged_part_already_expired_keeps_the_verdict_applied_at_its_deadline() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.sched.arm(0, ms(1000), ms(1100)).expect("arm");
    r.run_until(ms(1150));
    r.set_policy(FailSafePolicy::Pass);
    let (verdict, scheduled) = r.sched.submit_unjudged(0, ms(1000)).expect("submit");
    assert_eq!(verdict, Verdict::FailsafeReject);
    assert!(
        matches!(
            scheduled,
            Scheduled::Expired {
                verdict: Verdict::FailsafeReject,
                ..
            }
        ),
        "{scheduled:?}"
    );
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350)]);
    assert_eq!((stats.expired, stats.failsafe_rejects), (1, 1));
}

/// The worker names the policy its scheduler applies, for a failed part whose verdict the
/// scheduler thread cannot give; a reconfigure changes both.
#[test]
fn the_worker_names_the_policy_its_scheduler_applies() {
    let (clock, timing) = (MonotonicClock::new(), timing_ms(300, 50));
    let (worker, _record) = real_clock_worker(timing);
    assert_eq!(worker.policy(), FailSafePolicy::Reject);
    worker
        .reconfigure(timing, FailSafePolicy::Pass)
        .expect("reconfigure");
    assert_eq!(worker.policy(), FailSafePolicy::Pass);
    let (verdict, scheduled) = worker.submit_unjudged(0, clock.now()).expect("submit");
    assert_eq!(
        (verdict, scheduled),
        (Verdict::FailsafePass, Scheduled::Pass)
    );
    let stats = worker.shutdown().expect("shutdown");
    assert_eq!(stats.failsafe_passes, 1);
}

#[test]
fn unjudged_parts_pass_under_pass_policy() {
    let mut r = rig(&[T::set(State::Low)], FailSafePolicy::Pass);
    r.clock.set(ms(1200));
    assert_eq!(
        r.sched
            .submit(0, ms(1000), FailSafePolicy::Pass.verdict())
            .expect("submit"),
        Scheduled::Pass
    );
    let (stats, pulses) = r.finish();
    assert!(pulses.is_empty());
    assert_eq!((stats.rejects, stats.failsafe_passes), (0, 1));
}

#[test]
fn late_verdict_fires_for_the_rest_of_the_window_or_is_reported_missed() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    // Window 1300..1350; verdict at 1320: fire now until 1350.
    r.clock.set(ms(1320));
    let s = r.sched.submit(0, ms(1000), Verdict::Reject).expect("late");
    assert_eq!(
        s,
        Scheduled::Pulse {
            start: ms(1320),
            end: ms(1350),
            merged: false
        }
    );
    assert!(r.record.is_active());
    // Window 1310..1360 (capture 1010) is over at 1400: missed, the line is not touched.
    r.run_until(ms(1400));
    let m = r
        .sched
        .submit(1, ms(1010), Verdict::Reject)
        .expect("missed");
    assert_eq!(
        m,
        Scheduled::Missed {
            late_by: Duration::from_millis(40)
        }
    );
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1320, 1350)]);
    assert_eq!((stats.late, stats.missed, stats.pulses), (1, 1, 1));
}

#[test]
fn an_armed_part_without_a_verdict_is_failed_safe_at_its_deadline_in_time_for_its_pulse() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    // Captured at 1000, budget 100 ms: deadline 1100, pulse window 1300..1350.
    r.sched.arm(0, ms(1000), ms(1100)).expect("arm");
    assert_eq!(r.sched.next_deadline(), Some(ms(1100)));
    r.run_until(ms(1099));
    assert_eq!((r.sched.armed(), r.sched.pending()), (1, 0));
    r.run_until(ms(1100));
    assert_eq!((r.sched.armed(), r.sched.pending()), (0, 1));
    // The engine's verdict comes at 1400, long after the part passed the flap: it is
    // refused, and the fail-safe pulse was on time.
    r.run_until(ms(1400));
    assert_eq!(
        r.sched.submit(0, ms(1000), Verdict::Pass).expect("late"),
        Scheduled::Expired {
            decided: ms(1100),
            verdict: Verdict::FailsafeReject
        }
    );
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350)]);
    assert_eq!(
        (
            stats.parts,
            stats.expired,
            stats.failsafe_rejects,
            stats.missed
        ),
        (1, 1, 1, 0),
        "one verdict for the part, none missed"
    );
}

#[test]
fn a_verdict_before_the_deadline_disarms_the_part() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.sched.arm(0, ms(1000), ms(1100)).expect("arm");
    r.sched.arm(1, ms(1010), ms(1110)).expect("arm");
    r.clock.set(ms(1050));
    assert_eq!(
        r.sched.submit(0, ms(1000), Verdict::Pass).expect("pass"),
        Scheduled::Pass
    );
    r.clock.set(ms(1060));
    assert!(matches!(
        r.sched
            .submit(1, ms(1010), Verdict::Reject)
            .expect("reject"),
        Scheduled::Pulse { .. }
    ));
    assert_eq!(r.sched.armed(), 0);
    r.run_until(ms(2000));
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1310, 1360)]);
    assert_eq!(
        (stats.parts, stats.expired, stats.failsafe_rejects),
        (2, 0, 0)
    );
}

#[test]
fn a_verdict_racing_the_deadline_loses_and_the_part_is_counted_once() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.sched.arm(7, ms(1000), ms(1100)).expect("arm");
    // The worker has not polled yet, but the deadline is over when the verdict arrives.
    r.clock.set(ms(1101));
    assert_eq!(
        r.sched.submit(7, ms(1000), Verdict::Pass).expect("submit"),
        Scheduled::Expired {
            decided: ms(1101),
            verdict: Verdict::FailsafeReject
        }
    );
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350)]);
    assert_eq!((stats.parts, stats.expired), (1, 1));
}

#[test]
fn expired_parts_pass_under_pass_policy_and_leftovers_fail_safe_on_drain() {
    let mut r = rig(&[T::set(State::Low)], FailSafePolicy::Pass);
    r.sched.arm(0, ms(1000), ms(1100)).expect("arm");
    r.run_until(ms(1200));
    assert_eq!(
        r.sched.submit(0, ms(1000), Verdict::Reject).expect("late"),
        Scheduled::Expired {
            decided: ms(1100),
            verdict: Verdict::FailsafePass
        }
    );
    let (stats, pulses) = r.finish();
    assert!(pulses.is_empty());
    assert_eq!((stats.expired, stats.failsafe_passes), (1, 1));

    // Under the reject policy, a part still armed at shutdown is rejected on the way out.
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.sched.arm(3, ms(1000), ms(1100)).expect("arm");
    let (stats, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1350)]);
    assert_eq!((stats.expired, stats.failsafe_rejects), (1, 1));
}

#[test]
fn worker_fails_safe_at_the_deadline_and_reports_the_late_verdict_as_expired() {
    let (clock, timing) = (MonotonicClock::new(), timing_ms(300, 200));
    let (worker, record) = real_clock_worker(timing);
    let captured = clock.now();
    worker
        .arm(1, captured, captured + Duration::from_millis(10))
        .expect("arm");
    // The "engine" answers after the part's whole pulse window.
    std::thread::sleep(Duration::from_millis(600));
    let answer = worker.submit(1, captured, Verdict::Pass).expect("submit");
    assert!(matches!(answer, Scheduled::Expired { .. }), "{answer:?}");
    let stats = worker.shutdown().expect("shutdown");
    assert_eq!((stats.expired, stats.pulses, stats.missed), (1, 1, 0));
    let pulses = record.pulses();
    assert_eq!(pulses.len(), 1);
    assert!(pulses[0].0 >= captured + timing.delay, "{pulses:?}");
}

#[test]
fn finish_drains_pending_pulses_at_their_times() {
    let mut r = rig(
        &[
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::Low),
        ],
        FailSafePolicy::Reject,
    );
    r.clock.set(ms(1050));
    for i in 0..3u64 {
        r.sched
            .submit(i, ms(1000 + 100 * i), Verdict::Reject)
            .expect("submit");
    }
    // Shutdown requested now, before any pulse has started: all three still fire.
    let (stats, pulses) = r.finish();
    assert_eq!(
        pulses,
        [pulse(1300, 1350), pulse(1400, 1450), pulse(1500, 1550)]
    );
    assert_eq!(stats.pulses, 3);
}

#[test]
fn abort_drops_pending_and_sets_safe() {
    let mut r = rig(
        &[T::set(State::High), T::set(State::Low), T::set(State::Low)],
        FailSafePolicy::Reject,
    );
    r.clock.set(ms(1050));
    r.sched
        .submit(0, ms(1000), Verdict::Reject)
        .expect("submit");
    r.sched
        .submit(1, ms(1100), Verdict::Reject)
        .expect("submit");
    r.run_until(ms(1310));
    assert!(r.record.is_active());
    r.sched.abort().expect("abort");
    assert_eq!(r.sched.next_deadline(), None);
    let (_, pulses) = r.finish();
    assert_eq!(pulses, [pulse(1300, 1310)]);
}

#[test]
fn pin_failure_is_reported_with_the_line_name() {
    let clock = ManualClock::new(ms(1000));
    let err = MockError::Io(std::io::ErrorKind::PermissionDenied);
    let mut mock = PinMock::new(&[
        T::set(State::Low),
        T::set(State::High).with_error(err),
        T::set(State::Low),
    ]);
    let timing = PulseTiming {
        delay: Duration::ZERO,
        pulse: PULSE,
    };
    let mut sched = RejectScheduler::new(
        mock.clone(),
        clock,
        "GPIO17",
        timing,
        FailSafePolicy::Reject,
    )
    .expect("scheduler");
    let e = sched
        .submit(0, ms(1000), Verdict::Reject)
        .expect_err("pin fails");
    let msg = e.to_string();
    assert!(msg.contains("GPIO17") && msg.contains("active"), "{msg}");
    assert_eq!(sched.stats().pin_errors, 1);
    drop(sched); // sets safe
    mock.done();
}

#[test]
fn worker_thread_fires_on_the_real_clock_and_drains_on_shutdown() {
    let (clock, timing) = (MonotonicClock::new(), timing_ms(40, 20));
    let (worker, record) = real_clock_worker(timing);
    let t0 = clock.now();
    worker.submit(0, t0, Verdict::Reject).expect("submit");
    worker.submit(1, t0, Verdict::Pass).expect("submit");
    worker
        .submit(2, t0 + Duration::from_millis(100), Verdict::Reject)
        .expect("submit");
    // Shut down at once: both pulses are still due and must fire.
    let stats = worker.shutdown().expect("shutdown");
    assert_eq!((stats.parts, stats.pulses), (3, 2));
    let pulses = record.pulses();
    assert_eq!(pulses.len(), 2, "{pulses:?}");
    for ((start, end), due) in pulses.iter().zip([40u64, 140]) {
        let due = t0 + Duration::from_millis(due);
        assert!(*start >= due, "pulse started before it was due");
        // Generous bound: CI machines are busy. A late wake-up shortens the pulse (its end is
        // tied to the part's position), it never moves the end earlier.
        assert!(
            *start - due < Duration::from_millis(30),
            "{:?} late",
            *start - due
        );
        assert!(*end >= due + Duration::from_millis(20), "pulse ended early");
    }
    assert!(!record.is_active());
}

#[test]
fn dropping_the_worker_drains_too() {
    let (clock, timing) = (MonotonicClock::new(), timing_ms(10, 10));
    let (worker, record) = real_clock_worker(timing);
    worker
        .submit(0, clock.now(), FailSafePolicy::Reject.verdict())
        .expect("submit");
    drop(worker);
    assert_eq!(record.pulses().len(), 1);
    assert!(!record.is_active());
}

#[test]
fn log_pin_tracks_its_state() {
    let mut p = LogPin::new("GPIO17");
    assert_eq!(p.is_set_high(), Ok(false));
    assert_eq!(p.set_high(), Ok(()));
    assert_eq!(p.is_set_high(), Ok(true));
    assert_eq!(p.set_low(), Ok(()));
    assert_eq!(p.is_set_low(), Ok(true));
}

#[cfg(target_os = "linux")]
#[test]
fn a_realtime_thread_runs_fifo_or_says_why_not() {
    // On its own thread: the test harness's thread keeps its policy.
    std::thread::spawn(|| match super::raise_to_realtime() {
        Ok(()) => {
            let mut policy = 0;
            let mut param = libc::sched_param { sched_priority: 0 };
            // SAFETY: reads the calling thread's own parameters into locals.
            let code = unsafe {
                libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param)
            };
            assert_eq!(code, 0);
            assert_eq!(policy, libc::SCHED_FIFO);
            assert_eq!(param.sched_priority, super::REJECT_THREAD_PRIORITY);
        }
        // Without RLIMIT_RTPRIO or CAP_SYS_NICE the kernel refuses with EPERM, nothing else.
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
    })
    .join()
    .unwrap();
}
