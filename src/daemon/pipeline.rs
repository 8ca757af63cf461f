//! The frame pipeline: capture thread → bounded queue → inference thread → reject actuator,
//! with the archive on a thread of its own.
//!
//! ```text
//! source ──► capture ──(jobs, bounded)──► inference ──► RejectWorker (pulse at t + delay)
//!   trigger ─┘   (pairs parts with frames,      │  (ROI crop, engine, budget, fail-safe)
//!                 gaps / corrupt → fail-safe)    └──► archive thread, metrics, live page
//! ```
//!
//! Rules that the line depends on:
//!
//! - **Exactly one verdict per part.** Every job the capture thread sends becomes exactly one
//!   submission to the actuator in [`InferenceStage::finish`]; the only other verdict is the
//!   scheduler's own fail-safe at an armed part's deadline, and then the late submission is
//!   refused ([`Scheduled::Expired`]) and recorded as that fail-safe.
//! - **Nothing unjudged passes silently.** A frame that is corrupt, dropped by the camera, waits
//!   too long, does not contain the region of interest, or makes the engine fail becomes a
//!   fail-safe part (reject by default), counted by reason and logged with its origin.
//! - **The frame budget is enforced on both sides of inference:** a frame that has already used
//!   its budget in the queue is not run at all (so a backlog clears quickly instead of making
//!   every later part late too), and a verdict that comes back over budget is not trusted.
//! - **A part's deadline does not depend on the queue.** The capture thread arms every part
//!   with the reject scheduler (deadline = capture + budget) before queueing it; a part still
//!   waiting for the engine at its deadline gets the fail-safe from the scheduler, in time for
//!   its pulse, and the verdict that comes later is recorded as over budget.
//! - **Time comes from the frame**, not from when a thread got to it: pulses are scheduled at
//!   capture (or trigger) time + delay.
//!
//! - **Capture never waits for inference on a real-time source.** The queue is small; a part
//!   that finds it full is failed safe at once by the capture thread ([`FailReason::Overrun`]),
//!   so a reload to a bundle that cannot keep up shows in the log, the metrics and `/healthz`
//!   at once, and parts passing the camera keep getting armed and pulsed while the engine is
//!   busy. Only a source that yields frames when asked (an unpaced replay folder) is throttled
//!   by the queue instead: nothing is late for waiting there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use image::{DynamicImage, RgbImage};

use crate::actuate::trigger::TriggerEvent;
use crate::actuate::{RejectWorker, Scheduled};
use crate::capture::{Backoff, CaptureError, Frame, FrameSource};
use crate::clock::{Clock, Timestamp};
use crate::config::{ArchiveConfig, ModelConfig, Roi};
use ustad_core::engine::{Engine, EngineError, Judgement};
use ustad_core::judge::decide::{self, Verdict};

use super::archive::{Archive, OverlaySource, PartRecord, Timings};
use super::metrics::{FailReason, LastPart, LatestFrame, Metrics, PartEvent};
use super::notify::{Notifier, WatchdogPacer};
use super::pairing::{Pairing, TriggerPairer};

/// Sequence gaps larger than this are taken as a restarted stream, not as dropped frames.
const MAX_GAP: u64 = 1000;

/// The settings a reload may change while frames flow; read once per part.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// Region of interest in camera pixels.
    pub roi: Option<Roi>,
    /// The running bundle's calibrated threshold, kept so that a reload that changes only the
    /// override or the sensitivity can work out the new threshold from it.
    pub calibrated_threshold: f32,
    /// The threshold in force ([`effective_threshold`]), worked out once per start or reload
    /// and handed to the engine then; every part is judged and recorded with it.
    pub threshold: f32,
    /// Capture → verdict budget.
    pub budget: Duration,
}

/// What a start or a reload hands the inference thread, applied before its next part. The
/// engine decides with the threshold it is given here and is never adjusted per frame.
#[derive(Debug)]
pub enum EngineUpdate {
    /// A new bundle or precision, its threshold already set.
    Engine(Box<Engine>),
    /// The same bundle with another threshold in force (override or sensitivity changed).
    Threshold(f32),
}

/// The threshold in force: the bundle's calibrated one (or the configured override), divided
/// by the sensitivity, as `config/ustad.toml` documents (1.2 rejects more, 0.8 fewer).
pub fn effective_threshold(bundle_threshold: f32, model: &ModelConfig) -> f32 {
    let base = model.threshold.unwrap_or(bundle_threshold);
    let sensitivity = if model.sensitivity.is_finite() && model.sensitivity > 0.0 {
        model.sensitivity
    } else {
        1.0
    };
    base / sensitivity
}

/// Work for the inference thread: a part with its frame, or a part that already failed.
#[derive(Debug)]
pub(crate) enum Job {
    /// Judge this frame.
    Frame {
        part: u64,
        /// Capture or trigger time: the pulse is timed from it.
        captured: Timestamp,
        frame: Frame,
    },
    /// The part cannot be judged; the scheduler applies the fail-safe policy.
    Failed(FailedPart),
}

impl Job {
    /// The part as one that cannot be judged: a failed job as it is, a frame for `reason`.
    fn into_failed(self, reason: FailReason, detail: String) -> FailedPart {
        match self {
            Job::Frame {
                part,
                captured,
                frame,
            } => FailedPart {
                part,
                sequence: Some(frame.sequence),
                captured,
                origin: frame.origin,
                reason,
                detail,
            },
            Job::Failed(failed) => failed,
        }
    }
}

/// A part that gets the fail-safe, and why.
#[derive(Debug)]
pub(crate) struct FailedPart {
    pub part: u64,
    pub sequence: Option<u64>,
    pub captured: Timestamp,
    pub origin: String,
    pub reason: FailReason,
    pub detail: String,
}

impl FailedPart {
    fn outcome(self, decided: Timestamp, threshold: f32) -> Outcome {
        Outcome {
            part: self.part,
            sequence: self.sequence,
            origin: self.origin,
            captured: self.captured,
            decided,
            score: None,
            result: Err((self.reason, self.detail)),
            view: None,
            inference: None,
            threshold,
        }
    }
}

/// Messages for the archive thread.
#[derive(Debug)]
pub(crate) enum ArchiveMsg {
    Record(Box<PartRecord>, Option<OverlaySource>),
    Reconfigure(Option<ArchiveConfig>),
}

/// How the capture loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureEnd {
    /// The source has no more frames (a replay folder played to its end).
    EndOfStream,
    /// A stop was requested (SIGTERM, SIGINT).
    Stopped,
    /// `--max-frames` reached.
    MaxFrames,
    /// The inference thread went away.
    PipelineDown,
}

/// How frames become parts.
pub(crate) enum PartMode {
    /// Every frame is a part; the part number is the frame's sequence number.
    FreeRun { last: Option<(u64, Timestamp)> },
    /// A part sensor says when; the part number is the trigger count.
    Triggered {
        pairer: TriggerPairer,
        events: Receiver<TriggerEvent>,
    },
}

/// The capture thread's state.
pub(crate) struct CaptureStage {
    pub source: Box<dyn FrameSource>,
    pub jobs: Sender<Job>,
    pub notifier: Arc<dyn Notifier>,
    pub watchdog: WatchdogPacer,
    pub stop: Arc<AtomicBool>,
    pub max_frames: Option<u64>,
    pub mode: PartMode,
    pub live: Arc<Mutex<Live>>,
    /// Arms each part before it is queued (see the module doc), and records the parts that
    /// capture fails safe itself; its clock and metrics are the stage's.
    pub verdicts: Verdicts,
}

impl CaptureStage {
    /// Runs until the stream ends, a stop is requested, or a source error that no retry can
    /// fix (returned).
    pub fn run(mut self) -> Result<CaptureEnd, CaptureError> {
        let mut frames: u64 = 0;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        let mut errors_in_a_row: u64 = 0;
        let end = loop {
            if self.stop.load(Ordering::SeqCst) {
                break CaptureEnd::Stopped;
            }
            if self.max_frames.is_some_and(|max| frames >= max) {
                break CaptureEnd::MaxFrames;
            }
            let result = self.source.next_frame();
            // The frame loop is alive as long as the source returns, frame or not: it serves
            // the line whatever inference does (parts it cannot queue get the fail-safe).
            self.watchdog
                .tick(self.verdicts.clock.now(), self.notifier.as_ref());
            let mut jobs = Vec::new();
            match result {
                Ok(None) => break CaptureEnd::EndOfStream,
                Ok(Some(frame)) => {
                    frames += 1;
                    errors_in_a_row = 0;
                    backoff.reset();
                    self.verdicts.metrics.frame_arrived();
                    self.take_triggers(&mut jobs);
                    self.on_frame(frame, &mut jobs);
                }
                Err(e) => {
                    if let Some((sequence, timestamp, origin)) = e.failed_frame() {
                        frames += 1;
                        errors_in_a_row = 0;
                        self.verdicts.metrics.frame_arrived();
                        self.take_triggers(&mut jobs);
                        self.on_failed_frame(sequence, timestamp, origin, &e, &mut jobs);
                    } else if e.is_transient() {
                        errors_in_a_row += 1;
                        self.verdicts.metrics.source_error();
                        if errors_in_a_row == 1 || errors_in_a_row.is_power_of_two() {
                            log::warn!(
                                "{}: {e} ({errors_in_a_row} in a row); retrying",
                                self.source.describe()
                            );
                        }
                        // Sources that back off themselves (V4L2) barely notice this; one
                        // that fails instantly must not spin the CPU.
                        let wait = backoff.next_delay();
                        self.verdicts
                            .clock
                            .sleep_until(self.verdicts.clock.now() + wait);
                        self.take_triggers(&mut jobs);
                    } else {
                        log::error!("{}: {e}", self.source.describe());
                        self.flush_pending_triggers(&mut jobs);
                        let _ = self.send_all(jobs);
                        return Err(e);
                    }
                }
            }
            self.expire_triggers(&mut jobs);
            if !self.send_all(jobs) {
                break CaptureEnd::PipelineDown;
            }
        };
        let mut jobs = Vec::new();
        self.take_triggers(&mut jobs);
        self.flush_pending_triggers(&mut jobs);
        self.send_all(jobs);
        log::info!(
            "capture stopped ({end:?}) after {frames} frames from {}",
            self.source.describe()
        );
        Ok(end)
    }

    fn send_all(&self, jobs: Vec<Job>) -> bool {
        let budget = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .budget;
        for job in jobs {
            let (part, captured, deadline) = match &job {
                Job::Frame { part, captured, .. } => (*part, *captured, *captured + budget),
                // Already known to be unjudgeable: due now, whatever the queue holds.
                Job::Failed(f) => (f.part, f.captured, self.verdicts.clock.now()),
            };
            if let Err(e) = self.verdicts.worker.arm(part, captured, deadline) {
                log::error!("part {part}: cannot arm the reject actuator: {e}");
            }
            if !self.queue(job) {
                log::error!("inference thread has stopped; capture stops too");
                return false;
            }
            self.verdicts.metrics.set_queue_depth(self.jobs.len());
        }
        true
    }

    /// Hands a job to the inference thread; false when that thread is gone. A real-time
    /// source's part that finds the queue full is failed safe here and now.
    fn queue(&self, job: Job) -> bool {
        if !self.source.real_time() {
            return self.jobs.send(job).is_ok();
        }
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(job)) => {
                let detail = format!(
                    "the engine is still judging earlier parts and the queue ({} parts) is \
                     full: it cannot keep up with the line",
                    self.jobs.capacity().unwrap_or(0)
                );
                let live = self
                    .live
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let failed = job.into_failed(FailReason::Overrun, detail);
                let outcome = failed.outcome(self.verdicts.clock.now(), live.threshold);
                self.verdicts.finish(outcome, &live);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    fn on_frame(&mut self, frame: Frame, jobs: &mut Vec<Job>) {
        match &mut self.mode {
            PartMode::FreeRun { last } => {
                dropped_frames(last, frame.sequence, frame.timestamp, &frame.origin, jobs);
                jobs.push(Job::Frame {
                    part: frame.sequence,
                    captured: frame.timestamp,
                    frame,
                });
            }
            PartMode::Triggered { pairer, .. } => {
                for p in pairer.on_frame(frame) {
                    jobs.push(pairing_job(p));
                }
            }
        }
    }

    fn on_failed_frame(
        &mut self,
        sequence: u64,
        timestamp: Timestamp,
        origin: String,
        error: &CaptureError,
        jobs: &mut Vec<Job>,
    ) {
        match &mut self.mode {
            PartMode::FreeRun { last } => {
                dropped_frames(last, sequence, timestamp, &origin, jobs);
                jobs.push(Job::Failed(FailedPart {
                    part: sequence,
                    sequence: Some(sequence),
                    captured: timestamp,
                    origin,
                    reason: FailReason::Corrupt,
                    detail: error.to_string(),
                }));
            }
            PartMode::Triggered { pairer, .. } => {
                for p in pairer.on_failed_frame(timestamp, &origin) {
                    jobs.push(pairing_job(p));
                }
                log::warn!("unusable frame (no part waiting for it): {error}");
            }
        }
    }

    fn take_triggers(&mut self, jobs: &mut Vec<Job>) {
        if let PartMode::Triggered { pairer, events } = &mut self.mode {
            while let Ok(ev) = events.try_recv() {
                if let Some(p) = pairer.on_trigger(ev) {
                    jobs.push(pairing_job(p));
                }
            }
        }
    }

    fn expire_triggers(&mut self, jobs: &mut Vec<Job>) {
        let budget = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .budget;
        let now = self.verdicts.clock.now();
        if let PartMode::Triggered { pairer, .. } = &mut self.mode {
            pairer.set_max_wait(budget);
            for p in pairer.expire(now) {
                jobs.push(pairing_job(p));
            }
        }
    }

    fn flush_pending_triggers(&mut self, jobs: &mut Vec<Job>) {
        if let PartMode::Triggered { pairer, .. } = &mut self.mode {
            for p in pairer.drain() {
                jobs.push(pairing_job(p));
            }
        }
    }
}

/// Free-run parts the camera dropped (sequence gap) get the fail-safe, at capture times
/// interpolated between their neighbours: frames come at a steady rate.
fn dropped_frames(
    last: &mut Option<(u64, Timestamp)>,
    sequence: u64,
    timestamp: Timestamp,
    origin: &str,
    jobs: &mut Vec<Job>,
) {
    if let Some((prev_seq, prev_ts)) = *last
        && sequence > prev_seq + 1
    {
        let gap = sequence - prev_seq;
        if gap <= MAX_GAP {
            let step = (timestamp - prev_ts) / gap as u32;
            for k in 1..gap {
                jobs.push(Job::Failed(FailedPart {
                    part: prev_seq + k,
                    sequence: Some(prev_seq + k),
                    captured: prev_ts + step * k as u32,
                    origin: origin.to_string(),
                    reason: FailReason::Dropped,
                    detail: format!(
                        "frame {} never arrived (dropped by the source)",
                        prev_seq + k
                    ),
                }));
            }
        } else {
            log::warn!("{origin}: frame sequence jumped by {gap}; treating it as a restart");
        }
    }
    *last = Some((sequence, timestamp));
}

fn pairing_job(p: Pairing) -> Job {
    match p {
        Pairing::Frame(ev, frame) => Job::Frame {
            part: ev.count,
            captured: ev.timestamp,
            frame,
        },
        Pairing::CorruptFrame(ev, origin) => Job::Failed(FailedPart {
            part: ev.count,
            sequence: None,
            captured: ev.timestamp,
            detail: format!("the frame after trigger {} was unusable", ev.count),
            origin,
            reason: FailReason::Corrupt,
        }),
        Pairing::NoFrame(ev) => Job::Failed(FailedPart {
            part: ev.count,
            sequence: None,
            captured: ev.timestamp,
            origin: "trigger".into(),
            reason: FailReason::NoFrame,
            detail: format!("no frame arrived for trigger {}", ev.count),
        }),
    }
}

/// The judged region at input size, its anomaly map and the map's width and height.
type View = (Arc<RgbImage>, Arc<Vec<f32>>, usize, usize);

/// An anomaly map and its width and height, as a [`View`] holds them.
type MapView = (Arc<Vec<f32>>, usize, usize);

/// What the inference thread concluded about one part.
struct Outcome {
    part: u64,
    sequence: Option<u64>,
    origin: String,
    captured: Timestamp,
    decided: Timestamp,
    score: Option<f32>,
    /// `Ok(verdict)` when judged in time; `Err` when the fail-safe applies.
    result: Result<decide::Verdict, (FailReason, String)>,
    view: Option<View>,
    inference: Option<Duration>,
    threshold: f32,
}

/// The inference thread's state.
pub(crate) struct InferenceStage {
    pub engine: Engine,
    pub updates: Receiver<EngineUpdate>,
    pub jobs: Receiver<Job>,
    pub live: Arc<Mutex<Live>>,
    pub verdicts: Verdicts,
    /// How long this engine's last deferred map took; `None` until one was drawn.
    pub map_cost: Option<Duration>,
}

impl InferenceStage {
    /// Judges parts until the capture side hangs up and the queue is empty.
    pub fn run(mut self) {
        while let Ok(job) = self.jobs.recv() {
            self.verdicts.metrics.set_queue_depth(self.jobs.len());
            self.apply_updates();
            let live = self
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            // The threshold the engine decides with, recorded with the part.
            let threshold = self.engine.threshold();
            let outcome = match job {
                Job::Frame {
                    part,
                    captured,
                    frame,
                } => self.judge(part, captured, frame, &live, threshold),
                Job::Failed(failed) => failed.outcome(self.verdicts.clock.now(), threshold),
            };
            let (mut outcome, dispatched) = self.verdicts.dispatch(outcome, &live);
            self.draw_deferred_map(&mut outcome, live.budget);
            self.verdicts.record(outcome, dispatched);
        }
    }

    /// Takes what reloads sent since the last part: a new engine, or a new threshold.
    fn apply_updates(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            match update {
                EngineUpdate::Engine(engine) => {
                    log::info!("now judging with bundle {}", engine.bundle().dir.display());
                    self.engine = *engine;
                    self.map_cost = None;
                }
                EngineUpdate::Threshold(threshold) => self.engine.set_threshold(threshold),
            }
        }
    }

    /// The judged frame's anomaly map when judging drew it (every scale that maps also
    /// judges); empty when it waits for its own networks ([`Self::draw_deferred_map`]).
    fn ready_map(&mut self) -> Result<MapView, EngineError> {
        if self.engine.map_pending() {
            return Ok((Arc::new(Vec::new()), 0, 0));
        }
        self.map_view()
    }

    /// The judged frame's anomaly map, copied out of the engine's buffer for the live page and
    /// the archive (drawn first if it waited for its own networks).
    fn map_view(&mut self) -> Result<MapView, EngineError> {
        let analysis = self.engine.map()?;
        Ok((
            Arc::new(analysis.map.to_vec()),
            analysis.width,
            analysis.height,
        ))
    }

    /// Draws the map that judging left for later (a bundle with map-only scales), after the
    /// actuator has the verdict, for rejected parts only, whose map says why. A part that
    /// arrives meanwhile waits for the map, so it is drawn only while no part waits and only
    /// when the last map's time plus this part's judging fit the frame budget; the first map of
    /// an engine is drawn to learn its time. Skipped and failed maps are counted.
    fn draw_deferred_map(&mut self, outcome: &mut Outcome, budget: Duration) {
        if !self.engine.map_pending() || !matches!(outcome.result, Ok(Verdict::Reject)) {
            return;
        }
        let judging = outcome.inference.unwrap_or_default();
        let waiting = self.jobs.len();
        let too_slow = self.map_cost.is_some_and(|cost| cost + judging > budget);
        if waiting > 0 || too_slow {
            log::debug!(
                "part {}: anomaly map not drawn ({})",
                outcome.part,
                if waiting > 0 {
                    format!("{waiting} part(s) waiting")
                } else {
                    format!(
                        "a map takes {} ms, the frame budget is {} ms",
                        self.map_cost.unwrap_or_default().as_millis(),
                        budget.as_millis()
                    )
                }
            );
            self.verdicts.metrics.map_skipped();
            return;
        }
        let started = Instant::now();
        let drawn = self.map_view();
        self.map_cost = Some(started.elapsed());
        match (drawn, &mut outcome.view) {
            (Ok((map, width, height)), Some(view)) => {
                (view.1, view.2, view.3) = (map, width, height);
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                log::warn!("part {}: anomaly map failed: {e}", outcome.part);
                self.verdicts.metrics.map_failed();
            }
        }
    }

    fn judge(
        &mut self,
        part: u64,
        captured: Timestamp,
        frame: Frame,
        live: &Live,
        threshold: f32,
    ) -> Outcome {
        let mut out = Outcome {
            part,
            sequence: Some(frame.sequence),
            origin: frame.origin,
            captured,
            decided: captured,
            score: None,
            result: Err((FailReason::OverBudget, String::new())),
            view: None,
            inference: None,
            threshold,
        };
        let waited = self.verdicts.clock.now() - captured;
        if waited > live.budget {
            out.decided = self.verdicts.clock.now();
            out.result = Err((
                FailReason::OverBudget,
                format!(
                    "waited {} ms for the engine, budget {} ms",
                    waited.as_millis(),
                    live.budget.as_millis()
                ),
            ));
            return out;
        }
        let region = match crop(frame.image, live.roi) {
            Ok(r) => r,
            Err(detail) => {
                out.decided = self.verdicts.clock.now();
                out.result = Err((FailReason::BadFrame, detail));
                return out;
            }
        };
        let started = Instant::now();
        let analysis = self
            .engine
            .judge(&DynamicImage::ImageRgb8(region))
            .and_then(|judged| Ok((judged, self.ready_map()?)));
        out.inference = Some(started.elapsed());
        out.decided = self.verdicts.clock.now();
        // The frame as the engine judged it (resized once, there).
        let rgb = Arc::clone(self.engine.judged_image());
        match analysis {
            Err(e) => {
                out.view = Some((rgb, Arc::new(Vec::new()), 0, 0));
                out.result = Err((FailReason::EngineError, e.to_string()));
            }
            Ok((Judgement { score, verdict }, (map, w, h))) => {
                out.score = Some(score);
                out.view = Some((rgb, map, w, h));
                let took = out.decided - captured;
                out.result = if took > live.budget {
                    Err((
                        FailReason::OverBudget,
                        format!(
                            "verdict {verdict} (score {score:.3}) came {} ms after capture, budget {} ms",
                            took.as_millis(),
                            live.budget.as_millis()
                        ),
                    ))
                } else {
                    Ok(verdict)
                };
            }
        }
        out
    }
}

/// What the actuator was told about a part, and when.
#[derive(Debug, Clone, Copy)]
struct Dispatched {
    verdict: Verdict,
    commanded: Timestamp,
}

/// Where every part's verdict goes: the actuator, the metrics, the archive and the log. The
/// inference thread records the parts it judged (through [`Verdicts::dispatch`], then
/// [`Verdicts::record`] once their deferred map is drawn), the capture thread the parts it
/// failed safe because the queue was full (through [`Verdicts::finish`], the two at once).
#[derive(Clone)]
pub(crate) struct Verdicts {
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub worker: Arc<RejectWorker>,
    pub archive: Option<Sender<ArchiveMsg>>,
    /// Wait for room in the archive's queue (inference) or count the record as lost
    /// (capture, which must never wait).
    pub wait_for_archive: bool,
}

impl Verdicts {
    /// The one place a part gets its verdict: actuator, metrics, archive, log.
    fn finish(&self, o: Outcome, live: &Live) {
        let (o, dispatched) = self.dispatch(o, live);
        self.record(o, dispatched);
    }

    /// Gives the actuator the part's verdict (or the fail-safe) and logs it; the outcome comes
    /// back amended when the scheduler had already failed the part safe.
    fn dispatch(&self, mut o: Outcome, live: &Live) -> (Outcome, Dispatched) {
        let mut commanded = self.clock.now();
        let submitted = match &o.result {
            Ok(judged) => self
                .worker
                .submit(o.part, o.captured, *judged)
                .map(|scheduled| (*judged, scheduled)),
            // The scheduler holds the fail-safe policy: it gives the verdict.
            Err(_) => self.worker.submit_unjudged(o.part, o.captured),
        };
        let mut verdict = match (&submitted, &o.result) {
            (Ok((verdict, _)), _) | (Err(_), Ok(verdict)) => *verdict,
            // The scheduler could not answer (stopped, or its pin failed): the policy it holds.
            (Err(_), Err(_)) => self.worker.policy().verdict(),
        };
        match submitted.map(|(_, scheduled)| scheduled) {
            Err(e) => log::error!("part {} ({}): actuator unavailable: {e}", o.part, o.origin),
            Ok(Scheduled::Expired {
                decided,
                verdict: applied,
            }) => {
                // The scheduler applied the fail-safe at the deadline; that is what happened
                // to the part, whatever the engine said later.
                commanded = decided;
                if let Ok(judged) = &o.result {
                    let late = o.decided.saturating_duration_since(o.captured);
                    o.result = Err((
                        FailReason::OverBudget,
                        format!(
                            "verdict {judged} came {} ms after capture, after the part's \
                             deadline ({} ms); the fail-safe had been applied",
                            late.as_millis(),
                            live.budget.as_millis()
                        ),
                    ));
                }
                verdict = applied;
            }
            Ok(_) => {}
        }
        match &o.result {
            Err((reason, detail)) => log::warn!(
                "part {} ({}): not judged ({reason}: {detail}); fail-safe: {}",
                o.part,
                o.origin,
                if verdict.rejects() { "reject" } else { "pass" }
            ),
            Ok(_) if verdict.rejects() => log::info!(
                "part {} ({}): reject, score {:.3} >= {:.3}",
                o.part,
                o.origin,
                o.score.unwrap_or(f32::NAN),
                o.threshold
            ),
            Ok(_) => log::debug!(
                "part {} ({}): pass, score {:.3}",
                o.part,
                o.origin,
                o.score.unwrap_or(f32::NAN)
            ),
        }
        (o, Dispatched { verdict, commanded })
    }

    /// Counts the part in the metrics and the live page and sends its record to the archive.
    fn record(&self, o: Outcome, Dispatched { verdict, commanded }: Dispatched) {
        let reason = o.result.as_ref().err().map(|(reason, _)| *reason);
        let to_verdict = o.decided - o.captured;
        let to_actuator = commanded - o.captured;
        let latest = o.view.as_ref().map(|(image, map, w, h)| LatestFrame {
            image: Arc::clone(image),
            map: Arc::clone(map),
            map_width: *w,
            map_height: *h,
            threshold: o.threshold,
        });
        self.metrics.part_decided(
            &PartEvent {
                verdict,
                reason,
                to_verdict,
                to_actuator,
                inference: o.inference,
            },
            LastPart {
                part: o.part,
                origin: o.origin.clone(),
                verdict,
                score: o.score,
            },
            latest.clone(),
        );
        if let Some(archive) = &self.archive {
            let record = PartRecord {
                part: o.part,
                sequence: o.sequence,
                origin: o.origin,
                captured_s: o.captured.as_duration().as_secs_f64(),
                decided_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                verdict,
                score: o.score.filter(|s| s.is_finite()),
                threshold: o.threshold,
                reason: reason.map(|r| r.as_str().to_string()),
                detail: o.result.err().map(|(_, d)| d),
                timings: Timings {
                    verdict_ms: to_verdict.as_secs_f64() * 1e3,
                    actuator_ms: to_actuator.as_secs_f64() * 1e3,
                    inference_ms: o.inference.map(|d| d.as_secs_f64() * 1e3),
                },
                image: None,
            };
            let overlay = latest.filter(|_| verdict.rejects()).map(|l| OverlaySource {
                image: l.image,
                map: l.map,
                map_width: l.map_width,
                map_height: l.map_height,
                threshold: l.threshold,
            });
            let msg = ArchiveMsg::Record(Box::new(record), overlay);
            let sent = if self.wait_for_archive {
                archive.send(msg).is_ok()
            } else {
                archive.try_send(msg).is_ok()
            };
            if !sent {
                self.metrics.archive_error();
            }
        }
    }
}

/// Cuts the region of interest out of a frame.
fn crop(image: RgbImage, roi: Option<Roi>) -> Result<RgbImage, String> {
    let Some(r) = roi else {
        return Ok(image);
    };
    let (w, h) = image.dimensions();
    let fits = |start: u32, len: u32, max: u32| start.checked_add(len).is_some_and(|e| e <= max);
    if r.width == 0 || r.height == 0 || !fits(r.x, r.width, w) || !fits(r.y, r.height, h) {
        return Err(format!(
            "the {w}x{h} frame does not contain the region of interest {}x{} at ({}, {})",
            r.width, r.height, r.x, r.y
        ));
    }
    Ok(image::imageops::crop_imm(&image, r.x, r.y, r.width, r.height).to_image())
}

/// The archive thread: writes records until every sender is gone.
pub(crate) fn run_archive(
    rx: Receiver<ArchiveMsg>,
    config: Option<ArchiveConfig>,
    metrics: Arc<Metrics>,
) {
    let open = |cfg: Option<ArchiveConfig>| {
        cfg.and_then(|c| match Archive::open(&c) {
            Ok(a) => Some(a),
            Err(e) => {
                log::error!("archive disabled: {e}");
                metrics.archive_error();
                None
            }
        })
    };
    let mut configured = config.is_some();
    let mut archive = open(config);
    for msg in rx {
        match msg {
            ArchiveMsg::Record(record, overlay) => match archive.as_mut() {
                Some(a) => {
                    let part = record.part;
                    if let Err(e) = a.record(*record, overlay.as_ref()) {
                        log::error!("part {part} not archived: {e}");
                        metrics.archive_error();
                    }
                }
                // Configured but unusable: every record it should have kept is lost, and
                // counted as such (not one log line at start and silence after).
                None if configured => metrics.archive_error(),
                None => {}
            },
            ArchiveMsg::Reconfigure(cfg) => {
                configured = cfg.is_some();
                archive = open(cfg);
            }
        }
    }
}

/// The trigger thread: forwards accepted edges to the capture thread until stopped.
pub(crate) fn run_trigger(
    mut trigger: Box<dyn crate::actuate::trigger::Trigger>,
    events: Sender<TriggerEvent>,
    stop: Arc<AtomicBool>,
) {
    let mut errors: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        match trigger.wait(Duration::from_millis(100)) {
            Ok(Some(ev)) => {
                errors = 0;
                if events.send(ev).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                errors += 1;
                if errors == 1 || errors.is_power_of_two() {
                    log::error!("{e} ({errors} in a row)");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(threshold: Option<f32>, sensitivity: f32) -> ModelConfig {
        ModelConfig {
            bundle: "b".into(),
            precision: crate::config::Precision::F32,
            threshold,
            sensitivity,
        }
    }

    #[test]
    fn sensitivity_divides_the_threshold() {
        assert_eq!(effective_threshold(3.0, &model(None, 1.0)), 3.0);
        assert_eq!(effective_threshold(3.0, &model(None, 1.5)), 2.0);
        assert_eq!(effective_threshold(3.0, &model(Some(4.0), 0.5)), 8.0);
        assert_eq!(effective_threshold(3.0, &model(None, 0.0)), 3.0);
    }

    #[test]
    fn crop_refuses_a_region_outside_the_frame() {
        let img = RgbImage::new(100, 50);
        let roi = |x, y, width, height| {
            Some(Roi {
                x,
                y,
                width,
                height,
            })
        };
        assert_eq!(
            crop(img.clone(), roi(10, 5, 20, 30)).map(|i| i.dimensions()),
            Ok((20, 30))
        );
        assert!(crop(img.clone(), roi(90, 0, 20, 10)).is_err());
        assert!(crop(img, roi(u32::MAX, 0, 2, 2)).is_err());
    }

    #[test]
    fn sequence_gaps_become_dropped_parts_at_interpolated_times() {
        let mut last = None;
        let mut jobs = Vec::new();
        dropped_frames(&mut last, 4, Timestamp::from_millis(400), "cam", &mut jobs);
        assert!(jobs.is_empty());
        dropped_frames(&mut last, 7, Timestamp::from_millis(700), "cam", &mut jobs);
        let got: Vec<(u64, Timestamp)> = jobs
            .iter()
            .map(|j| match j {
                Job::Failed(FailedPart {
                    part,
                    captured,
                    reason: FailReason::Dropped,
                    ..
                }) => (*part, *captured),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (5, Timestamp::from_millis(500)),
                (6, Timestamp::from_millis(600))
            ]
        );
    }
}
