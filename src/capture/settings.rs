//! What a frame source needs to open: the camera section of `ustad.toml` after validation. The
//! config layer builds these; the sources never read the config file's types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The frame source.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraConfig {
    /// A V4L2 camera (USB/UVC webcams, most industrial USB cameras).
    V4l2(V4l2Config),
    /// A folder of images played back as if a camera took them.
    Replay(ReplayConfig),
}

/// A V4L2 camera.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Config {
    /// Device node, e.g. `/dev/video0` (default) or a stable `/dev/v4l/by-id/...` link.
    pub device: PathBuf,
    /// Pixel format to request.
    pub pixel_format: PixelFormat,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frame rate to request; `None` keeps the driver's current rate.
    pub fps: Option<f64>,
    /// Number of mmap buffers (default 4).
    pub buffers: u32,
    /// How long to wait for a frame before the source reports a timeout (default 1000 ms).
    pub timeout: Duration,
    /// Exposure; `None` leaves the camera's setting alone.
    pub exposure: Option<Exposure>,
    /// Analogue gain; `None` leaves the camera's setting alone.
    pub gain: Option<i64>,
    /// Further controls by their V4L2 name (case-insensitive, e.g. `"Brightness"`).
    pub controls: BTreeMap<String, i64>,
    /// Reconnect back-off after the camera disappears: first wait.
    pub reconnect_initial: Duration,
    /// Reconnect back-off: longest wait between attempts.
    pub reconnect_max: Duration,
}

/// Camera exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Let the camera choose (aperture-priority auto exposure).
    Auto,
    /// Manual exposure time in V4L2 units of 100 µs (`exposure_time_absolute`).
    Manual(u32),
}

/// Pixel formats the daemon decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PixelFormat {
    /// Motion JPEG: compressed, the only way to get high resolutions at full rate over USB 2.
    #[serde(rename = "MJPEG", alias = "mjpeg", alias = "MJPG")]
    Mjpeg,
    /// Packed YUV 4:2:2: uncompressed, no compression artefacts, more USB bandwidth.
    #[serde(rename = "YUYV", alias = "yuyv")]
    Yuyv,
}

/// A folder of images played back as frames.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// Folder; images in sub-folders are included, in sorted path order.
    pub path: PathBuf,
    /// Fixed frame rate; `None` = as fast as the pipeline takes them.
    pub fps: Option<f64>,
    /// Start again from the first image after the last one.
    pub looping: bool,
    /// Largest image decoded, in pixels (`camera.max_pixels`); larger files are corrupt
    /// frames, refused before any pixel buffer is allocated.
    pub max_pixels: u64,
}
