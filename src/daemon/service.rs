//! `ustad run` and `ustad check-config` as library functions: logging to journald or the
//! terminal, signal handling, and the exit summary. `main.rs` only parses arguments.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use crate::config::{ActuatorConfig, CameraConfig, Config, ConfigError, TriggerConfig};

use super::metrics::Snapshot;
use super::{Daemon, DaemonError, DaemonOptions};

/// Whether `RUST_LOG` chose the levels (then the configuration's `log.level` is ignored).
static RUST_LOG_SET: OnceLock<bool> = OnceLock::new();

/// Sets up logging once per process: the systemd journal (with priorities and structured
/// fields) when stderr is connected to it (`$JOURNAL_STREAM`), otherwise `env_logger` on
/// stderr. Levels: `RUST_LOG` if set, else `info` until a configuration says otherwise
/// ([`apply_log_level`]).
pub fn init_logging() {
    let rust_log = std::env::var_os("RUST_LOG").is_some();
    let _ = RUST_LOG_SET.set(rust_log);
    #[cfg(target_os = "linux")]
    if systemd_journal_logger::connected_to_journal()
        && let Ok(logger) = systemd_journal_logger::JournalLog::new()
        && logger.install().is_ok()
    {
        log::set_max_level(log::LevelFilter::Info);
        return;
    }
    let mut builder = env_logger::Builder::new();
    if rust_log {
        builder.parse_env("RUST_LOG");
    } else {
        // Let everything through env_logger; `log::set_max_level` is the one knob, so a
        // configuration (or a reload) can raise the level later.
        builder.filter_level(log::LevelFilter::Trace);
    }
    if builder.try_init().is_ok() && !rust_log {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Applies the configuration's `log.level`, unless `RUST_LOG` chose the levels.
pub fn apply_log_level(level: log::LevelFilter) {
    if !RUST_LOG_SET.get().copied().unwrap_or(false) {
        log::set_max_level(level);
    }
}

/// Validates a configuration file without running anything; on success, a short human
/// summary of what it would do (and warnings, e.g. a bundle folder that is not there yet).
pub fn check_config(path: &Path) -> Result<String, ConfigError> {
    let config = Config::load(path)?;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let source = match &config.camera {
        CameraConfig::V4l2(v) => format!(
            "V4L2 camera {} ({:?} {}x{}{})",
            v.device.display(),
            v.pixel_format,
            v.width,
            v.height,
            v.fps.map_or(String::new(), |f| format!(" @ {f} fps"))
        ),
        CameraConfig::Replay(r) => format!(
            "replay of {}{}{}",
            r.path.display(),
            r.fps.map_or(String::new(), |f| format!(" @ {f} fps")),
            if r.looping { ", looping" } else { "" }
        ),
    };
    let _ = writeln!(out, "  source:   {source}");
    if let Some(r) = config.roi {
        let _ = writeln!(
            out,
            "  roi:      {}x{} at ({}, {})",
            r.width, r.height, r.x, r.y
        );
    }
    let trigger = match &config.trigger {
        TriggerConfig::FreeRun => "free-run (every frame is a part)".to_string(),
        TriggerConfig::Gpio(g) => format!("part sensor on {} ({:?} edge)", g.line, g.edge),
    };
    let _ = writeln!(out, "  trigger:  {trigger}");
    let actuator = match &config.reject.actuator {
        ActuatorConfig::Gpio(g) => format!(
            "GPIO {}{}",
            g.line,
            if g.active_high { "" } else { " (active low)" }
        ),
        ActuatorConfig::LogOnly { line } => {
            format!("log only ({})", line.as_deref().unwrap_or("reject"))
        }
        ActuatorConfig::Mock => "mock (recorded in memory)".to_string(),
    };
    let _ = writeln!(
        out,
        "  reject:   {actuator}, {} ms pulse {} ms after capture",
        config.reject.pulse.as_millis(),
        config.reject.delay.as_millis()
    );
    let _ = writeln!(
        out,
        "  failsafe: {:?} when not judged within {} ms",
        config.failsafe.policy,
        config.failsafe.frame_budget.as_millis()
    );
    let _ = writeln!(out, "  http:     {}", config.http.listen);
    let unusable = |field: &str, message: String| ConfigError::Unusable {
        file: path.to_path_buf(),
        field: field.into(),
        message,
    };
    let bundle = ustad_core::bundle::Bundle::load(&config.model.bundle)
        .map_err(|e| unusable("model.bundle", e.to_string()))?;
    let _ = writeln!(
        out,
        "  bundle:   {} (threshold {:.4}: {} {:.4} / sensitivity {})",
        config.model.bundle.display(),
        super::pipeline::effective_threshold(bundle.manifest.decision.threshold, &config.model),
        if config.model.threshold.is_some() {
            "override"
        } else {
            "calibrated"
        },
        config
            .model
            .threshold
            .unwrap_or(bundle.manifest.decision.threshold),
        config.model.sensitivity
    );
    if let CameraConfig::Replay(r) = &config.camera {
        let source = crate::capture::replay::ReplaySource::open(r)
            .map_err(|e| unusable("camera.path", e.to_string()))?;
        let _ = writeln!(out, "  frames:   {} images to replay", source.files().len());
    }
    if let Some(archive) = &config.archive {
        check_writable_dir(&archive.dir).map_err(|e| unusable("archive.dir", e))?;
        let _ = writeln!(out, "  archive:  {} (writable)", archive.dir.display());
    }
    Ok(out)
}

/// Creates `dir` if needed and proves it writable with a probe file, as the archive would.
fn check_writable_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let probe = dir.join(format!(".ustad-check-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .map_err(|e| format!("{}: not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `ustad run`: starts the daemon with systemd integration and signal handling, runs until
/// the source ends, `max_frames` is reached, or SIGTERM/SIGINT; SIGHUP reloads. Returns the
/// final counters (the caller prints them).
pub fn run(config_path: &Path, max_frames: Option<u64>) -> Result<Snapshot, DaemonError> {
    // Take the signals before anything else: one that arrives while the bundle loads waits
    // for the daemon instead of killing the process with the default action.
    let pending = signals::register()?;
    let config = Config::load(config_path)?;
    apply_log_level(config.log.level);
    let mut options = DaemonOptions::production();
    options.max_frames = max_frames;
    if let Some(w) = options.watchdog {
        log::info!("systemd watchdog: {} ms", w.as_millis());
    }
    let mut daemon = Daemon::start_with(config_path, config, options)?;
    let signals = pending.serve(daemon.handle())?;
    let result = daemon.wait();
    signals.close();
    result
}

#[cfg(target_os = "linux")]
mod signals {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use signal_hook::iterator::{Handle, Signals};

    use super::super::{DaemonError, DaemonHandle};

    /// The signal thread; `close` ends it.
    pub struct Installed {
        handle: Handle,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    /// Signals registered (and queued) but not yet acted on.
    pub struct Pending(Signals);

    /// Registers SIGTERM, SIGINT and SIGHUP: from now on they are queued, not fatal.
    pub fn register() -> Result<Pending, DaemonError> {
        Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map(Pending)
            .map_err(DaemonError::Signals)
    }

    impl Pending {
        /// SIGTERM / SIGINT stop gracefully (pending rejects still fire), SIGHUP reloads;
        /// signals queued since [`register`] are handled first.
        pub fn serve(self, daemon: DaemonHandle) -> Result<Installed, DaemonError> {
            install(self.0, daemon)
        }
    }

    fn install(mut signals: Signals, daemon: DaemonHandle) -> Result<Installed, DaemonError> {
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("ustad-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    match signal {
                        SIGHUP => {
                            log::info!("SIGHUP: reloading the configuration");
                            // Errors are logged by reload itself; the old config keeps running.
                            let _ = daemon.reload();
                        }
                        _ => {
                            log::info!("signal {signal}: stopping");
                            daemon.stop();
                        }
                    }
                }
            })
            .map_err(|source| DaemonError::Spawn {
                name: "ustad-signals",
                source,
            })?;
        Ok(Installed {
            handle,
            thread: Some(thread),
        })
    }

    impl Installed {
        /// Stops listening (default signal handling is not restored: the process is exiting).
        pub fn close(mut self) {
            self.handle.close();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod signals {
    use super::super::{DaemonError, DaemonHandle};

    pub struct Installed;
    pub struct Pending;

    pub fn register() -> Result<Pending, DaemonError> {
        Ok(Pending)
    }

    impl Pending {
        pub fn serve(self, _: DaemonHandle) -> Result<Installed, DaemonError> {
            Ok(Installed)
        }
    }

    impl Installed {
        pub fn close(self) {}
    }
}
