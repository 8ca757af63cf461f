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
use crate::heatmap;

/// Smallest rotation size of the JSON-lines files, so a tiny budget does not mean one file
/// per part.
const MIN_ROTATE_BYTES: u64 = 16 * 1024;

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
    /// `pass`, `reject`, `failsafe_reject` or `failsafe_pass`.
    pub verdict: String,
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

/// Renders the overlay the live page and the archive show: cool below a third of the
/// threshold, red from 1.5× the threshold, so the threshold sits in the yellow.
pub fn render_overlay(src: &OverlaySource) -> RgbImage {
    if src.map.is_empty() || src.map.len() != src.map_width * src.map_height {
        return (*src.image).clone();
    }
    let t = if src.threshold.is_finite() && src.threshold > 0.0 {
        src.threshold
    } else {
        1.0
    };
    heatmap::overlay(
        &src.image,
        &src.map,
        src.map_width,
        src.map_height,
        t / 3.0,
        t * 1.5,
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
            if !name.starts_with("ustad-") {
                continue;
            }
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            if meta.is_file() {
                found.push((name, entry.path(), meta.len()));
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
            let path = self.dir.join(&name);
            render_overlay(src)
                .save(&path)
                .map_err(|source| ArchiveError::Image {
                    path: path.clone(),
                    source,
                })?;
            let size = fs::metadata(&path).map_err(io_err(&path))?.len();
            self.files.push_back((path, size));
            self.total += size;
            record.image = Some(name);
        }
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        self.append_line(&line)?;
        self.enforce_budget()
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
        file.write_all(line).map_err(io_err(path))?;
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
            verdict: "reject".into(),
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
        let on_disk: u64 = fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("ustad-"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
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
}
