//! Frame sources: where images of parts come from.
//!
//! Every source sits behind [`FrameSource`] so the pipeline does not care whether frames come
//! from a V4L2 camera ([`v4l2`], Linux, feature `v4l2`), a folder of images ([`replay`]), or
//! later libcamera (Pi CSI cameras). Every frame carries a [`Timestamp`] on the monotonic
//! clock of [`crate::clock`], taken as close to the exposure as the source allows (the
//! kernel's buffer timestamp for V4L2), because the reject pulse is timed from it.
//!
//! Errors distinguish a *part-level* failure ([`CaptureError::CorruptFrame`]: a frame arrived
//! but is unusable, so that part gets the fail-safe verdict) from *source-level* failures
//! (timeout, camera gone), which the pipeline counts and the V4L2 source recovers from by
//! reconnecting.

pub mod decode;
pub mod replay;
mod settings;
#[cfg(all(feature = "v4l2", target_os = "linux"))]
pub mod v4l2;

use std::path::PathBuf;
use std::time::Duration;

use image::RgbImage;

use crate::clock::Timestamp;
pub use settings::{CameraConfig, Exposure, PixelFormat, ReplayConfig, V4l2Config};

pub use decode::DecodeError;
pub use replay::ReplaySource;

/// One image of (possibly) one part.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The image, RGB 8-bit.
    pub image: RgbImage,
    /// Capture time on the daemon's monotonic clock.
    pub timestamp: Timestamp,
    /// Position in the source's stream, counting from 0; gaps mean dropped frames.
    pub sequence: u64,
    /// Where the frame came from: a file path or a device path.
    pub origin: String,
}

/// Why a source produced no frame.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A frame arrived but cannot be used (truncated or corrupt data). The part it shows must
    /// get the fail-safe verdict; the source itself is fine and goes on.
    #[error("frame {sequence} from {origin} is unusable: {source}")]
    CorruptFrame {
        /// File or device the frame came from.
        origin: String,
        /// Its sequence number.
        sequence: u64,
        /// Its capture time.
        timestamp: Timestamp,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// A file of a replay source could not be read.
    #[error("cannot read frame {sequence} from {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Its sequence number.
        sequence: u64,
        /// Its (nominal) capture time.
        timestamp: Timestamp,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No frame arrived in time.
    #[error("no frame from {device} within {} ms", timeout.as_millis())]
    Timeout {
        /// The device.
        device: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The camera went away (unplugged, USB reset) or could not be opened. The V4L2 source
    /// reopens it with back-off on the following calls.
    #[error("camera {device} unavailable ({context}): {source}")]
    Disconnected {
        /// The device.
        device: String,
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The camera does not do what the configuration asks (format, size, control).
    #[error("camera {device}: {message}")]
    Unsupported {
        /// The device.
        device: String,
        /// What is not supported.
        message: String,
    },
    /// A replay folder could not be listed or holds no images.
    #[error("replay source {}: {message}", path.display())]
    Replay {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// This build cannot open the configured source.
    #[error("{0}")]
    NotAvailable(String),
}

impl CaptureError {
    /// For errors about one frame (the part exists but cannot be judged): its sequence
    /// number, capture time and origin, so the pipeline can apply the fail-safe policy to it.
    pub fn failed_frame(&self) -> Option<(u64, Timestamp, String)> {
        match self {
            CaptureError::CorruptFrame {
                origin,
                sequence,
                timestamp,
                ..
            } => Some((*sequence, *timestamp, origin.clone())),
            CaptureError::ReadFile {
                path,
                sequence,
                timestamp,
                ..
            } => Some((*sequence, *timestamp, path.display().to_string())),
            _ => None,
        }
    }

    /// Whether the source may deliver frames again after this error (the frame loop should
    /// keep calling `next_frame`); `false` means the configuration or build must change.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            CaptureError::Unsupported { .. }
                | CaptureError::Replay { .. }
                | CaptureError::NotAvailable(_)
        )
    }
}

/// A stream of frames.
///
/// `next_frame` blocks until the next frame (paced sources) or until an error;
/// `Ok(None)` means the stream has ended for good (a replay folder played to its end) and the
/// daemon should stop after draining its pipeline.
pub trait FrameSource: Send {
    /// The next frame, `Ok(None)` at the end of the stream, or why there is none now.
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError>;

    /// A short human description for logs and `/status` (device path, folder).
    fn describe(&self) -> String;

    /// Whether frames come on the line's clock whether or not they are taken (a camera, a
    /// paced replay). The capture thread then never waits for inference: a part that finds
    /// the queue full gets the fail-safe at once. A source that only yields frames when asked
    /// (an unpaced replay folder) loses nothing by waiting, so it is throttled instead.
    fn real_time(&self) -> bool {
        true
    }
}

impl<S: FrameSource + ?Sized> FrameSource for Box<S> {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        (**self).next_frame()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    fn real_time(&self) -> bool {
        (**self).real_time()
    }
}

/// Opens the source the configuration describes, on the real monotonic clock.
pub fn open(config: &CameraConfig) -> Result<Box<dyn FrameSource>, CaptureError> {
    match config {
        CameraConfig::Replay(r) => Ok(Box::new(ReplaySource::open(r)?)),
        #[cfg(all(feature = "v4l2", target_os = "linux"))]
        CameraConfig::V4l2(v) => Ok(Box::new(v4l2::V4l2Source::open(v.clone())?)),
        #[cfg(not(all(feature = "v4l2", target_os = "linux")))]
        CameraConfig::V4l2(v) => Err(CaptureError::NotAvailable(format!(
            "camera {}: this build has no V4L2 support (Linux with cargo feature `v4l2`)",
            v.device.display()
        ))),
    }
}

/// Exponential back-off between reconnect attempts: `initial`, doubling up to `max`.
///
/// Reopening a camera that is still gone costs little, but doing it in a tight loop floods the
/// log and the USB bus; waiting too long after it is back loses parts. Doubling up to a few
/// seconds is the usual compromise.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A back-off starting at `initial` and growing to at most `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The wait before the next attempt; each call doubles the following one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        d
    }

    /// Back to `initial`, after a successful reconnect.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700, 700]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn frame_errors_carry_the_part() {
        let e = CaptureError::CorruptFrame {
            origin: "/dev/video0".into(),
            sequence: 7,
            timestamp: Timestamp::from_millis(3),
            source: DecodeError::Jpeg("truncated".into()),
        };
        assert_eq!(
            e.failed_frame(),
            Some((7, Timestamp::from_millis(3), "/dev/video0".to_string()))
        );
        assert!(e.is_transient());
        let t = CaptureError::Timeout {
            device: "/dev/video0".into(),
            timeout: Duration::from_millis(1000),
        };
        assert_eq!(t.failed_frame(), None);
        assert!(t.is_transient());
        assert!(t.to_string().contains("1000 ms"));
    }
}
