//! Step 1: the good images split into fit, validation and spare images, loaded at the input size.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::{FitOptions, Images, bar, load_inputs};
use ustad_core::judge::preprocess::InputSpec;

pub(super) fn flip_input(input: &[f32], height: usize, width: usize, channels: usize) -> Vec<f32> {
    let mut out = vec![0.0; input.len()];
    for c in 0..channels {
        for y in 0..height {
            for x in 0..width {
                out[(c * height + y) * width + x] =
                    input[(c * height + y) * width + (width - 1 - x)];
            }
        }
    }
    out
}

/// The good images of one fit, loaded at the preset's input size.
pub(super) struct Splits {
    /// What the students learn from.
    pub(super) fit: Images,
    /// Calibration and threshold (never trained on).
    pub(super) validation: Images,
    /// Left over by `max_fit_images`: they measure the residual whitening.
    pub(super) spare: Images,
}

/// Step 1: `train/good` split (seeded) into fit, validation and spare images, all loaded.
pub(super) fn split_images(options: &FitOptions, spec: &InputSpec) -> Result<Splits> {
    let preset = &options.preset;
    let good = options.data.join("train/good");
    let mut paths = ustad_core::images::images_in(&good).with_context(|| {
        format!(
            "{}: expected MVTec AD layout (train/good)",
            options.data.display()
        )
    })?;
    if paths.len() < 4 {
        bail!(
            "{}: {} images; fitting needs at least 4 good images",
            good.display(),
            paths.len()
        );
    }
    if !(0.0..1.0).contains(&options.validation_fraction) || options.validation_fraction == 0.0 {
        bail!("--validation-fraction must be in (0, 1)");
    }
    if preset.students == 1 {
        bail!(
            "preset {}: 1 student; the variance needs at least 2 (or 0, for the teacher alone)",
            preset.name
        );
    }
    paths.shuffle(&mut StdRng::seed_from_u64(options.seed));
    let n_val = ((paths.len() as f64 * options.validation_fraction).ceil() as usize)
        .clamp(1, paths.len() - 1);
    let mut val_paths = paths.split_off(paths.len() - n_val);
    // Images left over by the fit limit measure the residual whitening: unseen by the students
    // and apart from the threshold's validation images. Without any, the fit images do.
    let mut spare_paths = if options.max_fit_images > 0 && paths.len() > options.max_fit_images {
        paths.split_off(options.max_fit_images)
    } else {
        Vec::new()
    };
    let whitening = if preset.whiten_residual {
        preset.whitening_images
    } else {
        0
    };
    // What neither the students nor the whitening see joins the validation images: the
    // threshold is a high quantile of their scores, and on MTD 80 images put it at one
    // outlier's score (`validation_images` in the provenance counts them all).
    if spare_paths.len() > whitening {
        val_paths.extend(spare_paths.split_off(whitening));
    }
    let loading = bar(
        paths.len() + val_paths.len() + spare_paths.len(),
        options.progress,
        "loading {pos}/{len} {bar:30} {per_sec}",
    );
    let load = |paths: Vec<PathBuf>| -> Result<Images> {
        Ok(Images {
            inputs: load_inputs(&paths, spec, &loading)?,
            paths,
        })
    };
    let splits = Splits {
        fit: load(paths)?,
        validation: load(val_paths)?,
        spare: load(spare_paths)?,
    };
    loading.finish_and_clear();
    log::info!(
        "{} fit and {} validation images from {}, resized to {}×{}",
        splits.fit.paths.len(),
        splits.validation.paths.len(),
        good.display(),
        spec.width,
        spec.height
    );
    Ok(splits)
}
