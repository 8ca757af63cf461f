//! Test helpers both crates' tests use (feature `testing`, enabled only by their
//! dev-dependencies): where the shared data and the repository are, small bundles of randomly
//! initialised networks written through the real export path, and a synthetic part image.
//!
//! Helpers panic with a message instead of returning errors: a test that cannot build its
//! fixture has nothing to check.

use std::path::{Path, PathBuf};

use crate::bundle::onnx::{ChannelNorm, ScaleExport, TeacherExport, write_bundle};
use crate::bundle::{Bundle, Provenance};
use crate::judge::decide::{Decision, ImageScoreRule};
use crate::judge::preprocess::InputSpec;
use crate::judge::score::Calibration;
use crate::networks::arch::DESCRIPTOR_DIM;
use crate::networks::weights::NetworkWeights;

/// The one generator of random test inputs: seeded, identical on every platform.
pub use crate::networks::weights::SplitMix64;

/// The repository's root (the workspace folder holding `models/`, `config/` and `core/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core/ sits inside the repository")
        .to_path_buf()
}

/// `rel` inside the repository, e.g. `models/bundles/mtd-edge`.
pub fn repo_path(rel: impl AsRef<Path>) -> PathBuf {
    repo_root().join(rel)
}

/// `rel` inside `../shared` beside the checkout (the datasets and models, read-only, never
/// copied in), e.g. `data/mtd/test/good/exp0_num_743.jpg`.
pub fn shared_path(rel: impl AsRef<Path>) -> PathBuf {
    repo_root().join("../shared").join(rel)
}
/// Networks and statistics of a random bundle, kept so tests can recompute by hand.
pub struct RandomScale {
    pub stride: usize,
    pub teacher: NetworkWeights,
    pub students: Vec<NetworkWeights>,
    pub norm: ChannelNorm,
    pub calibration: Calibration,
}

pub fn random_scale(patch_size: usize, stride: usize, students: usize, seed: u64) -> RandomScale {
    let teacher = NetworkWeights::random(patch_size, seed).expect("random test networks");
    let students = (0..students as u64)
        .map(|i| {
            NetworkWeights::random(patch_size, seed * 100 + i + 1).expect("random test networks")
        })
        .collect();
    let norm = ChannelNorm {
        mean: (0..DESCRIPTOR_DIM)
            .map(|c| (c as f32 * 0.37).sin() * 0.2)
            .collect(),
        std: (0..DESCRIPTOR_DIM)
            .map(|c| 0.5 + (c % 7) as f32 * 0.1)
            .collect(),
    };
    let calibration = Calibration {
        error_mean: 20.0 + seed as f32,
        error_std: 5.0,
        variance_mean: 3.0,
        variance_std: 2.0,
        variance_weight: 0.5,
    };
    RandomScale {
        stride,
        teacher,
        students,
        norm,
        calibration,
    }
}

pub fn write_random_bundle(
    dir: &Path,
    input: InputSpec,
    scales: &[RandomScale],
    rule: ImageScoreRule,
    threshold: f32,
) -> Bundle {
    let exports: Vec<ScaleExport<'_>> = scales
        .iter()
        .map(|s| ScaleExport {
            stride: s.stride,
            reduction: 1,
            role: Default::default(),
            teacher: TeacherExport::Network(&s.teacher),
            students: &s.students,
            teacher_norm: s.norm.clone(),
            calibration: s.calibration,
        })
        .collect();
    let provenance = Provenance {
        dataset: "random".into(),
        created: "test".into(),
        trainer_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    write_bundle(
        dir,
        input,
        &exports,
        rule,
        Decision {
            threshold,
            rule: "fixed by the test".into(),
        },
        provenance,
    )
    .expect("writing a random test bundle")
}

/// A deterministic synthetic part image: smooth gradients plus a bright blob.
pub fn test_image(width: u32, height: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
        let blob = if (x as i32 - 12).pow(2) + (y as i32 - 9).pow(2) < 16 {
            120
        } else {
            0
        };
        image::Rgb([
            ((x * 7 + y * 3) % 256) as u8,
            ((x * 2 + y * 11) % 200) as u8 + blob / 2,
            (((x ^ y) * 5) % 256) as u8 / 2 + blob,
        ])
    }))
}
