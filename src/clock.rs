//! One monotonic time base for frames, trigger edges and reject pulses.
//!
//! A part's reject pulse is due at *capture time + delay*. The capture time comes from the
//! kernel (V4L2 buffer timestamps, GPIO edge events) and both use `CLOCK_MONOTONIC` on Linux,
//! so the daemon keeps every time as a [`Timestamp`] on that same clock: no conversion, no
//! drift between the camera, the part sensor and the actuator. `std::time::Instant` cannot be
//! built from a kernel timestamp, which is why this module exists.
//!
//! Everything that needs "now" takes a [`Clock`], so tests run on a [`ManualClock`] and are
//! deterministic: no sleeps, no flaky timing.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A point on the monotonic clock, as the time elapsed since the clock's (arbitrary) origin.
///
/// On Linux the origin is that of `CLOCK_MONOTONIC` (boot), the clock of V4L2 and GPIO kernel
/// timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The clock's origin.
    pub const ZERO: Timestamp = Timestamp(Duration::ZERO);

    /// A timestamp `d` after the clock's origin.
    pub const fn from_duration(d: Duration) -> Self {
        Timestamp(d)
    }

    /// A timestamp from nanoseconds since the origin (the unit of GPIO edge events).
    pub const fn from_nanos(ns: u64) -> Self {
        Timestamp(Duration::from_nanos(ns))
    }

    /// A timestamp from milliseconds since the origin (handy in tests).
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(Duration::from_millis(ms))
    }

    /// Time since the clock's origin.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later than `self`.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Timestamp> {
        self.0.checked_add(d).map(Timestamp)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturates instead of panicking: a deadline at the end of time is never reached, which is
    /// the only sensible meaning of an overflowing deadline.
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d))
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;

    /// Saturating difference (see [`Timestamp::saturating_duration_since`]).
    fn sub(self, earlier: Timestamp) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.0.as_secs_f64())
    }
}

/// A source of monotonic time that can also wait.
///
/// `sleep_until` is part of the trait so that a simulated clock can *advance* instead of
/// sleeping: a replay source paced at a fixed frame rate, or a scheduler draining its pending
/// pulses, then runs instantly and deterministically in tests.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Blocks until [`Clock::now`] is at least `deadline` (returns at once if it already is).
    fn sleep_until(&self, deadline: Timestamp);
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn sleep_until(&self, deadline: Timestamp) {
        (**self).sleep_until(deadline)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn sleep_until(&self, deadline: Timestamp) {
        (**self).sleep_until(deadline)
    }
}

/// The real clock: `CLOCK_MONOTONIC` on Linux, the same clock as kernel frame and edge
/// timestamps. Elsewhere, time since the first use of this clock in the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl MonotonicClock {
    /// A new handle on the real monotonic clock (all handles share one time base).
    pub fn new() -> Self {
        MonotonicClock
    }
}

#[cfg(target_os = "linux")]
fn monotonic_now() -> Timestamp {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // Cannot happen with a valid clock id and pointer; fall back to the origin rather than
        // panic in the frame loop.
        return Timestamp::ZERO;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Timestamp(Duration::new(secs, nanos))
}

#[cfg(not(target_os = "linux"))]
fn monotonic_now() -> Timestamp {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    Timestamp(ORIGIN.get_or_init(Instant::now).elapsed())
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        monotonic_now()
    }

    fn sleep_until(&self, deadline: Timestamp) {
        loop {
            let now = monotonic_now();
            if now >= deadline {
                return;
            }
            std::thread::sleep(deadline - now);
        }
    }
}

/// A simulated clock for tests: time moves only when told to, and `sleep_until` jumps
/// straight to the deadline. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A clock that reads `start` until it is moved.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = *now + d;
    }

    /// Sets the clock to `t`; a monotonic clock never goes back, so an earlier `t` is ignored.
    pub fn set(&self, t: Timestamp) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        if t > *now {
            *now = t;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sleep_until(&self, deadline: Timestamp) {
        self.set(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward_and_sleeps() {
        let clock = MonotonicClock::new();
        let a = clock.now();
        clock.sleep_until(a + Duration::from_millis(5));
        let b = clock.now();
        assert!(b >= a + Duration::from_millis(5), "{a} -> {b}");
    }

    #[test]
    fn manual_clock_only_moves_when_told_and_never_back() {
        let clock = ManualClock::new(Timestamp::from_millis(100));
        let shared = clock.clone();
        assert_eq!(clock.now(), Timestamp::from_millis(100));
        shared.advance(Duration::from_millis(5));
        assert_eq!(clock.now(), Timestamp::from_millis(105));
        clock.sleep_until(Timestamp::from_millis(150));
        assert_eq!(shared.now(), Timestamp::from_millis(150));
        clock.set(Timestamp::from_millis(10));
        assert_eq!(clock.now(), Timestamp::from_millis(150));
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_millis(10);
        assert_eq!(t - Timestamp::from_millis(20), Duration::ZERO);
        assert_eq!(
            Timestamp::from_duration(Duration::MAX) + Duration::from_secs(1),
            Timestamp::from_duration(Duration::MAX)
        );
        assert_eq!(Timestamp::from_nanos(1_500_000).to_string(), "0.001500s");
    }
}
