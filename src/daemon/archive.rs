//! The archive: one JSON line per part, and the rejected frames as heatmap overlays.
//!
//! It answers "why was this part kicked off?" the next morning, and its frames are the raw
//! material for retraining from mistakes. It lives on a small disk (an SD card on a Pi), so it
//! has a byte budget: when a write takes it over `max_bytes`, the oldest archive files are
//! deleted first. JSON lines go to `ustad-parts-*.jsonl` files rotated every
//! `max_bytes / 16`, so old records can be deleted in pieces like the images.
//!
//! File names start with a zero-padded wall-clock time in milliseconds, so sorting names is
//! sorting by age, also across restarts, and only files named `ustad-*` are ever deleted: the
//! folder may hold other things.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image::RgbImage;
use serde::Serialize;

use crate::config::ArchiveConfig;
use ustad_core::judge::decide::Verdict;
use ustad_core::judge::heatmap;

/// Smallest rotation size of the JSON-lines files, so a tiny budget does not mean one file
/// per part.
const MIN_ROTATE_BYTES: u64 = 16 * 1024;
/// Images are written under this prefix and renamed into place once complete.
const TEMP_PREFIX: &str = ".tmp-ustad-";

/// Cuts a parts log back to its last complete line (a crash can leave half a record), so that
/// appends and readers only ever see whole records. Returns the length kept.
fn repair_log(path: &Path, len: u64) -> Result<u64, ArchiveError> {
    let data = fs::read(path).map_err(io_err(path))?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) as u64;
    if keep < len {
        log::warn!(
            "archive {}: dropped an incomplete last record ({} bytes)",
            path.display(),
            len - keep
        );
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(keep))
            .map_err(io_err(path))?;
    }
    Ok(keep)
}

/// Is this the file system saying it is full (or over quota)?
fn is_full(e: &ArchiveError) -> bool {
    matches!(e, ArchiveError::Io { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
}

/// Why the archive could not write.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// File-system trouble.
    #[error("archive {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The overlay PNG could not be written.
    #[error("archive {}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The error.
        source: image::ImageError,
    },
    /// A record could not be serialised (cannot happen with finite numbers).
    #[error("archive record: {0}")]
    Json(#[from] serde_json::Error),
}

/// Latencies of one part, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Timings {
    /// Capture → verdict.
    pub verdict_ms: f64,
    /// Capture → actuator command.
    pub actuator_ms: f64,
    /// Scoring engine time, when it ran.
    pub inference_ms: Option<f64>,
}

/// One line of the parts log.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PartRecord {
    /// Part number (frame sequence in free-run, trigger count with a part sensor).
    pub part: u64,
    /// Sequence number of the frame that showed it, if there was one.
    pub sequence: Option<u64>,
    /// Where the frame came from (file or device).
    pub origin: String,
    /// Capture (or trigger) time on the daemon's monotonic clock, seconds.
    pub captured_s: f64,
    /// Wall-clock time of the decision, milliseconds since the Unix epoch.
    pub decided_unix_ms: u64,
    /// What happened to the part; written as `pass`, `reject`, `failsafe_reject` or
    /// `failsafe_pass`.
    pub verdict: Verdict,
    /// Image score, when judged.
    pub score: Option<f32>,
    /// Threshold in force.
    pub threshold: f32,
    /// Why it was not judged (fail-safe verdicts).
    pub reason: Option<String>,
    /// Details of the failure, for people.
    pub detail: Option<String>,
    /// Latencies.
    pub timings: Timings,
    /// File name of the overlay PNG in the archive folder, when one was kept.
    pub image: Option<String>,
}

/// What a rejected part's overlay is made of.
#[derive(Debug, Clone)]
pub struct OverlaySource {
    /// The judged region at the bundle's input size.
    pub image: std::sync::Arc<RgbImage>,
    /// Its anomaly map.
    pub map: std::sync::Arc<Vec<f32>>,
    /// Map width.
    pub map_width: usize,
    /// Map height.
    pub map_height: usize,
    /// Threshold in force (sets the colour scale).
    pub threshold: f32,
}

/// Renders the overlay the live page and the archive show, on the colour scale of
/// [`heatmap::overlay_at_threshold`].
pub fn render_overlay(src: &OverlaySource) -> RgbImage {
    if src.map.is_empty() || src.map.len() != src.map_width * src.map_height {
        return (*src.image).clone();
    }
    heatmap::overlay_at_threshold(
        &src.image,
        &src.map,
        src.map_width,
        src.map_height,
        src.threshold,
    )
}

/// The archive folder with its byte budget.
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    max_bytes: u64,
    keep_rejected: bool,
    rotate_bytes: u64,
    /// Our files, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
    total: u64,
    /// The JSON-lines file being appended to.
    current: Option<(PathBuf, File)>,
    /// Disambiguates files created within the same millisecond.
    counter: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Archive {
    /// Creates the folder if needed and takes stock of the archive files already there, so
    /// the budget holds across restarts.
    pub fn open(config: &ArchiveConfig) -> Result<Self, ArchiveError> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&config.dir).map_err(io_err(&config.dir))? {
            let entry = entry.map_err(io_err(&config.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                // An image whose write was interrupted (crash, full disk): never a record's.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            if !name.starts_with("ustad-") {
                continue;
            }
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            if meta.is_file() {
                let len = if name.ends_with(".jsonl") {
                    repair_log(&entry.path(), meta.len())?
                } else {
                    meta.len()
                };
                found.push((name, entry.path(), len));
            }
        }
        // Names start with the zero-padded creation time: name order is age order.
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let total = found.iter().map(|f| f.2).sum();
        let mut archive = Archive {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            keep_rejected: config.keep_rejected,
            rotate_bytes: (config.max_bytes / 16).max(MIN_ROTATE_BYTES),
            files: found.into_iter().map(|(_, p, n)| (p, n)).collect(),
            total,
            current: None,
            counter: 0,
        };
        archive.enforce_budget()?;
        Ok(archive)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of archive files on disk.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    fn new_name(&mut self, kind: &str, suffix: &str) -> String {
        self.counter += 1;
        format!("ustad-{:013}-{:06}-{kind}{suffix}", unix_ms(), self.counter)
    }

    /// Writes a part's record, and its overlay when it was rejected and frames are kept.
    pub fn record(
        &mut self,
        mut record: PartRecord,
        overlay: Option<&OverlaySource>,
    ) -> Result<(), ArchiveError> {
        if let Some(src) = overlay.filter(|_| self.keep_rejected) {
            let stem = Path::new(&record.origin)
                .file_stem()
                .map(|s| sanitize(&s.to_string_lossy()))
                .unwrap_or_default();
            let name = self.new_name(&format!("part{}-{stem}", record.part), ".png");
            let mut png = Vec::new();
            render_overlay(src)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|source| ArchiveError::Image {
                    path: self.dir.join(&name),
                    source,
                })?;
            self.retrying_when_full(|a| a.write_whole_file(&name, &png))?;
            record.image = Some(name);
        }
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        self.retrying_when_full(|a| a.append_line(&line))?;
        self.enforce_budget()
    }

    /// Runs `write`; when the disk is full, deletes the oldest archive files (never the log
    /// being appended to) one at a time and tries again, so a full disk costs old records,
    /// not new ones.
    fn retrying_when_full(
        &mut self,
        mut write: impl FnMut(&mut Self) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        loop {
            match write(self) {
                Err(e) if is_full(&e) && self.evict_oldest()? => {
                    log::warn!("archive full on disk ({e}): deleted the oldest file, retrying")
                }
                other => return other,
            }
        }
    }

    /// Deletes the oldest archive file other than the current log; false when none is left.
    fn evict_oldest(&mut self) -> Result<bool, ArchiveError> {
        let current = self.current.as_ref().map(|(p, _)| p.clone());
        let Some(index) = self
            .files
            .iter()
            .position(|(p, _)| Some(p) != current.as_ref())
        else {
            return Ok(false);
        };
        let Some((path, size)) = self.files.remove(index) else {
            return Ok(false);
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        self.total -= size;
        Ok(true)
    }

    /// Writes `data` as `name`, whole or not at all: into a temporary name first, renamed into
    /// place once complete, the temporary removed on failure.
    fn write_whole_file(&mut self, name: &str, data: &[u8]) -> Result<(), ArchiveError> {
        let path = self.dir.join(name);
        let temp = self.dir.join(format!("{TEMP_PREFIX}{name}"));
        let written = File::create(&temp)
            .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_data()))
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_err(&path)(e));
        }
        self.files.push_back((path, data.len() as u64));
        self.total += data.len() as u64;
        Ok(())
    }

    fn append_line(&mut self, line: &[u8]) -> Result<(), ArchiveError> {
        let current_size = self
            .current
            .as_ref()
            .and_then(|(p, _)| self.files.iter().find(|(q, _)| q == p).map(|f| f.1));
        if current_size.is_none_or(|n| n + line.len() as u64 > self.rotate_bytes) {
            let name = self.new_name("parts", ".jsonl");
            let path = self.dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.files.push_back((path.clone(), 0));
            self.current = Some((path, file));
        }
        let Some((path, file)) = self.current.as_mut() else {
            return Ok(());
        };
        let before = self
            .files
            .iter()
            .find(|(p, _)| p == path)
            .map_or(0, |f| f.1);
        if let Err(e) = file.write_all(line) {
            // A complete line or nothing: cut off whatever part of it reached the file, so
            // the next record does not glue onto half of this one.
            let _ = file.set_len(before);
            return Err(io_err(path)(e));
        }
        let n = line.len() as u64;
        if let Some(entry) = self.files.iter_mut().find(|(p, _)| p == path) {
            entry.1 += n;
        }
        self.total += n;
        Ok(())
    }

    /// Deletes the oldest files until the archive fits its budget. The file being appended to
    /// is closed first when it is the one to go.
    fn enforce_budget(&mut self) -> Result<(), ArchiveError> {
        while self.total > self.max_bytes {
            let Some((path, size)) = self.files.pop_front() else {
                break;
            };
            if self.current.as_ref().is_some_and(|(p, _)| *p == path) {
                self.current = None;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            self.total -= size;
            log::debug!("archive: deleted {} ({size} bytes)", path.display());
        }
        Ok(())
    }
}

/// Keeps file names portable: letters, digits, `-`, `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect()
}

/// Reads every record of the parts logs in `dir`, oldest first (tests, tooling).
pub fn read_records(dir: &Path) -> Result<Vec<PartRecord>, ArchiveError> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ustad-") && n.ends_with(".jsonl"))
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(part: u64) -> PartRecord {
        PartRecord {
            part,
            sequence: Some(part),
            origin: format!("/data/part {part}.jpg"),
            captured_s: part as f64,
            decided_unix_ms: 0,
            verdict: Verdict::Reject,
            score: Some(2.0),
            threshold: 1.0,
            reason: None,
            detail: None,
            timings: Timings {
                verdict_ms: 1.0,
                actuator_ms: 1.0,
                inference_ms: Some(0.5),
            },
            image: None,
        }
    }

    fn overlay() -> OverlaySource {
        OverlaySource {
            image: Arc::new(RgbImage::from_pixel(64, 64, image::Rgb([90, 90, 90]))),
            map: Arc::new((0..64 * 64).map(|i| (i % 64) as f32 / 32.0).collect()),
            map_width: 64,
            map_height: 64,
            threshold: 1.0,
        }
    }

    #[test]
    fn records_and_images_are_written_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ArchiveConfig {
            dir: dir.path().join("a"),
            max_bytes: 10 << 20,
            keep_rejected: true,
        };
        let mut a = Archive::open(&cfg).expect("open");
        let src = overlay();
        a.record(record(0), Some(&src)).expect("record");
        a.record(record(1), None).expect("record");
        let back = read_records(&cfg.dir).expect("read");
        assert_eq!(back.len(), 2);
        let image = back[0].image.as_ref().expect("image name");
        assert!(image.ends_with("-part0-part_0.png"), "{image}");
        assert!(cfg.dir.join(image).is_file());
        assert_eq!(back[1].image, None);
    }

    #[test]
    fn oldest_files_go_when_over_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ArchiveConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 40 * 1024,
            keep_rejected: true,
        };
        // A foreign file is never touched.
        fs::write(dir.path().join("notes.txt"), vec![b'x'; 100 * 1024]).expect("write");
        let mut a = Archive::open(&cfg).expect("open");
        let src = overlay();
        for part in 0..200 {
            a.record(record(part), Some(&src)).expect("record");
            assert!(a.bytes() <= cfg.max_bytes, "{} bytes", a.bytes());
        }
        let on_disk = archive_bytes_on_disk(dir.path());
        assert_eq!(on_disk, a.bytes());
        assert!(dir.path().join("notes.txt").is_file());
        // The newest records survive, the oldest are gone.
        let back = read_records(dir.path()).expect("read");
        assert_eq!(back.last().map(|r| r.part), Some(199));
        assert!(back.first().map_or(0, |r| r.part) > 0);
        // Reopening takes stock and keeps the budget.
        let again = Archive::open(&cfg).expect("reopen");
        assert_eq!(again.bytes(), on_disk);
    }

    /// On a real 1 MiB tmpfs, far smaller than the configured budget: the disk fills, old
    /// files are evicted to make room, and what stays is only whole records and whole images.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_full_disk_leaves_only_whole_records_and_recovers() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(mount.success(), "mount a tmpfs");
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let cfg = ArchiveConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 64 << 20,
            keep_rejected: true,
        };
        let mut a = Archive::open(&cfg).expect("open");
        // Noise images compress badly: each overlay is tens of KB.
        let mut src = overlay();
        let mut rng = ustad_core::testing::SplitMix64(1);
        src.image = Arc::new(RgbImage::from_fn(128, 128, |_, _| {
            let [r, g, b, ..] = rng.next_u64().to_le_bytes();
            image::Rgb([r, g, b])
        }));
        let mut failed = 0;
        for part in 0..108 {
            if a.record(record(part), Some(&src)).is_err() {
                failed += 1;
            }
        }
        // Eviction made room every time: nothing was lost, and the newest part is there.
        assert_eq!(failed, 0, "records lost on a full disk");
        let back = read_records(dir.path()).expect("every line is a whole record");
        assert_eq!(back.last().map(|r| r.part), Some(107));
        let kept = |r: &PartRecord| {
            r.image
                .as_ref()
                .is_some_and(|n| dir.path().join(n).is_file())
        };
        assert!(
            !kept(&back[0]) && back.last().is_some_and(kept),
            "the disk filled: the oldest images were evicted, the newest kept"
        );
        for entry in fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(TEMP_PREFIX),
                "temporary left behind: {name}"
            );
            if name.ends_with(".png") {
                image::open(entry.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        // The accounting is what is on disk.
        let on_disk = archive_bytes_on_disk(dir.path());
        assert_eq!(on_disk, a.bytes());
        // A log cut mid-line by a crash is repaired on open.
        let log = back_log(dir.path());
        let mut f = OpenOptions::new().append(true).open(&log).expect("log");
        f.write_all(b"{\"part\": 9").expect("half a record");
        drop(f);
        let reopened = Archive::open(&cfg).expect("reopen");
        assert!(read_records(dir.path()).is_ok());
        drop(reopened);
    }

    /// Bytes of the archive's own files in `dir`, as the file system counts them.
    fn archive_bytes_on_disk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("ustad-"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    fn back_log(dir: &Path) -> PathBuf {
        let mut logs: Vec<PathBuf> = fs::read_dir(dir)
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        logs.sort();
        logs.pop().expect("a parts log")
    }
}
