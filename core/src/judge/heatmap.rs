//! Anomaly maps as pictures: a colour map blended over the (grayscale) part image.
//!
//! The colour scale is fixed by the caller, not stretched per image, so a good part looks calm
//! and a defect looks hot, and two overlays can be compared by eye.

use image::{Rgb, RgbImage};

/// Colour of `t ∈ [0, 1]` on a dark-blue → cyan → yellow → red scale (a "jet"-like map that
/// stays readable when printed in grayscale, since luminance rises then falls only at the top).
pub fn colour(t: f32) -> Rgb<u8> {
    let t = if t.is_nan() { 1.0 } else { t.clamp(0.0, 1.0) };
    let stops: [(f32, [f32; 3]); 5] = [
        (0.0, [0.0, 0.0, 0.5]),
        (0.3, [0.0, 0.6, 1.0]),
        (0.55, [0.4, 1.0, 0.4]),
        (0.8, [1.0, 0.85, 0.0]),
        (1.0, [0.85, 0.0, 0.0]),
    ];
    let i = stops
        .iter()
        .position(|&(at, _)| t <= at)
        .unwrap_or(stops.len() - 1)
        .max(1);
    let ((a, ca), (b, cb)) = (stops[i - 1], stops[i]);
    let f = if b > a { (t - a) / (b - a) } else { 0.0 };
    Rgb(std::array::from_fn(|c| {
        ((ca[c] + (cb[c] - ca[c]) * f) * 255.0).round() as u8
    }))
}

/// Blends the map (`map_width × map_height`, resampled to the image by nearest neighbour) over
/// a grayscale version of `image`. Values at or below `low` leave the part visible; at `high`
/// and above the colour is opaque red.
pub fn overlay(
    image: &RgbImage,
    map: &[f32],
    map_width: usize,
    map_height: usize,
    low: f32,
    high: f32,
) -> RgbImage {
    assert_eq!(map.len(), map_width * map_height, "map size");
    let (w, h) = image.dimensions();
    let span = (high - low).max(f32::EPSILON);
    RgbImage::from_fn(w, h, |x, y| {
        let mx = ((x as usize * map_width) / w as usize).min(map_width - 1);
        let my = ((y as usize * map_height) / h as usize).min(map_height - 1);
        let t = (map[my * map_width + mx] - low) / span;
        let p = image.get_pixel(x, y);
        let gray = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        // Below `low` the part shows through; the colour takes over as the score rises.
        let alpha = 0.35 + 0.5 * t.clamp(0.0, 1.0);
        let c = colour(t);
        Rgb(std::array::from_fn(|k| {
            (gray * (1.0 - alpha) + c[k] as f32 * alpha).round() as u8
        }))
    })
}

/// The one colour scale of every overlay a person looks at (archive, live page, `ustad score`,
/// `ustad eval`): calm below a third of the reject threshold, opaque red from 1.5× it, so the
/// threshold sits in the yellow and two overlays of one bundle compare by eye. A threshold
/// that is not a positive number (an uncalibrated bundle) scales as if it were 1.
pub fn overlay_at_threshold(
    image: &RgbImage,
    map: &[f32],
    map_width: usize,
    map_height: usize,
    threshold: f32,
) -> RgbImage {
    let t = if threshold.is_finite() && threshold > 0.0 {
        threshold
    } else {
        1.0
    };
    overlay(image, map, map_width, map_height, t / 3.0, t * 1.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_scale_ends_and_is_monotone_in_red() {
        assert_eq!(colour(0.0), Rgb([0, 0, 128]));
        assert_eq!(colour(1.0), Rgb([217, 0, 0]));
        assert_eq!(colour(f32::NAN), colour(1.0));
        let reds: Vec<u8> = (0..=8).map(|i| colour(i as f32 / 10.0)[0]).collect();
        assert!(reds.windows(2).all(|w| w[0] <= w[1]), "{reds:?}");
    }

    #[test]
    fn hot_pixels_are_redder_than_cold_ones() {
        let image = RgbImage::from_pixel(4, 4, Rgb([128, 128, 128]));
        let mut map = vec![0.0; 4];
        map[3] = 10.0;
        let out = overlay(&image, &map, 2, 2, 0.0, 10.0);
        let cold = out.get_pixel(0, 0);
        let hot = out.get_pixel(3, 3);
        assert!(
            hot[0] > cold[0] + 60 && hot[2] < cold[2],
            "cold {cold:?} hot {hot:?}"
        );
    }

    #[test]
    fn every_overlay_shares_the_threshold_colour_scale() {
        let part = RgbImage::from_pixel(4, 1, Rgb([128, 128, 128]));
        let map = [0.0, 1.0, 2.0, 6.0];
        let at_threshold = overlay_at_threshold(&part, &map, 4, 1, 2.0);
        assert_eq!(at_threshold, overlay(&part, &map, 4, 1, 2.0 / 3.0, 3.0));
        // Uncalibrated bundles (threshold 0, NaN) still give a usable picture, scaled as 1.
        for bad in [0.0, -1.0, f32::NAN] {
            assert_eq!(
                overlay_at_threshold(&part, &map, 4, 1, bad),
                overlay(&part, &map, 4, 1, 1.0 / 3.0, 1.5)
            );
        }
    }
}
