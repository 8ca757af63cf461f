//! Counters, latency histograms and the latest judged frame: what `/metrics`, `/status`,
//! `/healthz` and the live page show, and what `ustad run` summarises at exit.
//!
//! One mutex guards everything. The pipeline touches it once per part (a few hundred
//! nanoseconds at tens of parts per second) and scrapes are rare, so a lock-free design would
//! buy nothing and cost readability. Health is judged on the real (`Instant`) clock, not the
//! daemon's injected clock: "are frames flowing" is a question about wall time.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::actuate::{ActuatorStats, StatsHandle};
use crate::percentile::{median, percentile};
use ustad_core::judge::decide::Verdict;

/// Upper bounds (seconds) of the latency histogram buckets: from well under a frame period to
/// beyond any sensible reject delay, so both a fast workstation and a struggling Pi are visible.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0,
];

/// At most this many latency samples are kept for the exact percentiles of the exit summary
/// (8 MB); the histograms keep counting beyond it.
const MAX_SAMPLES: usize = 1 << 20;

/// Why a part could not be judged: the label of `ustad_failsafe_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The frame arrived but could not be read or decoded (truncated JPEG, I/O error).
    Corrupt,
    /// The verdict would have come later than the frame budget.
    OverBudget,
    /// The scoring engine failed on the frame (or its map was not finite).
    EngineError,
    /// The frame does not contain the configured region of interest.
    BadFrame,
    /// The camera dropped the frame (a gap in the sequence numbers).
    Dropped,
    /// A trigger fired but no frame came within the budget.
    NoFrame,
    /// The engine was still busy with earlier parts and the queue was full.
    Overrun,
}

impl FailReason {
    /// The label / JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Corrupt => "corrupt",
            FailReason::OverBudget => "over_budget",
            FailReason::EngineError => "engine_error",
            FailReason::BadFrame => "bad_frame",
            FailReason::Dropped => "dropped",
            FailReason::NoFrame => "no_frame",
            FailReason::Overrun => "overrun",
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cumulative Prometheus histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS.len()];
        }
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Median, 99th percentile and maximum of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: usize,
    /// Median, milliseconds.
    pub median_ms: f64,
    /// 99th percentile (nearest rank), milliseconds.
    pub p99_ms: f64,
    /// Maximum, milliseconds.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises samples in seconds.
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return LatencySummary::default();
        }
        let mut s = samples.to_vec();
        let median_ms = median(&mut s) * 1e3;
        LatencySummary {
            count: s.len(),
            median_ms,
            p99_ms: percentile(&s, 0.99) * 1e3,
            max_ms: s[s.len() - 1] * 1e3,
        }
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "median {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} parts",
            self.median_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// The most recent judged frame, for the live page.
#[derive(Debug, Clone)]
pub struct LatestFrame {
    /// The region of interest at the bundle's input size.
    pub image: Arc<RgbImage>,
    /// The anomaly map over `image` (`map_width × map_height`); empty when the part was not
    /// judged, or when its map waited for a pass of its own that was not run (parts waiting).
    pub map: Arc<Vec<f32>>,
    /// Map width.
    pub map_width: usize,
    /// Map height.
    pub map_height: usize,
    /// Threshold in force when it was judged (the overlay's colour scale).
    pub threshold: f32,
}

/// The last part, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct LastPart {
    /// Part number.
    pub part: u64,
    /// Where its frame came from.
    pub origin: String,
    /// How it was decided.
    pub verdict: Verdict,
    /// Image score, when judged.
    pub score: Option<f32>,
}

/// One decided part, as the pipeline reports it.
#[derive(Debug, Clone)]
pub struct PartEvent {
    /// How it was decided.
    pub verdict: Verdict,
    /// Why it was not judged, for fail-safe verdicts.
    pub reason: Option<FailReason>,
    /// Capture → verdict.
    pub to_verdict: Duration,
    /// Capture → reject command handed to the actuator.
    pub to_actuator: Duration,
    /// Time the scoring engine took, when it ran.
    pub inference: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    frames: u64,
    source_errors: u64,
    parts: u64,
    verdicts: BTreeMap<Verdict, u64>,
    failsafe: BTreeMap<FailReason, u64>,
    latency_verdict: Histogram,
    latency_actuator: Histogram,
    inference: Histogram,
    samples_verdict: Vec<f64>,
    samples_actuator: Vec<f64>,
    samples_inference: Vec<f64>,
    queue_depth: usize,
    threshold: f32,
    bundle: String,
    source: String,
    last_frame_at: Option<Instant>,
    last_part: Option<LastPart>,
    latest: Option<LatestFrame>,
    reloads: u64,
    reload_failures: u64,
    archive_errors: u64,
    maps_skipped: u64,
    maps_failed: u64,
    last_archive_error_at: Option<Instant>,
    /// Why each of the last [`HEALTH_WINDOW`] parts failed safe (`None`: judged).
    recent: std::collections::VecDeque<Option<FailReason>>,
    stopping: bool,
}

/// Parts the health check looks back over.
pub const HEALTH_WINDOW: usize = 50;
/// Health is degraded when more than this fraction of the recent parts failed safe: the line
/// then runs on the fail-safe policy, not on judgement.
pub const MAX_FAILSAFE_FRACTION: f64 = 0.2;
/// …and at least this many of them did (one bad frame at start-up is not a degraded line).
pub const MIN_FAILSAFE_PARTS: usize = 3;
/// Health is degraded this long after the archive lost a record.
pub const ARCHIVE_ERROR_HOLD: Duration = Duration::from_secs(60);

/// Everything the daemon counts.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    actuator: Mutex<Option<StatsHandle>>,
    started: Instant,
    stall_after: Duration,
}

impl Metrics {
    /// Empty counters; `/healthz` reports a stall when no frame arrived for `stall_after`.
    pub fn new(stall_after: Duration) -> Self {
        Metrics {
            inner: Mutex::new(Inner::default()),
            actuator: Mutex::new(None),
            started: Instant::now(),
            stall_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the actuator counters come from.
    pub fn set_actuator(&self, handle: StatsHandle) {
        *self.actuator.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    }

    /// Actuator counters as of now.
    pub fn actuator(&self) -> ActuatorStats {
        self.actuator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(StatsHandle::get)
            .unwrap_or_default()
    }

    /// Names for `/status`: the source and the bundle.
    pub fn set_identity(&self, source: String, bundle: String) {
        let mut m = self.lock();
        m.source = source;
        m.bundle = bundle;
    }

    /// The reject threshold in force.
    pub fn set_threshold(&self, threshold: f32) {
        self.lock().threshold = threshold;
    }

    /// The threshold last set, for parts failed safe before the engine saw them.
    pub fn threshold(&self) -> f32 {
        self.lock().threshold
    }

    /// A frame (good or unusable) came from the source.
    pub fn frame_arrived(&self) {
        let mut m = self.lock();
        m.frames += 1;
        m.last_frame_at = Some(Instant::now());
    }

    /// The source failed without delivering a frame (timeout, camera gone).
    pub fn source_error(&self) {
        self.lock().source_errors += 1;
    }

    /// Frames waiting for the inference thread.
    pub fn set_queue_depth(&self, depth: usize) {
        self.lock().queue_depth = depth;
    }

    /// The archive could not write.
    pub fn archive_error(&self) {
        let mut m = self.lock();
        m.archive_errors += 1;
        m.last_archive_error_at = Some(Instant::now());
    }

    /// A rejected part's deferred anomaly map was not drawn because parts were waiting.
    pub fn map_skipped(&self) {
        self.lock().maps_skipped += 1;
    }

    /// A rejected part's deferred anomaly map could not be drawn (its networks failed or gave
    /// NaN): the part was rejected, but its map scales are broken.
    pub fn map_failed(&self) {
        self.lock().maps_failed += 1;
    }

    /// A reload was applied (`ok`) or refused.
    pub fn reload(&self, ok: bool) {
        let mut m = self.lock();
        if ok {
            m.reloads += 1;
        } else {
            m.reload_failures += 1;
        }
    }

    /// The daemon is shutting down: `/healthz` says so instead of reporting a stall.
    pub fn set_stopping(&self) {
        self.lock().stopping = true;
    }

    /// Records a decided part.
    pub fn part_decided(&self, event: &PartEvent, last: LastPart, latest: Option<LatestFrame>) {
        let mut m = self.lock();
        m.parts += 1;
        *m.verdicts.entry(event.verdict).or_default() += 1;
        if let Some(reason) = event.reason {
            *m.failsafe.entry(reason).or_default() += 1;
        }
        if m.recent.len() == HEALTH_WINDOW {
            m.recent.pop_front();
        }
        m.recent.push_back(event.reason);
        let (v, a) = (
            event.to_verdict.as_secs_f64(),
            event.to_actuator.as_secs_f64(),
        );
        m.latency_verdict.observe(v);
        m.latency_actuator.observe(a);
        if m.samples_verdict.len() < MAX_SAMPLES {
            m.samples_verdict.push(v);
            m.samples_actuator.push(a);
        }
        if let Some(d) = event.inference {
            m.inference.observe(d.as_secs_f64());
            if m.samples_inference.len() < MAX_SAMPLES {
                m.samples_inference.push(d.as_secs_f64());
            }
        }
        m.last_part = Some(last);
        if latest.is_some() {
            m.latest = latest;
        }
    }

    /// The latest judged frame, if any.
    pub fn latest(&self) -> Option<LatestFrame> {
        self.lock().latest.clone()
    }

    /// Whether the daemon is judging the line, and a one-line reason: frames must flow, most
    /// recent parts must have been judged rather than failed safe, and the archive must not be
    /// losing records.
    pub fn health(&self) -> (bool, String) {
        let m = self.lock();
        if m.stopping {
            return (false, "stopping".into());
        }
        let age = match m.last_frame_at {
            None => return (false, "no frame yet".into()),
            Some(at) => at.elapsed(),
        };
        if age > self.stall_after {
            return (
                false,
                format!("stalled: last frame {:.1} s ago", age.as_secs_f64()),
            );
        }
        let failed: Vec<FailReason> = m.recent.iter().flatten().copied().collect();
        if failed.len() >= MIN_FAILSAFE_PARTS
            && failed.len() as f64 > MAX_FAILSAFE_FRACTION * m.recent.len() as f64
        {
            let mut reasons: BTreeMap<FailReason, usize> = BTreeMap::new();
            for r in &failed {
                *reasons.entry(*r).or_default() += 1;
            }
            let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
            return (
                false,
                format!(
                    "degraded: {} of the last {} parts failed safe ({})",
                    failed.len(),
                    m.recent.len(),
                    why.join(", ")
                ),
            );
        }
        if let Some(at) = m.last_archive_error_at
            && at.elapsed() < ARCHIVE_ERROR_HOLD
        {
            return (
                false,
                format!(
                    "degraded: archive losing records ({} lost, the last {:.0} s ago)",
                    m.archive_errors,
                    at.elapsed().as_secs_f64()
                ),
            );
        }
        (
            true,
            format!("ok: last frame {:.0} ms ago", age.as_secs_f64() * 1e3),
        )
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> Snapshot {
        let actuator = self.actuator();
        let m = self.lock();
        Snapshot {
            uptime_s: self.started.elapsed().as_secs_f64(),
            frames: m.frames,
            source_errors: m.source_errors,
            parts: m.parts,
            verdicts: m
                .verdicts
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect(),
            failsafe: m
                .failsafe
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), *v))
                .collect(),
            actuator,
            latency_verdict: LatencySummary::of(&m.samples_verdict),
            latency_actuator: LatencySummary::of(&m.samples_actuator),
            inference: LatencySummary::of(&m.samples_inference),
            queue_depth: m.queue_depth,
            threshold: m.threshold,
            bundle: m.bundle.clone(),
            source: m.source.clone(),
            last_part: m.last_part.clone(),
            reloads: m.reloads,
            reload_failures: m.reload_failures,
            archive_errors: m.archive_errors,
            maps_skipped: m.maps_skipped,
            maps_failed: m.maps_failed,
        }
    }

    /// The Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let actuator = self.actuator();
        let (healthy, _) = self.health();
        let m = self.lock();
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "ustad_frames_total",
            "Frames delivered by the source, usable or not.",
            m.frames,
        );
        counter(
            "ustad_source_errors_total",
            "Source failures without a frame (timeouts, camera gone).",
            m.source_errors,
        );
        counter("ustad_parts_total", "Parts given a verdict.", m.parts);
        counter(
            "ustad_rejects_fired_total",
            "Reject pulses driven on the output (merged pulses count once).",
            actuator.pulses,
        );
        counter(
            "ustad_rejects_requested_total",
            "Parts that asked the actuator for a reject.",
            actuator.rejects,
        );
        counter(
            "ustad_rejects_late_total",
            "Reject pulses started later than scheduled.",
            actuator.late,
        );
        counter(
            "ustad_rejects_missed_total",
            "Rejects that could not be fired: the part had passed the flap.",
            actuator.missed,
        );
        counter(
            "ustad_deadline_failsafes_total",
            "Parts whose verdict missed their deadline: the actuator applied the fail-safe itself.",
            actuator.expired,
        );
        counter(
            "ustad_actuator_errors_total",
            "Failed level changes on the reject output.",
            actuator.pin_errors,
        );
        counter(
            "ustad_reloads_total",
            "Configuration reloads applied.",
            m.reloads,
        );
        counter(
            "ustad_reload_failures_total",
            "Configuration reloads refused (the old configuration kept running).",
            m.reload_failures,
        );
        counter(
            "ustad_archive_errors_total",
            "Archive writes that failed.",
            m.archive_errors,
        );
        counter(
            "ustad_maps_skipped_total",
            "Rejected parts whose deferred anomaly map was not drawn: parts were waiting, or a map \
             does not fit the frame budget.",
            m.maps_skipped,
        );
        counter(
            "ustad_map_failures_total",
            "Rejected parts whose deferred anomaly map failed (its networks broke or gave NaN).",
            m.maps_failed,
        );
        out.push_str(
            "# HELP ustad_verdicts_total Parts by verdict.\n# TYPE ustad_verdicts_total counter\n",
        );
        for kind in [
            Verdict::Pass,
            Verdict::Reject,
            Verdict::FailsafeReject,
            Verdict::FailsafePass,
        ] {
            let v = m.verdicts.get(&kind).copied().unwrap_or(0);
            let _ = writeln!(out, "ustad_verdicts_total{{verdict=\"{kind}\"}} {v}");
        }
        out.push_str("# HELP ustad_failsafe_events_total Parts that could not be judged, by reason.\n# TYPE ustad_failsafe_events_total counter\n");
        for reason in [
            FailReason::Corrupt,
            FailReason::OverBudget,
            FailReason::EngineError,
            FailReason::BadFrame,
            FailReason::Dropped,
            FailReason::NoFrame,
            FailReason::Overrun,
        ] {
            let v = m.failsafe.get(&reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "ustad_failsafe_events_total{{reason=\"{reason}\"}} {v}"
            );
        }
        out.push_str("# HELP ustad_latency_seconds Time from capture to verdict and to the actuator command.\n# TYPE ustad_latency_seconds histogram\n");
        m.latency_verdict
            .render(&mut out, "ustad_latency_seconds", "stage=\"verdict\"");
        m.latency_actuator
            .render(&mut out, "ustad_latency_seconds", "stage=\"actuator\"");
        out.push_str("# HELP ustad_inference_seconds Time the scoring engine takes per frame.\n# TYPE ustad_inference_seconds histogram\n");
        m.inference
            .render(&mut out, "ustad_inference_seconds", "engine=\"tract\"");
        let _ = writeln!(
            out,
            "# HELP ustad_queue_depth Frames waiting for inference.\n# TYPE ustad_queue_depth gauge\nustad_queue_depth {}",
            m.queue_depth
        );
        let _ = writeln!(
            out,
            "# HELP ustad_threshold Image-score threshold in force.\n# TYPE ustad_threshold gauge\nustad_threshold {}",
            m.threshold
        );
        let _ = writeln!(
            out,
            "# HELP ustad_healthy 1 while the line is judged (frames flow, few parts fail safe, the archive keeps its records).\n# TYPE ustad_healthy gauge\nustad_healthy {}",
            u8::from(healthy)
        );
        out
    }
}

/// The counters at one moment: `/status` and the exit summary.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Seconds since start.
    pub uptime_s: f64,
    /// Frames delivered by the source.
    pub frames: u64,
    /// Source failures without a frame.
    pub source_errors: u64,
    /// Parts given a verdict.
    pub parts: u64,
    /// Parts by verdict label.
    pub verdicts: BTreeMap<String, u64>,
    /// Fail-safe events by reason.
    pub failsafe: BTreeMap<String, u64>,
    /// Actuator counters.
    pub actuator: ActuatorStats,
    /// Capture → verdict.
    pub latency_verdict: LatencySummary,
    /// Capture → actuator command.
    pub latency_actuator: LatencySummary,
    /// Scoring engine time per judged frame (its inverse is the frame rate the bundle
    /// sustains).
    pub inference: LatencySummary,
    /// Frames waiting for inference.
    pub queue_depth: usize,
    /// Threshold in force.
    pub threshold: f32,
    /// Bundle folder.
    pub bundle: String,
    /// Frame source.
    pub source: String,
    /// The last part.
    pub last_part: Option<LastPart>,
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads refused.
    pub reload_failures: u64,
    /// Archive write failures.
    pub archive_errors: u64,
    /// Rejected parts archived without their deferred anomaly map (parts were waiting, or a
    /// map does not fit the frame budget).
    pub maps_skipped: u64,
    /// Rejected parts whose deferred anomaly map failed.
    pub maps_failed: u64,
}

impl Snapshot {
    /// Parts with this verdict.
    pub fn verdict(&self, kind: Verdict) -> u64 {
        self.verdicts.get(kind.as_str()).copied().unwrap_or(0)
    }

    /// Fail-safe events with this reason.
    pub fn failsafe(&self, reason: FailReason) -> u64 {
        self.failsafe.get(reason.as_str()).copied().unwrap_or(0)
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "frames {}  parts {}  source errors {}",
            self.frames, self.parts, self.source_errors
        )?;
        writeln!(
            f,
            "verdicts: pass {}  reject {}  fail-safe reject {}  fail-safe pass {}",
            self.verdict(Verdict::Pass),
            self.verdict(Verdict::Reject),
            self.verdict(Verdict::FailsafeReject),
            self.verdict(Verdict::FailsafePass)
        )?;
        if !self.failsafe.is_empty() {
            let reasons: Vec<String> = self
                .failsafe
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "fail-safe events: {}", reasons.join("  "))?;
        }
        writeln!(
            f,
            "actuator: {} rejects, {} pulses ({} merged, {} late, {} missed), {} failed safe at their deadline",
            self.actuator.rejects,
            self.actuator.pulses,
            self.actuator.merged,
            self.actuator.late,
            self.actuator.missed,
            self.actuator.expired
        )?;
        writeln!(f, "engine time per frame:       {}", self.inference)?;
        writeln!(f, "latency capture -> verdict:  {}", self.latency_verdict)?;
        write!(f, "latency capture -> actuator: {}", self.latency_actuator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(m: &Metrics, reason: Option<FailReason>) {
        let verdict = if reason.is_some() {
            Verdict::FailsafeReject
        } else {
            Verdict::Pass
        };
        let event = PartEvent {
            verdict,
            reason,
            to_verdict: Duration::from_millis(1),
            to_actuator: Duration::from_millis(1),
            inference: None,
        };
        let last = LastPart {
            part: 0,
            origin: "x".into(),
            verdict,
            score: None,
        };
        m.frame_arrived();
        m.part_decided(&event, last, None);
    }

    #[test]
    fn health_degrades_when_parts_fail_safe_or_records_are_lost() {
        let m = Metrics::new(Duration::from_secs(5));
        for _ in 0..10 {
            decide(&m, None);
        }
        assert!(m.health().0, "{}", m.health().1);
        // Frames keep arriving, but every one is corrupt: the line runs on the fail-safe.
        for _ in 0..10 {
            decide(&m, Some(FailReason::Corrupt));
        }
        let (ok, why) = m.health();
        assert!(
            !ok && why.contains("10 of the last 20") && why.contains("corrupt"),
            "{why}"
        );
        assert!(m.prometheus().contains("ustad_healthy 0"));
        // Judged parts push the failures out of the window again.
        for _ in 0..HEALTH_WINDOW {
            decide(&m, None);
        }
        assert!(m.health().0, "{}", m.health().1);
        m.archive_error();
        let (ok, why) = m.health();
        assert!(!ok && why.contains("archive losing records"), "{why}");
    }

    #[test]
    fn latency_summary_uses_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(|i| i as f64 / 1000.0).collect();
        let s = LatencySummary::of(&samples);
        assert_eq!(s.count, 100);
        assert!((s.median_ms - 50.0).abs() < 1e-9, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 1e-9, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 1e-9, "{s:?}");
        assert_eq!(LatencySummary::of(&[]), LatencySummary::default());
    }

    #[test]
    fn prometheus_text_counts_parts_and_buckets() {
        let m = Metrics::new(Duration::from_secs(5));
        m.frame_arrived();
        let event = PartEvent {
            verdict: Verdict::FailsafeReject,
            reason: Some(FailReason::Corrupt),
            to_verdict: Duration::from_millis(30),
            to_actuator: Duration::from_millis(31),
            inference: None,
        };
        let last = LastPart {
            part: 0,
            origin: "x.jpg".into(),
            verdict: event.verdict,
            score: None,
        };
        m.part_decided(&event, last, None);
        let text = m.prometheus();
        assert!(text.contains("ustad_frames_total 1\n"), "{text}");
        assert!(
            text.contains("ustad_verdicts_total{verdict=\"failsafe_reject\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ustad_failsafe_events_total{reason=\"corrupt\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ustad_latency_seconds_bucket{stage=\"verdict\",le=\"0.025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("ustad_latency_seconds_bucket{stage=\"verdict\",le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("ustad_healthy 1\n"), "{text}");
    }
}
