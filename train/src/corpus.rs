//! Image corpora and random patch sampling for teacher pretraining.

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rayon::prelude::*;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CorpusError {
    #[error(transparent)]
    Dataset(#[from] ustad_core::images::DatasetError),
    #[error("{path}: none of the {count} image files could be decoded (first error: {first})")]
    NothingDecoded {
        path: PathBuf,
        count: usize,
        first: String,
    },
}

/// Decoded RGB images of a folder.
pub struct Corpus {
    pub images: Vec<RgbImage>,
    pub paths: Vec<PathBuf>,
    /// Files that could not be decoded, with the reason; reported, not fatal.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Corpus {
    /// Decodes every image under `dir` in parallel. Unreadable files are skipped and listed
    /// (a photo corpus with one broken JPEG is still a corpus); an empty folder is an error.
    pub fn load(dir: &Path, progress: bool) -> Result<Self, CorpusError> {
        let files = ustad_core::images::images_in(dir)?;
        let bar = if progress {
            ProgressBar::new(files.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("decoding {pos}/{len} {bar:30} {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let decoded: Vec<(PathBuf, Result<RgbImage, String>)> = files
            .par_iter()
            .map(|path| {
                let result = image::open(path)
                    .map(|i| i.to_rgb8())
                    .map_err(|e| e.to_string());
                bar.inc(1);
                (path.clone(), result)
            })
            .collect();
        bar.finish_and_clear();
        let mut corpus = Corpus {
            images: Vec::new(),
            paths: Vec::new(),
            skipped: Vec::new(),
        };
        for (path, result) in decoded {
            match result {
                Ok(image) => {
                    corpus.images.push(image);
                    corpus.paths.push(path);
                }
                Err(e) => corpus.skipped.push((path, e)),
            }
        }
        if corpus.images.is_empty() {
            return Err(CorpusError::NothingDecoded {
                path: dir.to_path_buf(),
                count: corpus.skipped.len(),
                first: corpus
                    .skipped
                    .first()
                    .map(|(p, e)| format!("{}: {e}", p.display()))
                    .unwrap_or_default(),
            });
        }
        for (path, e) in &corpus.skipped {
            log::warn!("skipping {}: {e}", path.display());
        }
        Ok(corpus)
    }
}

/// A random square crop of side `4p..=16p` (clipped to the image), as in the paper.
/// Returns the crop at full resolution; callers resize it for the network and the backbone.
pub fn random_crop(
    image: &RgbImage,
    patch_size: usize,
    grayscale_probability: f64,
    rng: &mut impl Rng,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let largest = w.min(h);
    let low = (4 * patch_size as u32).min(largest);
    let high = (16 * patch_size as u32).min(largest);
    let crop = square_crop(image, low..=high, rng);
    grey_sometimes(crop, grayscale_probability, rng)
}

/// A square crop at a random place, its side drawn from `sides` (which must fit the image).
pub fn square_crop(
    image: &RgbImage,
    sides: std::ops::RangeInclusive<u32>,
    rng: &mut impl Rng,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let side = rng.random_range(sides);
    let x = rng.random_range(0..=w - side);
    let y = rng.random_range(0..=h - side);
    image::imageops::crop_imm(image, x, y, side, side).to_image()
}

/// `image` in grey (equal channels) with probability `probability`, else unchanged: the
/// paper's augmentation, so that teachers also see the grey parts many lines image.
pub fn grey_sometimes(image: RgbImage, probability: f64, rng: &mut impl Rng) -> RgbImage {
    if rng.random_bool(probability) {
        DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(image).to_luma8()).to_rgb8()
    } else {
        image
    }
}

/// Resizes to `size × size` (bilinear; the same filter as the daemon's preprocessing).
pub fn resize(image: &RgbImage, size: usize) -> RgbImage {
    if image.dimensions() == (size as u32, size as u32) {
        image.clone()
    } else {
        image::imageops::resize(
            image,
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        )
    }
}
