//! Image → network input.
//!
//! Frames are resized to the bundle's input size (bilinear), grayscale is replicated to three
//! channels, and each channel is normalised as `(pixel / 255 − mean) / std`. The trainer calls
//! the same function on its training images, so what the students learned is what the daemon
//! feeds them.

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

use serde::{Deserialize, Serialize};

/// Input geometry and pixel normalisation: `(pixel / 255 − mean) / std` per RGB channel after
/// resizing the (ROI of the) frame to `width × height`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub width: usize,
    pub height: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputSpec {
    /// ImageNet statistics, which the distilled teachers expect.
    pub fn imagenet(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Resizes `image` to the input size (a no-op when it already fits) as 8-bit RGB.
pub fn resize_rgb(image: &DynamicImage, spec: &InputSpec) -> RgbImage {
    let (w, h) = (spec.width as u32, spec.height as u32);
    if image.width() == w && image.height() == h {
        image.to_rgb8()
    } else {
        // Triangle (bilinear) is what the trainer uses too: cheap, and no ringing at edges.
        image.resize_exact(w, h, FilterType::Triangle).to_rgb8()
    }
}

/// Writes the normalised CHW input for `rgb` (already `spec.width × spec.height`) into `out`.
pub fn normalise_into(rgb: &RgbImage, spec: &InputSpec, out: &mut [f32]) {
    let pixels = spec.width * spec.height;
    assert_eq!(
        (rgb.width() as usize, rgb.height() as usize),
        (spec.width, spec.height),
        "image size"
    );
    assert_eq!(out.len(), 3 * pixels, "input buffer size");
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c]));
    let offset: [f32; 3] = std::array::from_fn(|c| spec.mean[c] / spec.std[c]);
    let (r, rest) = out.split_at_mut(pixels);
    let (g, b) = rest.split_at_mut(pixels);
    for (i, px) in rgb.pixels().enumerate() {
        r[i] = px[0] as f32 * scale[0] - offset[0];
        g[i] = px[1] as f32 * scale[1] - offset[1];
        b[i] = px[2] as f32 * scale[2] - offset[2];
    }
}

/// [`normalise_into`] a newly allocated buffer.
pub fn normalise(rgb: &RgbImage, spec: &InputSpec) -> Vec<f32> {
    let mut out = vec![0.0; 3 * spec.width * spec.height];
    normalise_into(rgb, spec, &mut out);
    out
}

/// Resize and normalise in one call, allocating the output (trainer and tests).
pub fn to_input(image: &DynamicImage, spec: &InputSpec) -> Vec<f32> {
    normalise(&resize_rgb(image, spec), spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    #[test]
    fn grayscale_is_replicated_and_normalised() {
        let spec = InputSpec {
            width: 2,
            height: 1,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
        };
        let gray = GrayImage::from_fn(2, 1, |x, _| Luma([if x == 0 { 0 } else { 255 }]));
        let input = to_input(&DynamicImage::ImageLuma8(gray), &spec);
        // CHW: r0 r1 g0 g1 b0 b1
        let want = [-1.0, 1.0, -1.0, 3.0, 0.0, 1.0];
        for (got, want) in input.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{input:?}");
        }
    }

    #[test]
    fn resizing_reaches_the_input_size() {
        let spec = InputSpec::imagenet(32, 24);
        let big = DynamicImage::ImageRgb8(RgbImage::new(100, 57));
        let rgb = resize_rgb(&big, &spec);
        assert_eq!(rgb.dimensions(), (32, 24));
    }
}
