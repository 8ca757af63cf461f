//! V4L2 cameras (USB/UVC and most industrial USB cameras), mmap streaming.
//!
//! What this source does that a naive capture loop does not, and why:
//!
//! - **Slices each buffer to `bytesused`.** mmap buffers are sized for the worst case; an MJPEG
//!   frame fills only part of one, and the stale tail of an earlier, larger frame must not be
//!   fed to the decoder.
//! - **Kernel timestamps.** A buffer's timestamp (`CLOCK_MONOTONIC`, taken by the driver at the
//!   end or start of exposure) is the part's capture time; reading the clock after the
//!   dequeue would add the USB transfer and queueing jitter to the reject timing.
//! - **Timeout.** A dequeue that waits forever would stall the frame loop and its watchdog
//!   pings; after `timeout` the source reports [`CaptureError::Timeout`], and after a few in a
//!   row it reopens the device.
//! - **Reconnect with back-off.** Cameras get unplugged, USB hubs reset. When the device fails,
//!   it is closed and reopened on later calls with exponential back-off; each call blocks at
//!   most about `timeout`, so the frame loop stays alive meanwhile.
//! - **Checks the negotiated format.** Drivers silently substitute sizes and formats they
//!   prefer; a model judging an unexpected resolution is worse than a clear error.
//! - **Corrupt buffers** (`V4L2_BUF_FLAG_ERROR`, empty, undecodable) become
//!   [`CaptureError::CorruptFrame`] so the part gets the fail-safe verdict.

use std::io;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use v4l::buffer::{Flags, Type};
use v4l::control::{Control, Value};
use v4l::format::{Format, FourCC};
use v4l::fraction::Fraction;
use v4l::io::traits::CaptureStream;
use v4l::prelude::*;
use v4l::video::Capture;
use v4l::video::capture::Parameters;

use crate::capture::decode::{decode_jpeg_within, yuyv_to_rgb};
use crate::capture::{Backoff, CaptureError, DecodeError, Frame, FrameSource};
use crate::capture::{Exposure, PixelFormat, V4l2Config};
use crate::clock::{Clock, MonotonicClock, Timestamp};

/// `V4L2_CID_EXPOSURE_AUTO` (camera class base + 1), a menu control.
const CID_EXPOSURE_AUTO: u32 = 0x009a_0901;
/// `V4L2_CID_EXPOSURE_ABSOLUTE` (camera class base + 2), in units of 100 µs.
const CID_EXPOSURE_ABSOLUTE: u32 = 0x009a_0902;
/// `V4L2_CID_GAIN` (user class base + 19).
const CID_GAIN: u32 = 0x0098_0913;
/// `V4L2_EXPOSURE_MANUAL`.
const EXPOSURE_MANUAL: i64 = 1;
/// `V4L2_EXPOSURE_APERTURE_PRIORITY`: auto exposure at a fixed iris, what UVC cameras offer.
const EXPOSURE_APERTURE_PRIORITY: i64 = 3;
/// `V4L2_EXPOSURE_AUTO`.
const EXPOSURE_AUTO: i64 = 0;
/// Consecutive timeouts after which the device is reopened (a hung camera often recovers).
const TIMEOUTS_BEFORE_REOPEN: u32 = 3;

/// The FourCC the driver uses for a pixel format.
pub fn fourcc(format: PixelFormat) -> FourCC {
    match format {
        PixelFormat::Mjpeg => FourCC::new(b"MJPG"),
        PixelFormat::Yuyv => FourCC::new(b"YUYV"),
    }
}

/// Normalises a control name the way `v4l2-ctl --list-ctrls` prints it:
/// `"White Balance, Automatic"` → `white_balance_automatic`.
pub fn control_key(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// Frame interval for a frame rate, as the fraction V4L2 wants (seconds per frame).
pub fn frame_interval(fps: f64) -> Fraction {
    // Millisecond-frames resolution: 7.5 fps -> 1000/7500; the driver picks its nearest.
    let denom = (fps * 1000.0).round().clamp(1.0, f64::from(u32::MAX)) as u32;
    Fraction::new(1000, denom)
}

/// The capture time of a buffer: its kernel timestamp when it is on `CLOCK_MONOTONIC` (the
/// daemon's clock), else `fallback` (the time of the dequeue).
pub fn buffer_timestamp(
    flags: Flags,
    ts: v4l::timestamp::Timestamp,
    fallback: Timestamp,
) -> Timestamp {
    let monotonic = (flags & Flags::TIMESTAMP_MASK) == Flags::TIMESTAMP_MONOTONIC;
    let (Ok(sec), Ok(usec)) = (u64::try_from(ts.sec), u64::try_from(ts.usec)) else {
        return fallback;
    };
    if !monotonic || (sec == 0 && usec == 0) {
        return fallback;
    }
    Timestamp::from_duration(Duration::from_secs(sec) + Duration::from_micros(usec))
}

/// An open, streaming device.
struct Connection {
    // Declared first so it is dropped (STREAMOFF, unmap) before the device is closed.
    stream: MmapStream<'static>,
    _device: Device,
    format: Format,
    last_kernel_sequence: Option<u32>,
}

/// A V4L2 camera as a [`FrameSource`].
pub struct V4l2Source<C: Clock = MonotonicClock> {
    config: V4l2Config,
    name: String,
    clock: C,
    connection: Option<Connection>,
    backoff: Backoff,
    /// Earliest time of the next reconnect attempt.
    retry_at: Option<Timestamp>,
    sequence: u64,
    timeouts_in_a_row: u32,
}

impl std::fmt::Debug for V4l2Source<MonotonicClock> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Source")
            .field("device", &self.name)
            .field("connected", &self.connection.is_some())
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl V4l2Source<MonotonicClock> {
    /// Opens and configures the camera now, so configuration errors (format, size, controls)
    /// surface at start-up.
    pub fn open(config: V4l2Config) -> Result<Self, CaptureError> {
        let mut src = Self::new(config, MonotonicClock::new());
        src.connect()?;
        Ok(src)
    }
}

impl<C: Clock> V4l2Source<C> {
    /// A source that opens the camera on the first `next_frame` (for a daemon that starts
    /// before the camera is plugged in).
    pub fn new(config: V4l2Config, clock: C) -> Self {
        V4l2Source {
            name: config.device.display().to_string(),
            backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
            config,
            clock,
            connection: None,
            retry_at: None,
            sequence: 0,
            timeouts_in_a_row: 0,
        }
    }

    /// Whether the device is open and streaming.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// The format the driver agreed to, while connected.
    pub fn negotiated_format(&self) -> Option<Format> {
        self.connection.as_ref().map(|c| c.format)
    }

    fn disconnected(&self, context: &str, source: io::Error) -> CaptureError {
        CaptureError::Disconnected {
            device: self.name.clone(),
            context: context.to_string(),
            source,
        }
    }

    fn unsupported(&self, message: String) -> CaptureError {
        CaptureError::Unsupported {
            device: self.name.clone(),
            message,
        }
    }

    /// Opens the device, negotiates format, rate and controls, and starts streaming buffers.
    fn connect(&mut self) -> Result<(), CaptureError> {
        let cfg = &self.config;
        let device = Device::with_path(&cfg.device).map_err(|e| self.disconnected("open", e))?;
        let wanted = fourcc(cfg.pixel_format);
        let format = device
            .set_format(&Format::new(cfg.width, cfg.height, wanted))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => self.unsupported(format!("cannot set format: {e}")),
                _ => self.disconnected("set format", e),
            })?;
        if format.fourcc != wanted {
            return Err(self.unsupported(format!(
                "pixel format {:?} is not supported (driver offers {})",
                cfg.pixel_format, format.fourcc
            )));
        }
        if (format.width, format.height) != (cfg.width, cfg.height) {
            return Err(self.unsupported(format!(
                "{}x{} is not supported in {:?}; the driver chose {}x{}",
                cfg.width, cfg.height, cfg.pixel_format, format.width, format.height
            )));
        }
        if let Some(fps) = cfg.fps {
            let params = device
                .set_params(&Parameters::new(frame_interval(fps)))
                .map_err(|e| self.disconnected("set frame rate", e))?;
            let got = params.interval;
            if got.numerator > 0 {
                let actual = f64::from(got.denominator) / f64::from(got.numerator);
                if (actual - fps).abs() > 0.05 * fps {
                    log::warn!(
                        "{}: asked for {fps} fps, driver runs at {actual:.2} fps",
                        self.name
                    );
                }
            }
        }
        self.apply_controls(&device)?;
        let mut stream = MmapStream::with_buffers(&device, Type::VideoCapture, cfg.buffers)
            .map_err(|e| self.disconnected("allocate buffers", e))?;
        stream.set_timeout(cfg.timeout);
        log::info!(
            "{}: streaming {} {}x{} (stride {}), {} buffers",
            self.name,
            format.fourcc,
            format.width,
            format.height,
            format.stride,
            cfg.buffers
        );
        self.connection = Some(Connection {
            stream,
            _device: device,
            format,
            last_kernel_sequence: None,
        });
        self.timeouts_in_a_row = 0;
        Ok(())
    }

    fn apply_controls(&self, device: &Device) -> Result<(), CaptureError> {
        let cfg = &self.config;
        let set = |id: u32, value: i64, what: &str| {
            device
                .set_control(Control {
                    id,
                    value: Value::Integer(value),
                })
                .map_err(|e| self.unsupported(format!("cannot set {what} to {value}: {e}")))
        };
        match cfg.exposure {
            None => {}
            Some(Exposure::Auto) => {
                // UVC cameras offer aperture priority; other drivers plain auto.
                set(
                    CID_EXPOSURE_AUTO,
                    EXPOSURE_APERTURE_PRIORITY,
                    "auto_exposure",
                )
                .or_else(|_| set(CID_EXPOSURE_AUTO, EXPOSURE_AUTO, "auto_exposure"))?;
            }
            Some(Exposure::Manual(t)) => {
                set(CID_EXPOSURE_AUTO, EXPOSURE_MANUAL, "auto_exposure")?;
                set(
                    CID_EXPOSURE_ABSOLUTE,
                    i64::from(t),
                    "exposure_time_absolute",
                )?;
            }
        }
        if let Some(g) = cfg.gain {
            set(CID_GAIN, g, "gain")?;
        }
        if cfg.controls.is_empty() {
            return Ok(());
        }
        // v4l 0.14 panics on control types it does not know; a camera with an exotic control
        // must not take the daemon down.
        let described = std::panic::catch_unwind(AssertUnwindSafe(|| device.query_controls()))
            .map_err(|_| self.unsupported("cannot list controls (unknown control type)".into()))?
            .map_err(|e| self.disconnected("list controls", e))?;
        for (name, &value) in &cfg.controls {
            let key = control_key(name);
            let Some(desc) = described.iter().find(|d| control_key(&d.name) == key) else {
                let known: Vec<_> = described.iter().map(|d| control_key(&d.name)).collect();
                return Err(self.unsupported(format!(
                    "no control named `{name}` (known: {})",
                    known.join(", ")
                )));
            };
            if value < desc.minimum || value > desc.maximum {
                return Err(self.unsupported(format!(
                    "control `{name}` = {value} is outside {}..={}",
                    desc.minimum, desc.maximum
                )));
            }
            set(desc.id, value, name)?;
        }
        Ok(())
    }

    /// Reopens the device if the back-off allows; waits at most `timeout` for it.
    fn reconnect(&mut self) -> Result<(), CaptureError> {
        let now = self.clock.now();
        if let Some(at) = self.retry_at
            && at > now
        {
            let wake = at.min(now + self.config.timeout);
            self.clock.sleep_until(wake);
            if wake < at {
                return Err(self.disconnected(
                    "waiting to reconnect",
                    io::Error::new(io::ErrorKind::NotConnected, "device closed after a failure"),
                ));
            }
        }
        match self.connect() {
            Ok(()) => {
                log::info!("{}: reconnected", self.name);
                self.backoff.reset();
                self.retry_at = None;
                Ok(())
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                self.retry_at = Some(self.clock.now() + delay);
                log::warn!("{e}; retrying in {} ms", delay.as_millis());
                Err(e)
            }
        }
    }

    /// Drops the connection and schedules a reconnect.
    fn drop_connection(&mut self) {
        self.connection = None;
        let delay = self.backoff.next_delay();
        self.retry_at = Some(self.clock.now() + delay);
    }
}

impl<C: Clock> FrameSource for V4l2Source<C> {
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        if self.connection.is_none() {
            self.reconnect()?;
        }
        let Some(conn) = self.connection.as_mut() else {
            return Err(self.disconnected(
                "reconnect",
                io::Error::new(io::ErrorKind::NotConnected, "no connection"),
            ));
        };
        let format = conn.format;
        let pixel_format = self.config.pixel_format;
        let result = conn.stream.next();
        let (buf, meta) = match result {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                self.timeouts_in_a_row += 1;
                let err = CaptureError::Timeout {
                    device: self.name.clone(),
                    timeout: self.config.timeout,
                };
                if self.timeouts_in_a_row >= TIMEOUTS_BEFORE_REOPEN {
                    log::warn!(
                        "{}: {} timeouts in a row, reopening",
                        self.name,
                        self.timeouts_in_a_row
                    );
                    self.drop_connection();
                }
                return Err(err);
            }
            Err(e) => {
                let err = self.disconnected("dequeue", e);
                self.drop_connection();
                return Err(err);
            }
        };
        self.timeouts_in_a_row = 0;
        let fallback = self.clock.now();
        let timestamp = buffer_timestamp(meta.flags, meta.timestamp, fallback);
        // Our sequence advances by the kernel's, so gaps show frames the driver dropped.
        let step = match conn.last_kernel_sequence {
            Some(last) => u64::from(meta.sequence.wrapping_sub(last).clamp(1, 1000)),
            None => 1,
        };
        conn.last_kernel_sequence = Some(meta.sequence);
        let sequence = self.sequence + (step - 1);
        self.sequence = sequence + 1;

        let corrupt = |source: DecodeError| CaptureError::CorruptFrame {
            origin: self.name.clone(),
            sequence,
            timestamp,
            source,
        };
        if meta.flags.contains(Flags::ERROR) {
            return Err(corrupt(DecodeError::Jpeg(
                "driver flagged the buffer as corrupt (V4L2_BUF_FLAG_ERROR)".into(),
            )));
        }
        let used = (meta.bytesused as usize).min(buf.len());
        if used == 0 {
            return Err(corrupt(DecodeError::Jpeg("empty buffer".into())));
        }
        let data = &buf[..used];
        let image = match pixel_format {
            // A frame larger than the negotiated format is corrupt (or hostile): refused on
            // its header, before the decoder allocates for it.
            PixelFormat::Mjpeg => {
                decode_jpeg_within(data, u64::from(format.width) * u64::from(format.height))
            }
            PixelFormat::Yuyv => {
                let stride = if format.stride > 0 {
                    format.stride
                } else {
                    format.width * 2
                };
                yuyv_to_rgb(data, format.width, format.height, stride)
            }
        }
        .map_err(corrupt)?;
        Ok(Some(Frame {
            image,
            timestamp,
            sequence,
            origin: self.name.clone(),
        }))
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "V4L2 camera {} ({:?} {}x{}{})",
            self.name,
            c.pixel_format,
            c.width,
            c.height,
            c.fps.map_or(String::new(), |f| format!(" @ {f} fps"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn config(device: &str) -> V4l2Config {
        V4l2Config {
            device: PathBuf::from(device),
            pixel_format: PixelFormat::Mjpeg,
            width: 640,
            height: 480,
            fps: Some(30.0),
            buffers: 4,
            timeout: Duration::from_millis(200),
            exposure: None,
            gain: None,
            controls: BTreeMap::new(),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(400),
        }
    }

    #[test]
    fn control_names_match_v4l2_ctl() {
        assert_eq!(
            control_key("White Balance, Automatic"),
            "white_balance_automatic"
        );
        assert_eq!(
            control_key("Exposure Time, Absolute"),
            "exposure_time_absolute"
        );
        assert_eq!(control_key("  Gain "), "gain");
        assert_eq!(control_key("power_line_frequency"), "power_line_frequency");
    }

    #[test]
    fn frame_interval_is_seconds_per_frame() {
        let f = frame_interval(7.5);
        assert_eq!((f.numerator, f.denominator), (1000, 7500));
    }

    #[test]
    fn kernel_timestamps_are_used_only_when_monotonic() {
        let fallback = Timestamp::from_millis(1);
        let ts = v4l::timestamp::Timestamp::new(12, 345_678);
        assert_eq!(
            buffer_timestamp(Flags::TIMESTAMP_MONOTONIC, ts, fallback),
            Timestamp::from_duration(Duration::new(12, 345_678_000))
        );
        assert_eq!(
            buffer_timestamp(Flags::TIMESTAMP_COPY, ts, fallback),
            fallback
        );
        assert_eq!(
            buffer_timestamp(
                Flags::TIMESTAMP_MONOTONIC,
                v4l::timestamp::Timestamp::new(0, 0),
                fallback
            ),
            fallback
        );
    }

    #[test]
    fn missing_device_reports_and_backs_off() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let mut src = V4l2Source::new(config("/dev/ustad-no-such-video"), clock.clone());
        // First attempt fails at once and schedules a retry 100 ms later.
        let e = src.next_frame().expect_err("no device");
        assert!(matches!(e, CaptureError::Disconnected { .. }), "{e}");
        assert!(e.is_transient());
        assert!(e.to_string().contains("/dev/ustad-no-such-video"), "{e}");
        assert_eq!(clock.now(), Timestamp::from_millis(0));
        // Next call waits out the back-off on the clock, retries, fails, doubles it.
        let _ = src.next_frame().expect_err("still no device");
        assert_eq!(clock.now(), Timestamp::from_millis(100));
        let _ = src.next_frame().expect_err("still no device");
        assert_eq!(clock.now(), Timestamp::from_millis(300));
        // 400 ms back-off is longer than the 200 ms timeout: the call returns after 200 ms
        // without an attempt, the next one completes the wait.
        let _ = src.next_frame().expect_err("waiting");
        assert_eq!(clock.now(), Timestamp::from_millis(500));
        let _ = src.next_frame().expect_err("still no device");
        assert_eq!(clock.now(), Timestamp::from_millis(700));
        assert!(!src.is_connected());
    }

    /// Needs a real camera on /dev/video0 that does 640x480 MJPEG.
    #[test]
    #[ignore = "needs a V4L2 camera on /dev/video0"]
    fn real_camera_streams_with_kernel_timestamps() {
        let mut src = V4l2Source::open(config("/dev/video0")).expect("open /dev/video0");
        let clock = MonotonicClock::new();
        let mut last: Option<Frame> = None;
        for _ in 0..20 {
            let frame = src
                .next_frame()
                .expect("frame")
                .expect("stream does not end");
            assert_eq!(frame.image.dimensions(), (640, 480));
            // Kernel timestamps lie on our clock, a little in the past.
            let age = clock.now() - frame.timestamp;
            assert!(age < Duration::from_millis(500), "frame {age:?} old");
            if let Some(prev) = &last {
                assert!(frame.timestamp > prev.timestamp);
                assert!(frame.sequence > prev.sequence);
            }
            last = Some(frame);
        }
    }

    /// Same for YUYV.
    #[test]
    #[ignore = "needs a V4L2 camera on /dev/video0 with YUYV"]
    fn real_camera_yuyv() {
        let mut cfg = config("/dev/video0");
        cfg.pixel_format = PixelFormat::Yuyv;
        cfg.fps = None;
        let mut src = V4l2Source::open(cfg).expect("open /dev/video0");
        let frame = src.next_frame().expect("frame").expect("frame");
        assert_eq!(frame.image.dimensions(), (640, 480));
    }

    /// Unplug the camera while this runs and plug it back in within 20 s.
    #[test]
    #[ignore = "manual: unplug and replug the camera on /dev/video0 while it runs"]
    fn real_camera_reconnects_after_unplug() {
        let mut src = V4l2Source::new(config("/dev/video0"), MonotonicClock::new());
        let clock = MonotonicClock::new();
        let end = clock.now() + Duration::from_secs(30);
        let (mut lost, mut back) = (false, false);
        while clock.now() < end && !(lost && back) {
            match src.next_frame() {
                Ok(Some(_)) if lost => back = true,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{e}");
                    lost = true;
                }
            }
        }
        assert!(lost && back, "lost = {lost}, back = {back}");
    }
}
