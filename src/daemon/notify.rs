//! Telling the service manager how the daemon is doing (`sd_notify`).
//!
//! Under systemd (`Type=notify`) the daemon says READY=1 once the bundle is loaded (so
//! `systemctl start` returns when parts can actually be judged), pings WATCHDOG=1 from the
//! frame loop (so a wedged pipeline is restarted, not just a dead process), and says
//! STOPPING=1 / RELOADING=1 around those transitions. The notifier is a trait so tests can
//! record what was sent, and from which thread.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Timestamp;

/// A state change for the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Start-up finished: frames are being judged.
    Ready,
    /// A configuration reload started (READY follows when it is done).
    Reloading,
    /// Shutting down.
    Stopping,
    /// Alive: the frame loop made progress.
    Watchdog,
    /// A free-form status line (`systemctl status` shows it).
    Status(String),
}

/// Where notifications go.
pub trait Notifier: Send + Sync {
    /// Sends one notification; failures are logged, never fatal (the line must keep running
    /// even if the service manager's socket is gone).
    fn notify(&self, n: &Notification);
}

/// The real one: `$NOTIFY_SOCKET` (does nothing when not started by systemd).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemdNotifier;

impl SystemdNotifier {
    /// The watchdog interval systemd asks for (`WatchdogSec=`, via `$WATCHDOG_USEC`).
    pub fn watchdog_interval() -> Option<Duration> {
        #[cfg(target_os = "linux")]
        {
            sd_notify::watchdog_enabled()
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

impl Notifier for SystemdNotifier {
    fn notify(&self, n: &Notification) {
        #[cfg(target_os = "linux")]
        {
            use sd_notify::NotifyState;
            let result = match n {
                Notification::Ready => sd_notify::notify(&[NotifyState::Ready]),
                Notification::Reloading => {
                    // systemd ≥ 253 wants the monotonic time with RELOADING=1.
                    match sd_notify::NotifyState::monotonic_usec_now() {
                        Ok(t) => sd_notify::notify(&[NotifyState::Reloading, t]),
                        Err(_) => sd_notify::notify(&[NotifyState::Reloading]),
                    }
                }
                Notification::Stopping => sd_notify::notify(&[NotifyState::Stopping]),
                Notification::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
                Notification::Status(s) => sd_notify::notify(&[NotifyState::Status(s)]),
            };
            if let Err(e) = result {
                log::warn!("sd_notify {n:?}: {e}");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = n;
    }
}

/// Sends nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullNotifier;

impl Notifier for NullNotifier {
    fn notify(&self, _: &Notification) {}
}

/// Records notifications with the name of the thread that sent them (tests).
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    sent: Mutex<Vec<(Notification, String)>>,
}

impl RecordingNotifier {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent so far, with the sending thread's name.
    pub fn sent(&self) -> Vec<(Notification, String)> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many times `n` was sent.
    pub fn count(&self, n: &Notification) -> usize {
        self.sent().iter().filter(|(m, _)| m == n).count()
    }
}

impl Notifier for RecordingNotifier {
    fn notify(&self, n: &Notification) {
        let thread = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((n.clone(), thread));
    }
}

/// Paces WATCHDOG=1 pings: at most one per half interval, as sd_watchdog_enabled(3)
/// recommends, so a busy frame loop does not flood the socket.
#[derive(Debug, Clone)]
pub struct WatchdogPacer {
    interval: Option<Duration>,
    last: Option<Timestamp>,
}

impl WatchdogPacer {
    /// `interval`: the service manager's watchdog timeout; `None` disables pings.
    pub fn new(interval: Option<Duration>) -> Self {
        WatchdogPacer {
            interval,
            last: None,
        }
    }

    /// Pings if half the interval has passed since the last ping. Returns whether it did.
    pub fn tick(&mut self, now: Timestamp, notifier: &dyn Notifier) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        if self.last.is_some_and(|last| now - last < interval / 2) {
            return false;
        }
        self.last = Some(now);
        notifier.notify(&Notification::Watchdog);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_pings_at_most_every_half_interval() {
        let n = RecordingNotifier::new();
        let mut p = WatchdogPacer::new(Some(Duration::from_millis(100)));
        let pings: Vec<bool> = [0u64, 10, 49, 50, 60, 100, 200]
            .into_iter()
            .map(|t| p.tick(Timestamp::from_millis(t), &n))
            .collect();
        assert_eq!(pings, [true, false, false, true, false, true, true]);
        assert_eq!(n.count(&Notification::Watchdog), 4);
        let mut off = WatchdogPacer::new(None);
        assert!(!off.tick(Timestamp::from_millis(5), &n));
    }
}
