//! A folder of images played back as if a camera took them.
//!
//! This is how the daemon runs without hardware: in CI, on a laptop, and to re-check a day of
//! archived frames against a new model. Files are found recursively (JPEG and PNG, by
//! extension) and played in sorted path order, so a run is reproducible.
//!
//! A file that cannot be read or decoded is **not** skipped: it stands for a part, and the
//! pipeline must give that part the fail-safe verdict. `next_frame` returns an error naming
//! the file, and the following call moves on to the next file.
//!
//! With a fixed frame rate the source paces itself on its [`Clock`]; on a
//! [`crate::clock::ManualClock`] that pacing is simulated, so tests of timing run instantly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::capture::ReplayConfig;
use crate::capture::decode::{
    DEFAULT_MAX_PIXELS, decode_image_within, max_file_bytes, read_image_file,
};
use crate::capture::{CaptureError, Frame, FrameSource};
use crate::clock::{Clock, MonotonicClock, Timestamp};
use ustad_core::images::{self, IMAGE_EXTENSIONS};

/// Plays a folder of images as frames.
#[derive(Debug)]
pub struct ReplaySource<C: Clock = MonotonicClock> {
    root: PathBuf,
    files: Vec<PathBuf>,
    /// Index of the next file in `files`.
    index: usize,
    sequence: u64,
    period: Option<Duration>,
    looping: bool,
    clock: C,
    /// When the next frame is due (paced sources only, after the first frame).
    next_due: Option<Timestamp>,
    /// Largest frame decoded, in pixels.
    max_pixels: u64,
}

impl ReplaySource<MonotonicClock> {
    /// Lists the configured folder; paces on the real clock.
    pub fn open(config: &ReplayConfig) -> Result<Self, CaptureError> {
        Ok(Self::with_clock(
            &config.path,
            config.fps,
            config.looping,
            MonotonicClock::new(),
        )?
        .with_max_pixels(config.max_pixels))
    }
}

impl<C: Clock> ReplaySource<C> {
    /// Lists `root` recursively. `fps`: fixed frame rate, or `None` for as fast as frames are
    /// taken. `looping`: start over after the last file instead of ending the stream.
    pub fn with_clock(
        root: impl AsRef<Path>,
        fps: Option<f64>,
        looping: bool,
        clock: C,
    ) -> Result<Self, CaptureError> {
        let root = root.as_ref().to_path_buf();
        let period = match fps {
            None => None,
            Some(f) if f.is_finite() && f > 0.0 => Some(Duration::from_secs_f64(1.0 / f)),
            Some(f) => {
                return Err(CaptureError::Replay {
                    path: root,
                    message: format!("frame rate must be positive, got {f}"),
                });
            }
        };
        let files = list_images(&root)?;
        if files.is_empty() {
            return Err(CaptureError::Replay {
                path: root,
                message: format!(
                    "no images ({}) found in the folder or its sub-folders",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        Ok(ReplaySource {
            root,
            files,
            index: 0,
            sequence: 0,
            period,
            looping,
            clock,
            next_due: None,
            max_pixels: DEFAULT_MAX_PIXELS,
        })
    }

    /// Refuses frames larger than `max_pixels` (as corrupt frames) instead of
    /// [`DEFAULT_MAX_PIXELS`].
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The files that will be played, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Waits for the frame's slot when paced and returns its capture time.
    fn pace(&mut self) -> Timestamp {
        let Some(period) = self.period else {
            return self.clock.now();
        };
        if let Some(due) = self.next_due {
            self.clock.sleep_until(due);
        }
        let now = self.clock.now();
        // The nominal capture time is the slot, unless we are behind it. After a stall the
        // schedule restarts from now: a camera does not burst frames to catch up.
        let t = match self.next_due {
            Some(due) if due >= now => due,
            _ => now,
        };
        self.next_due = Some(t + period);
        t
    }
}

impl<C: Clock> FrameSource for ReplaySource<C> {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        if self.index >= self.files.len() {
            if !self.looping {
                return Ok(None);
            }
            self.index = 0;
        }
        let path = self.files[self.index].clone();
        self.index += 1;
        let sequence = self.sequence;
        self.sequence += 1;
        // Capture time first: reading and decoding are part of the latency, as decoding an
        // MJPEG frame is for a camera.
        let timestamp = self.pace();
        let bytes = read_image_file(&path, max_file_bytes(self.max_pixels)).map_err(|source| {
            CaptureError::ReadFile {
                path: path.clone(),
                sequence,
                timestamp,
                source,
            }
        })?;
        let origin = path.display().to_string();
        match decode_image_within(&bytes, self.max_pixels) {
            Ok(image) => Ok(Some(Frame {
                image,
                timestamp,
                sequence,
                origin,
            })),
            Err(source) => Err(CaptureError::CorruptFrame {
                origin,
                sequence,
                timestamp,
                source,
            }),
        }
    }

    fn describe(&self) -> String {
        let rate = self.period.map_or("unpaced".to_string(), |p| {
            format!("{:.2} fps", 1.0 / p.as_secs_f64())
        });
        format!(
            "replay of {} images from {} ({rate}{})",
            self.files.len(),
            self.root.display(),
            if self.looping { ", looping" } else { "" }
        )
    }

    /// Paced: frames are due at their slots as a camera's are. Unpaced: a frame waits until
    /// it is asked for.
    fn real_time(&self) -> bool {
        self.period.is_some()
    }
}

/// All image files under `root` (the one walker of [`ustad_core::images`]: recursive, sorted by
/// path, hidden entries and non-regular files left out).
fn list_images(root: &Path) -> Result<Vec<PathBuf>, CaptureError> {
    let replay_error = |message: String| CaptureError::Replay {
        path: root.to_path_buf(),
        message,
    };
    match std::fs::metadata(root) {
        Err(e) => return Err(replay_error(format!("cannot open: {e}"))),
        Ok(meta) if !meta.is_dir() => return Err(replay_error("is not a folder".into())),
        Ok(_) => {}
    }
    images::collect_images(&[root.to_path_buf()]).map_err(|e| replay_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use image::{Rgb, RgbImage};

    fn write_png(path: &Path, shade: u8) {
        RgbImage::from_pixel(8, 6, Rgb([shade, shade / 2, 255 - shade]))
            .save(path)
            .expect("write png");
    }

    fn write_jpeg(path: &Path) -> Vec<u8> {
        let img = RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, 128]));
        img.save(path).expect("write jpeg");
        std::fs::read(path).expect("read back")
    }

    /// a/1.png, a/2.jpg, b/c/3.png, b/0.PNG, notes.txt, .hidden.png
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::create_dir_all(p.join("a")).expect("mkdir");
        std::fs::create_dir_all(p.join("b/c")).expect("mkdir");
        write_png(&p.join("a/1.png"), 10);
        write_jpeg(&p.join("a/2.jpg"));
        write_png(&p.join("b/c/3.png"), 30);
        write_png(&p.join("b/0.PNG"), 40);
        std::fs::write(p.join("notes.txt"), "not an image").expect("write");
        write_png(&p.join(".hidden.png"), 50);
        dir
    }

    fn names(src: &ReplaySource<impl Clock>, root: &Path) -> Vec<String> {
        src.files()
            .iter()
            .map(|f| {
                f.strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect()
    }

    /// Over the configured limit a frame is a corrupt frame (a part for the fail-safe), and
    /// the next one still plays.
    #[test]
    fn frames_over_the_pixel_limit_are_corrupt_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        RgbImage::new(100, 100)
            .save(dir.path().join("0-big.png"))
            .expect("write");
        write_png(&dir.path().join("1-small.png"), 20);
        let mut src = ReplaySource::with_clock(dir.path(), None, false, ManualClock::default())
            .expect("open")
            .with_max_pixels(8 * 6);
        match src.next_frame() {
            Err(CaptureError::CorruptFrame {
                sequence: 0,
                source: crate::capture::DecodeError::TooLarge { width: 100, .. },
                ..
            }) => {}
            other => panic!("expected a too-large frame, got {other:?}"),
        }
        let frame = src.next_frame().expect("small frame").expect("not the end");
        assert_eq!(frame.image.dimensions(), (8, 6));
    }

    #[test]
    fn recurses_in_sorted_order_and_ends() {
        let dir = folder();
        let clock = ManualClock::new(Timestamp::from_millis(1000));
        let mut src = ReplaySource::with_clock(dir.path(), None, false, clock).expect("open");
        assert_eq!(
            names(&src, dir.path()),
            ["a/1.png", "a/2.jpg", "b/0.PNG", "b/c/3.png"]
        );
        let mut seen = Vec::new();
        while let Some(frame) = src.next_frame().expect("frame") {
            assert_eq!(frame.sequence, seen.len() as u64);
            seen.push(frame.origin.clone());
            assert!(frame.image.width() > 0);
        }
        assert_eq!(seen.len(), 4);
        assert!(seen[1].ends_with("2.jpg"));
        // The end is final.
        assert!(src.next_frame().expect("end").is_none());
    }

    #[test]
    fn fixed_rate_paces_on_the_clock() {
        let dir = folder();
        let clock = ManualClock::new(Timestamp::from_millis(1000));
        let mut src =
            ReplaySource::with_clock(dir.path(), Some(20.0), true, clock.clone()).expect("open");
        let mut stamps = Vec::new();
        for _ in 0..6 {
            stamps.push(src.next_frame().expect("frame").expect("looping").timestamp);
        }
        let expected: Vec<_> = (0..6)
            .map(|i| Timestamp::from_millis(1000 + 50 * i))
            .collect();
        assert_eq!(stamps, expected);
        assert_eq!(clock.now(), Timestamp::from_millis(1250));

        // A slow consumer: no burst afterwards, the schedule restarts from now.
        clock.advance(Duration::from_millis(500));
        let late = src.next_frame().expect("frame").expect("frame").timestamp;
        assert_eq!(late, Timestamp::from_millis(1750));
        let next = src.next_frame().expect("frame").expect("frame").timestamp;
        assert_eq!(next, Timestamp::from_millis(1800));
    }

    #[test]
    fn loops_with_increasing_sequence() {
        let dir = folder();
        let clock = ManualClock::default();
        let mut src = ReplaySource::with_clock(dir.path(), None, true, clock).expect("open");
        let origins: Vec<_> = (0..9)
            .map(|_| src.next_frame().expect("ok").expect("frame"))
            .map(|f| (f.sequence, f.origin))
            .collect();
        assert_eq!(origins[8].0, 8);
        assert_eq!(origins[0].1, origins[4].1);
        assert_eq!(origins[0].1, origins[8].1);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it_and_the_stream_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        write_png(&p.join("0.png"), 1);
        let jpeg = write_jpeg(&p.join("1.jpg"));
        std::fs::write(p.join("1.jpg"), &jpeg[..jpeg.len() / 2]).expect("truncate");
        let png = std::fs::read(p.join("0.png")).expect("read");
        std::fs::write(p.join("2.png"), &png[..png.len() - 20]).expect("truncated png");
        write_png(&p.join("3.png"), 3);

        let clock = ManualClock::new(Timestamp::from_millis(5));
        let mut src = ReplaySource::with_clock(p, Some(10.0), false, clock).expect("open");
        assert_eq!(src.next_frame().expect("ok").expect("frame").sequence, 0);
        for (seq, name) in [(1, "1.jpg"), (2, "2.png")] {
            let e = src
                .next_frame()
                .expect_err("truncated file must not decode");
            let msg = e.to_string();
            assert!(msg.contains(name), "{msg}");
            let (s, t, origin) = e.failed_frame().expect("frame-level error");
            assert_eq!(s, seq);
            assert_eq!(t, Timestamp::from_millis(5 + 100 * seq));
            assert!(origin.ends_with(name));
            assert!(e.is_transient());
        }
        let last = src.next_frame().expect("ok").expect("frame");
        assert_eq!(last.sequence, 3);
        assert!(src.next_frame().expect("end").is_none());
    }

    #[test]
    fn truncated_mtd_jpeg_is_refused() {
        let sample = ustad_core::testing::shared_path("data/mtd/test/good/exp0_num_743.jpg");
        let data = std::fs::read(sample).expect("MTD sample");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cut.jpg"), &data[..data.len() * 3 / 4]).expect("write");
        let mut src = ReplaySource::with_clock(dir.path(), None, false, ManualClock::default())
            .expect("open");
        let e = src.next_frame().expect_err("truncated");
        assert!(matches!(e, CaptureError::CorruptFrame { .. }), "{e}");
        assert!(e.to_string().contains("cut.jpg"), "{e}");
    }

    #[test]
    fn empty_or_missing_folder_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = ReplaySource::with_clock(dir.path(), None, false, ManualClock::default())
            .expect_err("empty");
        assert!(e.to_string().contains("no images"), "{e}");
        assert!(!e.is_transient());
        let e =
            ReplaySource::with_clock(dir.path().join("nope"), None, false, ManualClock::default())
                .expect_err("missing");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn plays_the_mtd_test_split() {
        let root = ustad_core::testing::shared_path("data/mtd/test");
        let cfg = ReplayConfig {
            path: root.clone(),
            fps: None,
            looping: false,
            max_pixels: DEFAULT_MAX_PIXELS,
        };
        let src = ReplaySource::open(&cfg).expect("MTD test split");
        assert!(src.files().len() > 100);
        assert!(src.files().windows(2).all(|w| w[0] < w[1]));
        assert!(src.files().iter().any(|f| f.starts_with(root.join("good"))));
        assert!(src.describe().contains("replay of"));
    }
}
