//! The edge daemon behind `ustad run`: camera to reject flap.
//!
//! [`Daemon::start`] loads the configuration and the bundle, opens the frame source, the reject
//! output (and the part sensor), starts the [`pipeline`] threads, the archive and the
//! observability endpoint ([`http`]), and tells systemd it is ready ([`notify`]).
//! [`Daemon::wait`] runs until the source ends (a replay folder), `--max-frames` is reached or
//! a stop is requested, then drains: every queued frame still gets its verdict, and every
//! pending reject pulse still fires, because those parts are already on the belt.
//!
//! A [`DaemonHandle`] stops or reloads a running daemon from another thread (the signal
//! thread of [`service::run`]). A reload re-reads the file; a file that does not validate, or a
//! bundle that does not load, leaves the running configuration untouched. What can change
//! without stopping the line changes in place (bundle, threshold, sensitivity, region of
//! interest, frame budget, fail-safe policy, pulse timing, archive, log level); what needs the
//! hardware reopened (camera, trigger, reject line, listen address) is reported as needing a
//! restart and keeps its running value.
//!
//! Everything that touches time, the service manager or the hardware can be injected through
//! [`DaemonOptions`], which is how the integration tests run the whole daemon on a
//! [`crate::clock::ManualClock`] with a recording reject output.

pub mod archive;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pairing;
pub mod pipeline;
pub mod service;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::actuate::trigger::Trigger;
use crate::actuate::{LogPin, PinRecord, PulseTiming, RecordingPin, RejectScheduler, RejectWorker};
use crate::capture::{self, CaptureError, FrameSource, ReplaySource};
use crate::clock::{Clock, MonotonicClock};
use crate::config::{
    ActuatorConfig, CameraConfig, Config, ConfigError, FailSafePolicy, ModelConfig, RejectConfig,
    TriggerConfig,
};
use ustad_core::bundle::Bundle;
use ustad_core::engine::{Engine, EngineError, EngineOptions};

use self::http::HttpServer;
use self::metrics::{Metrics, Snapshot};
use self::notify::{Notification, Notifier, SystemdNotifier, WatchdogPacer};
use self::pairing::TriggerPairer;
use self::pipeline::{
    ArchiveMsg, CaptureEnd, CaptureStage, EngineUpdate, InferenceStage, Job, Live, PartMode,
    Verdicts, effective_threshold,
};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration file is invalid (names the line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bundle could not be loaded.
    #[error("bundle {}: {source}", path.display())]
    Engine {
        /// The bundle folder.
        path: PathBuf,
        /// Why.
        source: EngineError,
    },
    /// The frame source failed for good.
    #[error(transparent)]
    Source(#[from] CaptureError),
    /// The reject output could not be opened.
    #[error("reject output: {0}")]
    Actuator(String),
    /// The part sensor could not be opened.
    #[error("trigger input: {0}")]
    Trigger(String),
    /// The observability endpoint could not start.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The archive folder is unusable.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        /// Thread name.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A pipeline thread panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new bundle does not load.
    #[error("bundle {}: {source}", path.display())]
    Engine {
        /// The bundle folder.
        path: PathBuf,
        /// Why.
        source: EngineError,
    },
    /// The daemon is shutting down.
    #[error("the daemon is stopping")]
    Stopping,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings now in force (dotted keys or sections).
    pub applied: Vec<String>,
    /// Settings that changed in the file but need a restart; their running values stay.
    pub needs_restart: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied.is_empty() {
            f.write_str("no change applied")?;
        } else {
            write!(f, "applied: {}", self.applied.join(", "))?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changed but needs a restart (running values kept): {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// What can be injected into a daemon; [`DaemonOptions::production`] is what `ustad run`
/// uses.
pub struct DaemonOptions {
    /// The time base for frames, budgets and pulses.
    pub clock: Arc<dyn Clock>,
    /// Where READY / WATCHDOG / STOPPING go.
    pub notifier: Arc<dyn Notifier>,
    /// Watchdog timeout; pings go out at half of it from the frame loop. `None`: no pings.
    pub watchdog: Option<Duration>,
    /// Stop after this many frames (usable or not).
    pub max_frames: Option<u64>,
    /// A frame source to use instead of the configured one.
    pub source: Option<Box<dyn FrameSource>>,
    /// A part sensor to use instead of the configured GPIO line (`trigger.mode = "gpio"`).
    pub trigger: Option<Box<dyn Trigger>>,
    /// Start the HTTP endpoint (`http.listen`).
    pub serve_http: bool,
    /// `/healthz` reports a stall after this long without a frame.
    pub stall_after: Duration,
    /// Engine worker threads (0 = one per core).
    pub engine_threads: usize,
    /// Frames that may wait for the inference thread.
    pub queue_capacity: usize,
}

impl fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("watchdog", &self.watchdog)
            .field("max_frames", &self.max_frames)
            .field("source", &self.source.as_ref().map(|s| s.describe()))
            .field("trigger", &self.trigger.is_some())
            .field("serve_http", &self.serve_http)
            .field("stall_after", &self.stall_after)
            .field("engine_threads", &self.engine_threads)
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

impl DaemonOptions {
    /// The real clock, systemd notifications (and its watchdog interval), the configured
    /// source, sensor and endpoint.
    pub fn production() -> Self {
        DaemonOptions {
            clock: Arc::new(MonotonicClock::new()),
            notifier: Arc::new(SystemdNotifier),
            watchdog: SystemdNotifier::watchdog_interval(),
            max_frames: None,
            source: None,
            trigger: None,
            serve_http: true,
            stall_after: Duration::from_secs(5),
            engine_threads: 0,
            // One frame being judged, two waiting: enough to ride out a slow frame, small
            // enough that a backlog never builds up behind the budget.
            queue_capacity: 2,
        }
    }
}

/// State shared by the daemon, its threads and its handles.
struct Shared {
    config_path: PathBuf,
    /// The configuration in force (restart-only parts keep their running values).
    running: Mutex<Config>,
    live: Arc<Mutex<Live>>,
    updates: Sender<EngineUpdate>,
    archive: Mutex<Option<Sender<ArchiveMsg>>>,
    worker: Mutex<Option<Arc<RejectWorker>>>,
    metrics: Arc<Metrics>,
    notifier: Arc<dyn Notifier>,
    stop: Arc<AtomicBool>,
    engine_threads: usize,
    /// Serialises reloads (two SIGHUPs in a row).
    reloading: Mutex<()>,
}

/// A running daemon. Dropping it stops the HTTP endpoint; call [`Daemon::wait`] first.
pub struct Daemon {
    shared: Arc<Shared>,
    capture: Option<JoinHandle<Result<CaptureEnd, CaptureError>>>,
    inference: Option<JoinHandle<()>>,
    archive: Option<JoinHandle<()>>,
    trigger: Option<JoinHandle<()>>,
    http: Option<HttpServer>,
    pin_record: Option<PinRecord>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.shared.config_path)
            .field("http", &self.http_addr())
            .finish()
    }
}

/// Stops or reloads a running daemon from another thread.
#[derive(Clone)]
pub struct DaemonHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for DaemonHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonHandle")
            .field("config", &self.shared.config_path)
            .finish()
    }
}

fn spawn<T: Send + 'static>(
    name: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, DaemonError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| DaemonError::Spawn { name, source })
}

/// Loads a bundle and its networks.
pub fn load_engine(model: &ModelConfig, threads: usize) -> Result<Engine, (PathBuf, EngineError)> {
    let path = model.bundle.clone();
    let bundle = Bundle::load(&path).map_err(|e| (path.clone(), EngineError::from(e)))?;
    Engine::load(
        bundle,
        EngineOptions {
            precision: model.precision,
            threads,
        },
    )
    .map_err(|e| (path, e))
}

/// Opens the configured frame source on `clock` (replay pacing follows it; V4L2 frames carry
/// kernel timestamps on the monotonic clock).
pub fn open_source(
    camera: &CameraConfig,
    clock: Arc<dyn Clock>,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    match camera {
        CameraConfig::Replay(r) => Ok(Box::new(ReplaySource::with_clock(
            &r.path, r.fps, r.looping, clock,
        )?)),
        CameraConfig::V4l2(_) => capture::open(camera),
    }
}

/// Opens the reject output and starts its scheduler thread. A mock output's record is
/// returned so tests (and replay reports) can read the pulses.
fn start_actuator(
    reject: &RejectConfig,
    policy: FailSafePolicy,
    clock: Arc<dyn Clock>,
) -> Result<(RejectWorker, Option<PinRecord>), DaemonError> {
    let timing = PulseTiming {
        delay: reject.delay,
        pulse: reject.pulse,
    };
    let act = |e: crate::actuate::ActuateError| DaemonError::Actuator(e.to_string());
    match &reject.actuator {
        ActuatorConfig::LogOnly { line } => {
            let name = line.clone().unwrap_or_else(|| "reject".into());
            let sched = RejectScheduler::new(LogPin::new(&name), clock, name, timing, policy)
                .map_err(act)?;
            Ok((RejectWorker::spawn(sched).map_err(act)?, None))
        }
        ActuatorConfig::Mock => {
            let (pin, record) = RecordingPin::new(Arc::clone(&clock));
            let sched = RejectScheduler::new(pin, clock, "mock", timing, policy).map_err(act)?;
            Ok((RejectWorker::spawn(sched).map_err(act)?, Some(record)))
        }
        #[cfg(all(feature = "gpio", target_os = "linux"))]
        ActuatorConfig::Gpio(g) => {
            let pin = crate::actuate::gpio::open_reject_output(g)
                .map_err(|e| DaemonError::Actuator(e.to_string()))?;
            let sched =
                RejectScheduler::new(pin, clock, g.line.clone(), timing, policy).map_err(act)?;
            // A real flap: its pulse must not wait behind inference for a core.
            Ok((RejectWorker::spawn_realtime(sched).map_err(act)?, None))
        }
        #[cfg(not(all(feature = "gpio", target_os = "linux")))]
        ActuatorConfig::Gpio(g) => Err(DaemonError::Actuator(format!(
            "line {}: this build has no GPIO support (Linux with cargo feature `gpio`)",
            g.line
        ))),
    }
}

fn open_trigger(trigger: &TriggerConfig) -> Result<Option<Box<dyn Trigger>>, DaemonError> {
    match trigger {
        TriggerConfig::FreeRun => Ok(None),
        #[cfg(all(feature = "gpio", target_os = "linux"))]
        TriggerConfig::Gpio(g) => crate::actuate::gpio::GpioTrigger::open(g)
            .map(|t| Some(Box::new(t) as Box<dyn Trigger>))
            .map_err(|e| DaemonError::Trigger(e.to_string())),
        #[cfg(not(all(feature = "gpio", target_os = "linux")))]
        TriggerConfig::Gpio(g) => Err(DaemonError::Trigger(format!(
            "line {}: this build has no GPIO support (Linux with cargo feature `gpio`)",
            g.line
        ))),
    }
}

/// What the pipeline reads per part, from a config and the running bundle's calibrated
/// threshold: the threshold in force is worked out here, once.
fn live_of(config: &Config, calibrated_threshold: f32) -> Live {
    Live {
        roi: config.roi,
        calibrated_threshold,
        threshold: effective_threshold(calibrated_threshold, &config.model),
        budget: config.failsafe.frame_budget,
    }
}

impl Daemon {
    /// Loads `config_path` and starts.
    pub fn start(
        config_path: impl AsRef<Path>,
        options: DaemonOptions,
    ) -> Result<Self, DaemonError> {
        let path = config_path.as_ref();
        let config = Config::load(path)?;
        Self::start_with(path, config, options)
    }

    /// Starts from an already loaded configuration (`config_path` is what reloads re-read).
    pub fn start_with(
        config_path: &Path,
        config: Config,
        mut options: DaemonOptions,
    ) -> Result<Self, DaemonError> {
        let clock = Arc::clone(&options.clock);
        let mut engine = load_engine(&config.model, options.engine_threads)
            .map_err(|(path, source)| DaemonError::Engine { path, source })?;
        let bundle_threshold = engine.bundle().manifest.decision.threshold;
        let live = live_of(&config, bundle_threshold);
        let threshold = live.threshold;
        engine.set_threshold(threshold);
        log::info!(
            "bundle {} loaded ({}): threshold {threshold:.4} (calibrated {bundle_threshold:.4}, sensitivity {})",
            config.model.bundle.display(),
            config.model.precision,
            config.model.sensitivity
        );

        let metrics = Arc::new(Metrics::new(options.stall_after));
        let source = match options.source.take() {
            Some(s) => s,
            None => open_source(&config.camera, Arc::clone(&clock))?,
        };
        metrics.set_identity(source.describe(), config.model.bundle.display().to_string());
        metrics.set_threshold(threshold);

        let trigger = match options.trigger.take() {
            Some(t) if matches!(config.trigger, TriggerConfig::Gpio(_)) => Some(t),
            _ => open_trigger(&config.trigger)?,
        };

        let (worker, pin_record) =
            start_actuator(&config.reject, config.failsafe.policy, Arc::clone(&clock))?;
        metrics.set_actuator(worker.stats_handle());
        let worker = Arc::new(worker);

        let http = if options.serve_http {
            Some(HttpServer::start(config.http.listen, Arc::clone(&metrics))?)
        } else {
            None
        };

        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(options.queue_capacity.max(1));
        let (updates_tx, updates_rx) = crossbeam_channel::unbounded::<EngineUpdate>();
        let (archive_tx, archive_rx) = crossbeam_channel::bounded::<ArchiveMsg>(64);
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(live));

        let archive_thread = {
            let cfg = config.archive.clone();
            let metrics = Arc::clone(&metrics);
            spawn("ustad-archive", move || {
                pipeline::run_archive(archive_rx, cfg, metrics)
            })?
        };

        let verdicts = Verdicts {
            clock: Arc::clone(&clock),
            metrics: Arc::clone(&metrics),
            worker: Arc::clone(&worker),
            archive: Some(archive_tx.clone()),
            wait_for_archive: true,
        };
        let inference = InferenceStage {
            engine,
            updates: updates_rx,
            jobs: jobs_rx,
            live: Arc::clone(&live),
            verdicts: verdicts.clone(),
            map_cost: None,
        };
        let inference_thread = spawn("ustad-infer", move || inference.run())?;

        let (mode, trigger_thread) = match trigger {
            None => (PartMode::FreeRun { last: None }, None),
            Some(t) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let stop = Arc::clone(&stop);
                let thread = spawn("ustad-trigger", move || pipeline::run_trigger(t, tx, stop))?;
                (
                    PartMode::Triggered {
                        pairer: TriggerPairer::new(config.failsafe.frame_budget),
                        events: rx,
                    },
                    Some(thread),
                )
            }
        };

        let capture = CaptureStage {
            source,
            jobs: jobs_tx,
            notifier: Arc::clone(&options.notifier),
            watchdog: WatchdogPacer::new(options.watchdog),
            stop: Arc::clone(&stop),
            max_frames: options.max_frames,
            mode,
            live: Arc::clone(&live),
            verdicts: Verdicts {
                wait_for_archive: false,
                ..verdicts
            },
        };
        // READY before the frame loop starts: its watchdog pings must come after it, and a
        // loaded machine may schedule the loop's first ping before this thread runs again.
        options.notifier.notify(&Notification::Ready);
        options
            .notifier
            .notify(&Notification::Status("judging parts".into()));
        let capture_thread = spawn("ustad-capture", move || capture.run())?;

        let shared = Arc::new(Shared {
            config_path: config_path.to_path_buf(),
            running: Mutex::new(config),
            live,
            updates: updates_tx,
            archive: Mutex::new(Some(archive_tx)),
            worker: Mutex::new(Some(worker)),
            metrics,
            notifier: Arc::clone(&options.notifier),
            stop,
            engine_threads: options.engine_threads,
            reloading: Mutex::new(()),
        });
        Ok(Daemon {
            shared,
            capture: Some(capture_thread),
            inference: Some(inference_thread),
            archive: Some(archive_thread),
            trigger: trigger_thread,
            http,
            pin_record,
        })
    }

    /// A handle to stop or reload this daemon from another thread.
    pub fn handle(&self) -> DaemonHandle {
        DaemonHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Where the HTTP endpoint listens, if it runs.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// The pulses of a `mock` reject output.
    pub fn pin_record(&self) -> Option<PinRecord> {
        self.pin_record.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs until the source ends, `max_frames` is reached or a stop is requested; then judges
    /// what is queued, fires every pending reject pulse, leaves the output safe and returns
    /// the final counters. The HTTP endpoint keeps serving until the daemon is dropped.
    pub fn wait(&mut self) -> Result<Snapshot, DaemonError> {
        let shared = Arc::clone(&self.shared);
        let capture = match self.capture.take() {
            Some(t) => t.join().map_err(|_| DaemonError::Panicked("capture")),
            None => return Ok(shared.metrics.snapshot()),
        };
        let stop_was_requested = shared.stop.swap(true, Ordering::SeqCst);
        if !stop_was_requested {
            shared.notifier.notify(&Notification::Stopping);
        }
        // The capture thread has dropped its queue sender: the inference thread judges what is
        // left and ends.
        let inference = self
            .inference
            .take()
            .map(|t| t.join().map_err(|_| DaemonError::Panicked("inference")));
        if let Some(t) = self.trigger.take() {
            let _ = t.join();
        }
        let worker = shared
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(worker) = worker {
            match Arc::try_unwrap(worker) {
                Ok(worker) => {
                    if let Err(e) = worker.shutdown() {
                        log::error!("reject output shutdown: {e}");
                    }
                }
                // Only if the inference thread panicked holding it; dropping the last
                // reference still drains and leaves the line safe.
                Err(worker) => drop(worker),
            }
        }
        shared
            .archive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = self.archive.take() {
            let _ = t.join();
        }
        shared.metrics.set_stopping();
        let snapshot = shared.metrics.snapshot();
        if let Some(Err(e)) = inference {
            return Err(e);
        }
        match capture? {
            Ok(end) => {
                log::info!("stopped: {end:?}");
                Ok(snapshot)
            }
            Err(e) => Err(DaemonError::Source(e)),
        }
    }
}

impl DaemonHandle {
    /// Asks the daemon to stop: capture ends after the current frame, then [`Daemon::wait`]
    /// drains.
    pub fn stop(&self) {
        if !self.shared.stop.swap(true, Ordering::SeqCst) {
            log::info!("stop requested: finishing the parts in flight");
            self.shared.notifier.notify(&Notification::Stopping);
        }
    }

    /// Whether a stop was requested (or the daemon is draining).
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Re-reads the configuration file and applies it (see the module documentation). On
    /// error nothing changes, the error (with its line) is logged and returned.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _guard = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.notifier.notify(&Notification::Reloading);
        let result = self.reload_inner();
        match &result {
            Ok(report) => {
                log::info!("reloaded {}: {report}", self.shared.config_path.display());
                self.shared.metrics.reload(true);
            }
            Err(e) => {
                log::error!("reload refused, the running configuration stays: {e}");
                self.shared.metrics.reload(false);
            }
        }
        self.shared.notifier.notify(&Notification::Ready);
        result
    }

    fn reload_inner(&self) -> Result<ReloadReport, ReloadError> {
        if self.is_stopping() {
            return Err(ReloadError::Stopping);
        }
        let mut new = Config::load(&self.shared.config_path)?;
        let old = self
            .shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut report = ReloadReport::default();

        // The only step that can still fail: do it before changing anything.
        let engine =
            if new.model.bundle != old.model.bundle || new.model.precision != old.model.precision {
                Some(
                    load_engine(&new.model, self.shared.engine_threads)
                        .map_err(|(path, source)| ReloadError::Engine { path, source })?,
                )
            } else {
                None
            };

        // Hardware stays as opened; keep the running values so the next reload compares
        // against what is really in force.
        if new.camera != old.camera {
            report.needs_restart.push("camera".into());
            new.camera = old.camera.clone();
        }
        if new.trigger != old.trigger {
            report.needs_restart.push("trigger".into());
            new.trigger = old.trigger.clone();
        }
        if new.reject.actuator != old.reject.actuator {
            report.needs_restart.push("reject.actuator/line".into());
            new.reject.actuator = old.reject.actuator.clone();
        }
        if new.http != old.http {
            report.needs_restart.push("http.listen".into());
            new.http = old.http;
        }

        let old_live = self
            .shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let calibrated = engine.as_ref().map_or(old_live.calibrated_threshold, |e| {
            e.bundle().manifest.decision.threshold
        });
        let live = live_of(&new, calibrated);
        // The inference thread picks the update up before its next part.
        if let Some(mut engine) = engine {
            engine.set_threshold(live.threshold);
            self.shared
                .metrics
                .set_identity(self.source_name(), new.model.bundle.display().to_string());
            let _ = self
                .shared
                .updates
                .send(EngineUpdate::Engine(Box::new(engine)));
            report.applied.push("model.bundle".into());
            if new.model.precision != old.model.precision {
                report.applied.push("model.precision".into());
            }
        } else if live.threshold != old_live.threshold {
            let _ = self
                .shared
                .updates
                .send(EngineUpdate::Threshold(live.threshold));
        }
        self.shared.metrics.set_threshold(live.threshold);
        if new.model.threshold != old.model.threshold {
            report.applied.push("model.threshold".into());
        }
        if new.model.sensitivity != old.model.sensitivity {
            report.applied.push("model.sensitivity".into());
        }
        if new.roi != old.roi {
            report.applied.push("roi".into());
        }
        if new.failsafe != old.failsafe {
            report.applied.push("failsafe".into());
        }
        *self
            .shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = live;

        if new.reject.delay != old.reject.delay
            || new.reject.pulse != old.reject.pulse
            || new.failsafe.policy != old.failsafe.policy
        {
            let worker = self
                .shared
                .worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            match worker {
                Some(w) => {
                    if let Err(e) = w.reconfigure(
                        PulseTiming {
                            delay: new.reject.delay,
                            pulse: new.reject.pulse,
                        },
                        new.failsafe.policy,
                    ) {
                        log::error!("reject timing not changed: {e}");
                    } else {
                        report.applied.push("reject timing".into());
                    }
                }
                None => return Err(ReloadError::Stopping),
            }
        }
        if new.archive != old.archive {
            if let Some(tx) = self
                .shared
                .archive
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
            {
                let _ = tx.send(ArchiveMsg::Reconfigure(new.archive.clone()));
            }
            report.applied.push("archive".into());
        }
        if new.log != old.log {
            service::apply_log_level(new.log.level);
            report.applied.push("log.level".into());
        }
        *self
            .shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = new;
        Ok(report)
    }

    fn source_name(&self) -> String {
        self.shared.metrics.snapshot().source
    }
}
