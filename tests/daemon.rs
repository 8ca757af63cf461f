//! The edge daemon end to end: real image files through capture, the scoring engine, the
//! reject scheduler, the archive and the metrics endpoint, on a simulated clock so pulse times
//! can be checked exactly and nothing sleeps.
//!
//! The bundle is the trained one (`models/bundles/mtd-edge`) when it exists, else a bundle of
//! random networks written through the real export path; the test says which it used.

use ustad_core::testing as common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ustad::actuate::trigger::{EdgeKind, Trigger, TriggerError, TriggerEvent};
use ustad::capture::{CaptureError, Frame, FrameSource};
use ustad::clock::{Clock, ManualClock, Timestamp};
use ustad::daemon::archive::{PartRecord, read_records};
use ustad::daemon::metrics::FailReason;
use ustad::daemon::notify::{Notification, RecordingNotifier};
use ustad::daemon::{Daemon, DaemonOptions, ReloadError};
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::images::images_in;
use ustad_core::judge::decide::ImageScoreRule;
use ustad_core::judge::decide::Verdict;
use ustad_core::judge::preprocess::InputSpec;

const MTD_TEST: &str = "../shared/data/mtd/test";
const TRAINED: &str = "models/bundles/mtd-edge";

fn repo(rel: &str) -> PathBuf {
    common::repo_path(rel)
}

/// The trained bundle if present, else a small random one in `dir`.
fn bundle(dir: &Path) -> (PathBuf, bool) {
    let trained = repo(TRAINED);
    if trained.join("bundle.toml").is_file() {
        eprintln!(
            "daemon test: using the trained bundle {}",
            trained.display()
        );
        return (trained, true);
    }
    let path = dir.join("bundle");
    let scales = vec![common::random_scale(33, 4, 2, 3)];
    common::write_random_bundle(
        &path,
        InputSpec::imagenet(64, 64),
        &scales,
        ImageScoreRule::default(),
        0.0,
    );
    eprintln!(
        "daemon test: {TRAINED} not found, using a random bundle in {}",
        path.display()
    );
    (path, false)
}

/// `n` files of each kind from the MTD test split, linked into `frames/{defect,good}`, plus a
/// truncated JPEG in `frames/corrupt` (played first: sorted paths).
fn replay_folder(dir: &Path, n: usize) -> PathBuf {
    let frames = dir.join("frames");
    let src = repo(MTD_TEST);
    for (kind, from) in [("defect", "blowhole"), ("good", "good")] {
        let out = frames.join(kind);
        std::fs::create_dir_all(&out).expect("mkdir");
        let files = images_in(&src.join(from)).expect("MTD test split (../shared/data/mtd/test)");
        for f in files.iter().take(n) {
            std::os::unix::fs::symlink(f, out.join(f.file_name().expect("name"))).expect("link");
        }
    }
    let corrupt = frames.join("corrupt");
    std::fs::create_dir_all(&corrupt).expect("mkdir");
    let some_jpeg = images_in(&src.join("good"))
        .expect("good")
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "jpg"))
        .expect("a jpeg");
    let bytes = std::fs::read(some_jpeg).expect("read");
    std::fs::write(corrupt.join("truncated.jpg"), &bytes[..bytes.len() / 2]).expect("write");
    frames
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bundle: PathBuf,
    trained: bool,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let (bundle, trained) = bundle(&root);
    Setup {
        _dir: dir,
        root,
        bundle,
        trained,
    }
}

fn config_text(s: &Setup, frames: &Path, extra_model: &str, tail: &str) -> String {
    format!(
        r#"[camera]
source = "replay"
path = "{frames}"
fps = 100

[model]
bundle = "{bundle}"
{extra_model}

[reject]
actuator = "mock"
pulse_ms = 5
delay_ms = 500

[failsafe]
policy = "reject"
frame_budget_ms = 400

[archive]
dir = "{archive}"
max_bytes = 100000000

[http]
listen = "127.0.0.1:0"
{tail}"#,
        frames = frames.display(),
        bundle = s.bundle.display(),
        archive = s.root.join("archive").display(),
    )
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("read");
    let buf = String::from_utf8_lossy(&bytes);
    let (head, body) = buf.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_string())
}

/// `name{label="value"} N` lines of a Prometheus text, by label value.
fn prom_by_label(text: &str, name: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let value = l.split('"').nth(1)?.to_string();
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((value, n))
        })
        .collect()
}

fn prom_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// 1-based line of the first line starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .map(|i| i + 1)
        .expect("line in text")
}

fn options(clock: &ManualClock, notifier: &Arc<RecordingNotifier>) -> DaemonOptions {
    let mut o = DaemonOptions::production();
    o.clock = Arc::new(clock.clone());
    o.notifier = notifier.clone();
    o.watchdog = Some(Duration::from_millis(20));
    o.engine_threads = 2;
    // The manual clock stands still while the engine works, so these tests model an engine
    // that takes no line time: nothing may be lost to the queue's real-time occupancy.
    // `a_full_queue_fails_parts_safe_at_once` tests the small production queue.
    o.queue_capacity = 256;
    o
}

#[test]
fn replay_through_the_whole_pipeline() {
    let s = setup();
    let frames = replay_folder(&s.root, 6);
    let files = {
        let mut f: Vec<PathBuf> = Vec::new();
        for kind in ["corrupt", "defect", "good"] {
            f.extend(images_in(&frames.join(kind)).expect("list"));
        }
        f
    };
    assert_eq!(files.len(), 13);

    // What the engine alone says about each image: the pipeline must agree part by part.
    let mut engine = Engine::load(
        ustad_core::bundle::Bundle::load(&s.bundle).expect("bundle"),
        EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("engine");
    let mut scores = BTreeMap::new();
    for f in &files[1..] {
        let img = image::open(f).expect("image");
        scores.insert(
            f.display().to_string(),
            engine.analyze(&img).expect("analyze").score,
        );
    }
    // This test checks the pipeline's mechanics (one verdict per part, pulse timing, archive and
    // metrics), not detection quality (`ustad eval` measures that): put the threshold at the
    // median score so both verdicts occur with any bundle, random or trained.
    let extra_model = {
        let mut v: Vec<f32> = scores.values().copied().collect();
        v.sort_by(f32::total_cmp);
        format!("threshold = {}", v[v.len() / 2])
    };
    let cfg_path = s.root.join("daemon.toml");
    std::fs::write(&cfg_path, config_text(&s, &frames, &extra_model, "")).expect("config");

    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let notifier = Arc::new(RecordingNotifier::new());
    let mut daemon = Daemon::start(&cfg_path, options(&clock, &notifier)).expect("start");
    let threshold = daemon.metrics().snapshot().threshold;
    let addr = daemon.http_addr().expect("http");
    let pins = daemon.pin_record().expect("mock output");
    let summary = daemon.wait().expect("run");

    // Exactly one verdict per part, in order.
    let records: Vec<PartRecord> = read_records(&s.root.join("archive")).expect("archive");
    let parts: Vec<u64> = records.iter().map(|r| r.part).collect();
    assert_eq!(parts, (0..13).collect::<Vec<_>>(), "{records:#?}");
    assert_eq!(summary.frames, 13);
    assert_eq!(summary.parts, 13);

    // The truncated JPEG is a fail-safe reject, not a crash or a pass.
    let corrupt = &records[0];
    assert!(corrupt.origin.ends_with("truncated.jpg"), "{corrupt:?}");
    assert_eq!(corrupt.verdict, "failsafe_reject");
    assert_eq!(corrupt.reason.as_deref(), Some("corrupt"));
    assert_eq!(corrupt.score, None);

    // Every judged part got the engine's own score and the verdict at the threshold.
    for r in &records[1..] {
        let want = scores[&r.origin];
        let got = r.score.expect("judged parts have a score");
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{r:?} vs {want}"
        );
        let verdict = if got >= threshold { "reject" } else { "pass" };
        assert_eq!(r.verdict, verdict, "{r:?}");
        assert!(r.timings.verdict_ms <= 400.0, "{r:?}");
    }
    let rejected: Vec<&PartRecord> = records
        .iter()
        .filter(|r| r.verdict == "reject" || r.verdict == "failsafe_reject")
        .collect();
    let defect_rejects = records
        .iter()
        .filter(|r| r.origin.contains("/defect/") && r.verdict == "reject")
        .count();
    let good_rejects = records
        .iter()
        .filter(|r| r.origin.contains("/good/") && r.verdict == "reject")
        .count();
    eprintln!(
        "daemon test ({} bundle): threshold {threshold:.4}; rejected {defect_rejects}/6 defective and {good_rejects}/6 good parts",
        if s.trained { "trained" } else { "random" }
    );
    assert!(rejected.len() > 1 && rejected.len() < 13, "{records:#?}");

    // Every rejected part's pulse starts exactly at capture time + delay and lasts the pulse.
    let pulses = pins.pulses();
    let want: Vec<(Timestamp, Timestamp)> = rejected
        .iter()
        .map(|r| {
            let start = Timestamp::from_duration(Duration::from_secs_f64(r.captured_s))
                + Duration::from_millis(500);
            (start, start + Duration::from_millis(5))
        })
        .collect();
    assert_eq!(pulses.len(), want.len(), "{pulses:?}");
    for ((s0, e0), (s1, e1)) in pulses.iter().zip(&want) {
        let close = |a: Timestamp, b: Timestamp| (a - b).max(b - a) < Duration::from_micros(1);
        assert!(close(*s0, *s1) && close(*e0, *e1), "{pulses:?} vs {want:?}");
    }
    assert!(!pins.is_active(), "output left safe");
    // Parts were 10 ms apart: frame k captured at start + k * 10 ms.
    for r in &records {
        let expect = 1000.0 + r.part as f64 * 0.010;
        assert!((r.captured_s - expect).abs() < 1e-6, "{r:?}");
    }

    // Overlays kept for rejected judged parts.
    for r in &rejected[1..] {
        let img = r.image.as_ref().expect("overlay");
        assert!(s.root.join("archive").join(img).is_file());
    }

    // Metrics agree with the archive.
    let count = |v: &str| records.iter().filter(|r| r.verdict == v).count() as u64;
    assert_eq!(summary.verdict(Verdict::Pass), count("pass"));
    assert_eq!(summary.verdict(Verdict::Reject), count("reject"));
    assert_eq!(
        summary.verdict(Verdict::FailsafeReject),
        count("failsafe_reject")
    );
    assert_eq!(summary.failsafe(FailReason::Corrupt), 1);
    assert_eq!(summary.actuator.pulses, rejected.len() as u64);
    assert_eq!(summary.actuator.missed, 0);
    let (code, text) = get(addr, "/metrics");
    assert_eq!(code, 200);
    let verdicts = prom_by_label(&text, "ustad_verdicts_total");
    for v in ["pass", "reject", "failsafe_reject", "failsafe_pass"] {
        assert_eq!(verdicts.get(v).copied(), Some(count(v)), "{v}: {text}");
    }
    assert_eq!(prom_value(&text, "ustad_frames_total"), Some(13));
    assert_eq!(prom_value(&text, "ustad_parts_total"), Some(13));
    assert_eq!(
        prom_value(&text, "ustad_rejects_fired_total"),
        Some(rejected.len() as u64)
    );
    assert_eq!(
        prom_by_label(&text, "ustad_failsafe_events_total").get("corrupt"),
        Some(&1)
    );
    let (code, status) = get(addr, "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["counters"]["parts"], 13);
    assert_eq!(get(addr, "/latest.png").0, 200);

    // READY once, then watchdog pings from the frame loop, then STOPPING.
    let sent = notifier.sent();
    assert_eq!(sent.first().map(|s| &s.0), Some(&Notification::Ready));
    let pings: Vec<&String> = sent
        .iter()
        .filter(|(n, _)| *n == Notification::Watchdog)
        .map(|(_, t)| t)
        .collect();
    assert!(pings.len() >= 6, "{sent:?}");
    assert!(pings.iter().all(|t| *t == "ustad-capture"), "{sent:?}");
    assert_eq!(notifier.count(&Notification::Stopping), 1);
    drop(daemon);
}

/// A source that replays a script: frames (with sequence numbers), errors, then the end.
struct ScriptedSource {
    clock: ManualClock,
    script: Vec<Step>,
    image: image::RgbImage,
    /// A camera (frames are due whether taken or not) or a folder read on demand.
    real_time: bool,
}

#[derive(Clone)]
enum Step {
    Frame(u64),
    /// A frame whose capture time is this long before "now": it arrives over budget.
    StaleFrame(u64, Duration),
    Timeout,
    Gone,
    /// Wait this long in real time (let other threads catch up), then go on.
    Pause(Duration),
}

/// Test options (no HTTP) with a [`ScriptedSource`] playing `script` on `clock`.
fn scripted_options(
    clock: &ManualClock,
    notifier: &Arc<RecordingNotifier>,
    script: Vec<Step>,
) -> DaemonOptions {
    let mut opts = options(clock, notifier);
    opts.serve_http = false;
    opts.source = Some(Box::new(ScriptedSource {
        clock: clock.clone(),
        image: common::test_image(64, 48).to_rgb8(),
        script,
        real_time: true,
    }));
    opts
}

impl FrameSource for ScriptedSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        while let Some(Step::Pause(d)) = self.script.first() {
            std::thread::sleep(*d);
            self.script.remove(0);
        }
        if self.script.is_empty() {
            return Ok(None);
        }
        self.clock.advance(Duration::from_millis(10));
        let now = self.clock.now();
        let frame = |sequence, timestamp| Frame {
            image: self.image.clone(),
            timestamp,
            sequence,
            origin: "scripted".into(),
        };
        match self.script.remove(0) {
            Step::Frame(seq) => Ok(Some(frame(seq, now))),
            Step::StaleFrame(seq, age) => Ok(Some(frame(
                seq,
                Timestamp::from_duration(now.as_duration() - age),
            ))),
            Step::Timeout => Err(CaptureError::Timeout {
                device: "scripted".into(),
                timeout: Duration::from_millis(1000),
            }),
            Step::Gone => Err(CaptureError::Disconnected {
                device: "scripted".into(),
                context: "dequeue".into(),
                source: std::io::Error::other("unplugged"),
            }),
            Step::Pause(_) => unreachable!("pauses are taken above"),
        }
    }

    fn describe(&self) -> String {
        "scripted source".into()
    }

    fn real_time(&self) -> bool {
        self.real_time
    }
}

#[test]
fn source_errors_reconnect_gaps_and_stale_frames() {
    let s = setup();
    let cfg_path = s.root.join("daemon.toml");
    std::fs::write(&cfg_path, config_text(&s, &s.root, "", "")).expect("config");
    let clock = ManualClock::new(Timestamp::from_millis(5_000));
    let notifier = Arc::new(RecordingNotifier::new());
    let opts = scripted_options(
        &clock,
        &notifier,
        vec![
            Step::Frame(0),
            Step::Timeout,
            Step::Timeout,
            Step::Gone,
            // Reconnected; the camera dropped frames 2 and 3 meanwhile.
            Step::Frame(1),
            Step::Frame(4),
            Step::StaleFrame(5, Duration::from_secs(2)),
            Step::Frame(6),
        ],
    );
    let mut daemon = Daemon::start(&cfg_path, opts).expect("start");
    let summary = daemon.wait().expect("run");
    assert_eq!(summary.source_errors, 3);
    assert_eq!(summary.frames, 5);
    let records = read_records(&s.root.join("archive")).expect("archive");
    let by_part: BTreeMap<u64, &PartRecord> = records.iter().map(|r| (r.part, r)).collect();
    assert_eq!(records.len(), 7, "one verdict per part: {records:#?}");
    assert_eq!(
        by_part.keys().copied().collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    for p in [2, 3] {
        assert_eq!(by_part[&p].verdict, "failsafe_reject");
        assert_eq!(by_part[&p].reason.as_deref(), Some("dropped"));
    }
    assert_eq!(by_part[&5].verdict, "failsafe_reject");
    assert_eq!(by_part[&5].reason.as_deref(), Some("over_budget"));
    for p in [0, 1, 4, 6] {
        assert!(by_part[&p].score.is_some(), "{:?}", by_part[&p]);
        assert_eq!(by_part[&p].reason, None);
    }
    assert_eq!(summary.failsafe(FailReason::Dropped), 2);
    assert_eq!(summary.failsafe(FailReason::OverBudget), 1);
    // The stale part's pulse window was long over: counted as missed, never fired late.
    assert_eq!(summary.actuator.missed, 1);
    // Pings continued through the source errors.
    assert!(notifier.count(&Notification::Watchdog) >= 4);
}

/// A bundle that judges on small views and maps on a large one (`models/bundles/mtd-edge-map`):
/// the daemon decides from the views, then draws the large map for a rejected part only while no
/// part waits and only when a map fits the frame budget; skipped maps are counted.
#[test]
fn deferred_maps_are_drawn_for_rejects_only_while_no_part_waits_and_they_fit_the_budget() {
    // Two parts with the line idle after each, then a burst of six.
    let idle = Duration::from_millis(1500);
    let mut script = vec![
        Step::Frame(0),
        Step::Pause(idle),
        Step::Frame(1),
        Step::Pause(idle),
    ];
    script.extend((2..8).map(Step::Frame));
    let (has_map, summary) = deferred_map_run(5000, script.clone());
    assert!(
        has_map[0] && has_map[1],
        "idle line, maps drawn: {has_map:?}"
    );
    assert!(
        has_map[7],
        "the last part of the burst had no part behind it: {has_map:?}"
    );
    let skipped = has_map.iter().filter(|drawn| !**drawn).count() as u64;
    assert_eq!(summary.maps_skipped, skipped, "{has_map:?}");
    assert!(
        skipped >= 1,
        "a burst of six behind a 640² map: {has_map:?}"
    );
    assert_eq!(summary.maps_failed, 0);

    // A 640² map takes longer than a 100 ms budget (139 ms in the release binary, more here):
    // the first map, drawn to learn that, is the only one, although the line is idle after the
    // second part too. (The burst's six captures move the manual clock 60 ms: all in budget.)
    let (has_map, summary) = deferred_map_run(100, script);
    assert!(has_map[0], "{has_map:?}");
    assert!(has_map[1..].iter().all(|drawn| !drawn), "{has_map:?}");
    assert_eq!(summary.maps_skipped, 7);
}

/// Runs `script` through `mtd-edge-map` with every part rejected (the test is about which rejects
/// get their map) and the given frame budget; for each archived part, whether its overlay shows
/// a map (it differs from the plain frame at the input size).
fn deferred_map_run(
    budget_ms: u64,
    script: Vec<Step>,
) -> (Vec<bool>, ustad::daemon::metrics::Snapshot) {
    let s = setup();
    let bundle = repo("models/bundles/mtd-edge-map");
    let cfg_path = s.root.join("daemon.toml");
    // The manual clock stands still while the engine works, so no part is ever over budget;
    // the budget only bounds which maps are drawn, against their measured time.
    let text = config_text(&s, &s.root, "threshold = 0.001", "")
        .replace(
            &s.bundle.display().to_string(),
            &bundle.display().to_string(),
        )
        .replace(
            "frame_budget_ms = 400",
            &format!("frame_budget_ms = {budget_ms}"),
        )
        .replace("delay_ms = 500", "delay_ms = 6000");
    std::fs::write(&cfg_path, text).expect("config");
    let clock = ManualClock::new(Timestamp::from_millis(5_000));
    let notifier = Arc::new(RecordingNotifier::new());
    let parts = script
        .iter()
        .filter(|s| matches!(s, Step::Frame(_)))
        .count();
    let opts = scripted_options(&clock, &notifier, script);
    let mut daemon = Daemon::start(&cfg_path, opts).expect("start");
    let summary = daemon.wait().expect("run");

    let records = read_records(&s.root.join("archive")).expect("archive");
    assert_eq!(records.len(), parts, "{records:#?}");
    let spec = ustad_core::bundle::Bundle::load(&bundle)
        .expect("bundle")
        .manifest
        .input;
    let plain = ustad_core::judge::preprocess::resize_rgb(&common::test_image(64, 48), &spec);
    let has_map = records
        .iter()
        .map(|r| {
            assert_eq!(r.verdict, "reject", "{r:?}");
            let file = s
                .root
                .join("archive")
                .join(r.image.as_ref().expect("overlay"));
            let overlay = image::open(&file).expect("png").to_rgb8();
            assert_eq!(overlay.dimensions(), plain.dimensions(), "{r:?}");
            overlay != plain
        })
        .collect();
    assert_eq!(summary.failsafe(FailReason::OverBudget), 0);
    (has_map, summary)
}

/// Overload on the real clock: frames come every 10 ms, one inference of the trained bundle takes
/// longer than the 250 ms budget, and the pulse window (300..350 ms after capture) closes before
/// the engine reaches the second part. Parts waiting for the engine must still get their
/// fail-safe pulse in their window (the scheduler applies it at each part's deadline), not be
/// counted missed when the engine finally gets to them.
#[test]
fn overload_fails_parts_safe_at_their_deadline_not_after_the_flap() {
    let s = setup();
    let frames = s.root.join("frames");
    std::fs::create_dir_all(&frames).expect("mkdir");
    let good = images_in(&repo(MTD_TEST).join("good")).expect("MTD test split");
    for f in good.iter().take(6) {
        std::os::unix::fs::symlink(f, frames.join(f.file_name().expect("name"))).expect("link");
    }
    let cfg_path = s.root.join("daemon.toml");
    let text = config_text(&s, &frames, "", "")
        .replace("pulse_ms = 5\n", "pulse_ms = 50\n")
        .replace("delay_ms = 500", "delay_ms = 300")
        .replace("frame_budget_ms = 400", "frame_budget_ms = 250");
    assert!(text.contains("pulse_ms = 50\n") && text.contains("frame_budget_ms = 250"));
    std::fs::write(&cfg_path, text).expect("config");
    let mut opts = DaemonOptions::production();
    opts.notifier = Arc::new(RecordingNotifier::new());
    opts.watchdog = None;
    opts.serve_http = false;
    opts.engine_threads = 2;
    let mut daemon = Daemon::start(&cfg_path, opts).expect("start");
    let pins = daemon.pin_record().expect("mock output");
    let summary = daemon.wait().expect("run");

    let records = read_records(&s.root.join("archive")).expect("archive");
    // In the order they were decided: parts failed safe by capture come before the ones the
    // engine was still judging.
    let mut parts: Vec<u64> = records.iter().map(|r| r.part).collect();
    parts.sort_unstable();
    assert_eq!(parts, (0..6).collect::<Vec<_>>(), "one verdict per part");
    let failed_safe = records
        .iter()
        .filter(|r| r.verdict == "failsafe_reject")
        .count() as u64;
    let rejected = records
        .iter()
        .filter(|r| r.verdict == "reject" || r.verdict == "failsafe_reject")
        .count() as u64;
    eprintln!(
        "overload test: {failed_safe}/6 failed safe, {} at their deadline by the actuator; {summary}",
        summary.actuator.expired
    );
    // Nothing passed the flap unrejected: every reject asked for was driven in its window.
    assert_eq!(summary.actuator.missed, 0, "{records:#?}");
    assert_eq!(summary.actuator.rejects, rejected);
    assert_eq!(summary.verdict(Verdict::FailsafeReject), failed_safe);
    assert!(!pins.pulses().is_empty() || rejected == 0);
    for r in records.iter().filter(|r| r.verdict == "failsafe_reject") {
        // Waited for the engine past the budget, or found the queue full.
        assert!(
            matches!(r.reason.as_deref(), Some("over_budget" | "overrun")),
            "{r:?}"
        );
    }
    if s.trained {
        // The second part waits one inference and needs another: its verdict cannot come
        // within 250 ms unless an inference takes under ~130 ms (it takes ~270-400 ms here), so
        // the actuator failed at least that part safe at its deadline.
        assert!(summary.actuator.expired >= 1, "{summary}");
        assert!(failed_safe >= 1, "{records:#?}");
    }
}

/// The production queue (two parts) on a camera whose frames come faster than the engine:
/// the capture thread does not wait. Every part that finds the queue full is failed safe by
/// capture itself, at once and counted as an overrun, and its reject pulse is armed in time;
/// the watchdog keeps being fed. The same script from a source read on demand is throttled
/// instead, and every part is judged.
#[test]
fn a_full_queue_fails_parts_safe_at_once() {
    let s = setup();
    let cfg_path = s.root.join("daemon.toml");
    std::fs::write(&cfg_path, config_text(&s, &s.root, "", "")).expect("config");
    const PARTS: u64 = 30;
    let run = |real_time: bool| {
        let clock = ManualClock::new(Timestamp::from_millis(5_000));
        let notifier = Arc::new(RecordingNotifier::new());
        let mut opts = options(&clock, &notifier);
        opts.serve_http = false;
        opts.queue_capacity = 2;
        opts.source = Some(Box::new(ScriptedSource {
            clock: clock.clone(),
            image: common::test_image(64, 48).to_rgb8(),
            script: (0..PARTS).map(Step::Frame).collect(),
            real_time,
        }));
        let archive = s.root.join("archive");
        let _ = std::fs::remove_dir_all(&archive);
        let mut daemon = Daemon::start(&cfg_path, opts).expect("start");
        let summary = daemon.wait().expect("run");
        let records = read_records(&archive).expect("archive");
        (summary, records, notifier.count(&Notification::Watchdog))
    };

    let (summary, records, pings) = run(true);
    let parts: Vec<u64> = records.iter().map(|r| r.part).collect();
    let mut sorted = parts.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..PARTS).collect::<Vec<_>>(),
        "one verdict per part"
    );
    let overruns: Vec<&PartRecord> = records
        .iter()
        .filter(|r| r.reason.as_deref() == Some("overrun"))
        .collect();
    // The script is read in microseconds and one inference takes milliseconds: at most a
    // few parts reach the engine before the queue is full.
    assert!(overruns.len() >= 10, "{records:#?}");
    for r in &overruns {
        assert_eq!(r.verdict, "failsafe_reject", "{r:?}");
        assert_eq!(r.score, None, "{r:?}");
        // Commanded at capture time on the line's clock, not after the engine.
        assert!(r.timings.actuator_ms < 1.0, "{r:?}");
    }
    assert_eq!(summary.failsafe(FailReason::Overrun), overruns.len() as u64);
    assert_eq!(summary.actuator.missed, 0, "{summary}");
    assert!(pings >= (PARTS / 2 - 1) as usize, "{pings} watchdog pings");

    let (summary, records, _) = run(false);
    assert_eq!(records.len() as u64, PARTS);
    assert!(records.iter().all(|r| r.score.is_some()), "{records:#?}");
    assert_eq!(summary.failsafe(FailReason::Overrun), 0);
}

/// A part sensor that reports a fixed list of edges, then stays quiet.
struct ScriptedTrigger {
    events: Vec<TriggerEvent>,
}

impl Trigger for ScriptedTrigger {
    fn wait(&mut self, timeout: Duration) -> Result<Option<TriggerEvent>, TriggerError> {
        if self.events.is_empty() {
            std::thread::sleep(timeout.min(Duration::from_millis(5)));
            return Ok(None);
        }
        Ok(Some(self.events.remove(0)))
    }
}

/// `trigger.mode = "gpio"` with an injected sensor: parts are the triggers, not the frames.
/// Each trigger takes the first frame at or after it, two triggers within one frame period
/// share a frame, a trigger no frame follows gets the fail-safe, frames without a trigger are
/// not parts, and every pulse is timed from the trigger's own timestamp.
#[test]
fn trigger_mode_judges_one_part_per_trigger_timed_from_the_trigger() {
    let s = setup();
    let cfg_path = s.root.join("daemon.toml");
    // The smallest threshold a config accepts (> 0): an image score is the upper tail of a map
    // normalised to mean 0 on good parts, so every part is rejected and every pulse is seen.
    let text = config_text(&s, &s.root, "threshold = 1e-6", "").replace(
        "[reject]",
        "[trigger]\nmode = \"gpio\"\nline = \"GPIO27\"\ndebounce_ms = 1\n\n[reject]",
    );
    std::fs::write(&cfg_path, text).expect("config");
    let clock = ManualClock::new(Timestamp::from_millis(5_000));
    let notifier = Arc::new(RecordingNotifier::new());
    // Frames at 5010, 5020, ..., 5080 ms (the scripted source advances 10 ms per frame). The
    // sensor's events reach the capture thread first (as they would: the parts come before
    // their frames are read).
    let mut opts = scripted_options(
        &clock,
        &notifier,
        std::iter::once(Step::Pause(Duration::from_millis(200)))
            .chain((0..8).map(Step::Frame))
            .collect(),
    );
    let ev = |ms: u64, count: u64| TriggerEvent {
        timestamp: Timestamp::from_millis(ms),
        edge: EdgeKind::Rising,
        count,
    };
    // 5012 -> frame at 5020; 5041 and 5050 -> both the frame at 5050; 5200 -> no frame.
    let triggers = vec![ev(5012, 0), ev(5041, 1), ev(5050, 2), ev(5200, 3)];
    opts.trigger = Some(Box::new(ScriptedTrigger {
        events: triggers.clone(),
    }));
    let mut daemon = Daemon::start(&cfg_path, opts).expect("start");
    let pins = daemon.pin_record().expect("mock output");
    let summary = daemon.wait().expect("run");

    let records = read_records(&s.root.join("archive")).expect("archive");
    let parts: Vec<u64> = records.iter().map(|r| r.part).collect();
    assert_eq!(
        parts,
        vec![0, 1, 2, 3],
        "one verdict per trigger: {records:#?}"
    );
    assert_eq!(summary.frames, 8);
    assert_eq!(summary.parts, 4);
    let seq = |p: usize| records[p].sequence;
    assert_eq!(
        (seq(0), seq(1), seq(2)),
        (Some(1), Some(4), Some(4)),
        "{records:#?}"
    );
    for r in &records[..3] {
        assert_eq!(r.verdict, "reject", "threshold far below any score: {r:?}");
    }
    assert_eq!(records[3].verdict, "failsafe_reject");
    assert_eq!(records[3].reason.as_deref(), Some("no_frame"));
    // Pulses at trigger time + 500 ms, 5 ms long, one per part.
    let want: Vec<(Timestamp, Timestamp)> = triggers
        .iter()
        .map(|t| {
            let start = t.timestamp + Duration::from_millis(500);
            (start, start + Duration::from_millis(5))
        })
        .collect();
    assert_eq!(pins.pulses(), want);
    assert_eq!(summary.actuator.missed, 0);
}

/// A source fed from the test, so the daemon runs while the test reloads it.
struct GatedSource {
    rx: crossbeam_channel::Receiver<Frame>,
}

impl FrameSource for GatedSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        Ok(self.rx.recv().ok())
    }

    fn describe(&self) -> String {
        "gated source".into()
    }
}

#[test]
fn reload_applies_good_configs_and_keeps_running_on_bad_ones() {
    let s = setup();
    let cfg_path = s.root.join("daemon.toml");
    let good = config_text(&s, &s.root, "threshold = 2.0", "");
    std::fs::write(&cfg_path, &good).expect("config");
    let clock = ManualClock::new(Timestamp::from_millis(5_000));
    let notifier = Arc::new(RecordingNotifier::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut opts = options(&clock, &notifier);
    opts.serve_http = false;
    opts.source = Some(Box::new(GatedSource { rx }));
    let mut daemon = Daemon::start(&cfg_path, opts).expect("start");
    let handle = daemon.handle();
    let before = daemon.config();
    assert_eq!(daemon.metrics().snapshot().threshold, 2.0);

    // A typo: refused with its line, the running configuration stays.
    let bad = good.replace("pulse_ms = 5", "pulse_ms = 5\npuls_ms = 7");
    let line = line_of(&bad, "puls_ms");
    std::fs::write(&cfg_path, &bad).expect("bad");
    let e = handle.reload().expect_err("bad config");
    assert!(
        matches!(&e, ReloadError::Config(c) if c.line() == Some(line)),
        "{e}"
    );
    assert!(e.to_string().contains("puls_ms"), "{e}");
    assert_eq!(daemon.config(), before);

    // A bundle that does not load: refused too.
    std::fs::write(
        &cfg_path,
        good.replace(&s.bundle.display().to_string(), "/nonexistent/bundle"),
    )
    .expect("bad bundle");
    let e = handle.reload().expect_err("bad bundle");
    assert!(matches!(e, ReloadError::Engine { .. }), "{e}");
    assert_eq!(daemon.config(), before);

    // A good change: sensitivity, timing; a camera change needs a restart.
    std::fs::write(
        &cfg_path,
        good.replace("threshold = 2.0", "threshold = 2.0\nsensitivity = 2.0")
            .replace("delay_ms = 500", "delay_ms = 450")
            .replace("fps = 100", "fps = 50"),
    )
    .expect("good");
    let report = handle.reload().expect("good reload");
    assert!(
        report.applied.contains(&"model.sensitivity".to_string()),
        "{report}"
    );
    assert!(
        report.applied.contains(&"reject timing".to_string()),
        "{report}"
    );
    assert_eq!(report.needs_restart, ["camera"], "{report}");
    let now = daemon.config();
    assert_eq!(now.model.sensitivity, 2.0);
    assert_eq!(now.reject.delay, Duration::from_millis(450));
    assert_eq!(now.camera, before.camera, "camera keeps its running value");
    // The reload itself puts the new threshold in force, before any part is judged.
    assert_eq!(daemon.metrics().snapshot().threshold, 1.0);

    // The next part is judged at threshold 2.0 / 2 and its pulse uses the new delay.
    tx.send(Frame {
        image: common::test_image(64, 48).to_rgb8(),
        timestamp: clock.now(),
        sequence: 0,
        origin: "gated".into(),
    })
    .expect("send");
    drop(tx);
    let summary = daemon.wait().expect("run");
    assert_eq!(summary.parts, 1);
    assert_eq!(summary.threshold, 1.0);
    assert_eq!(summary.reload_failures, 2);
    assert_eq!(summary.reloads, 1);
    let records = read_records(&s.root.join("archive")).expect("archive");
    assert_eq!(records[0].threshold, 1.0);
    if records[0].verdict == "reject" {
        let pulses = daemon.pin_record().expect("mock").pulses();
        assert_eq!(
            pulses[0].0 - Timestamp::from_millis(5_000),
            Duration::from_millis(450)
        );
    }
    assert!(notifier.count(&Notification::Reloading) >= 3);
}

#[test]
fn check_config_reports_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[camera]\nsource = \"replay\"\npath = \"x\"\n\n[model]\nbundle = \"b\"\n\n[reject]\nactuator = \"log-only\"\npulse_ms = 0\ndelay_ms = 100\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ustad"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .expect("run ustad");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:10:", bad.display())) && err.contains("reject.pulse_ms"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ustad"))
        .args(["check-config"])
        .arg(repo("config/replay.toml"))
        .current_dir(repo("."))
        .output()
        .expect("run ustad");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(": ok") && text.contains("replay of"),
        "{text}"
    );
}

/// `check-config` opens what `run` would open: a bundle that does not load, a replay folder
/// with no images and an archive folder that cannot be written are errors naming the key, and
/// values that would crash or reject everything are refused with their line.
#[test]
fn check_config_refuses_what_cannot_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = std::fs::read_to_string(repo("config/replay.toml")).expect("replay.toml");
    let check = |name: &str, text: String| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ustad"))
            .args(["check-config"])
            .arg(&file)
            .current_dir(repo("."))
            .output()
            .expect("run ustad");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let cases = [
        (
            "bundle",
            replay.replace("models/bundles/mtd-edge-map", "models/bundles/absent"),
            "model.bundle",
        ),
        (
            "folder",
            replay.replace("../shared/data/mtd/test", &empty.display().to_string()),
            "camera.path",
        ),
        (
            "archive",
            replay.replace(
                "target/ustad-replay-archive",
                &not_a_dir.join("sub").display().to_string(),
            ),
            "archive.dir",
        ),
        (
            "fps",
            replay.replace("fps = 2", "fps = 1e-30"),
            "camera.fps",
        ),
        (
            "threshold",
            replay.replace("sensitivity = 1.0", "sensitivity = 1.0\nthreshold = 0.0"),
            "model.threshold",
        ),
    ];
    for (name, text, key) in cases {
        let (code, err) = check(&format!("{name}.toml"), text);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(key), "{name}: {err}");
    }
}

/// The real binary under real signals: SIGHUP with a broken file keeps it running and logs
/// the line; SIGTERM stops it gracefully with a summary.
#[test]
fn sighup_with_a_bad_config_keeps_ustad_run_running() {
    let s = setup();
    let frames = replay_folder(&s.root, 2);
    let cfg_path = s.root.join("daemon.toml");
    // Debug level: every judged part is logged, so the test sees frames flowing.
    let good = config_text(&s, &frames, "", "[log]\nlevel = \"debug\"\n")
        .replace("fps = 100", "fps = 20\nloop = true")
        .replace("actuator = \"mock\"", "actuator = \"log-only\"");
    std::fs::write(&cfg_path, &good).expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ustad"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ustad run");
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    };
    // A SIGHUP while the bundle is still loading is queued, not fatal (its default action
    // used to kill the process in its first ~0.3 s).
    std::thread::sleep(Duration::from_millis(30));
    let early = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(early.success());
    wait_for("SIGHUP: reloading");
    wait_for("part 3 ");
    let bad = good.replace("delay_ms = 500", "delay_ms = 500\ndelay = 1");
    let line = line_of(&bad, "delay = 1");
    std::fs::write(&cfg_path, &bad).expect("bad");
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    };
    kill("-HUP");
    let log = wait_for("reload refused");
    assert!(
        log.contains(&format!(":{line}:")) && log.contains("reject.delay"),
        "{log}"
    );
    // Still judging parts after the refused reload.
    wait_for("part ");
    kill("-TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("stdout");
    assert!(out.contains("latency capture -> actuator"), "{out}");
    drop(rx);
    let _ = reader.join();
}

/// Writes a bundle with `edge-p33`'s students (p = 33, stride 4, 128×128, 3 students), a
/// random patch teacher and random weights to `$USTAD_STANDIN_BUNDLE`: its students cost what a
/// trained p = 33 bundle's students cost per frame, so `ustad run` latency can be measured
/// before training has finished.
///
/// `USTAD_STANDIN_BUNDLE=/tmp/standin cargo test -p ustad --test daemon -- --ignored standin`
#[test]
#[ignore = "tool: writes a stand-in bundle for latency measurements"]
fn write_standin_edge_bundle() {
    let Some(out) = std::env::var_os("USTAD_STANDIN_BUNDLE") else {
        eprintln!("set USTAD_STANDIN_BUNDLE to the folder to write");
        return;
    };
    let scales = vec![common::random_scale(33, 4, 3, 11)];
    let bundle = common::write_random_bundle(
        Path::new(&out),
        InputSpec::imagenet(128, 128),
        &scales,
        ImageScoreRule::default(),
        0.0,
    );
    eprintln!("wrote {}", bundle.dir.display());
}
