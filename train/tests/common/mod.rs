//! Helpers shared by the trainer's integration tests: the shared data and a tiny real corpus.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared` beside the checkout (data and models, read-only).
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// A corpus folder in `dir` with the first `count` real ImageNet photos of the shared sample.
pub fn tiny_corpus(dir: &Path, count: usize) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut files = ustad_core::images::images_in(&shared().join("data/imagenet-sample")).unwrap();
    files.truncate(count);
    for f in files {
        std::fs::copy(&f, images.join(f.file_name().unwrap())).unwrap();
    }
    images
}
