//! The trainer's own test fixture, a tiny real corpus; the paths of the shared data and the
//! repository come from `ustad_core::testing`, as in every crate's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ustad_core::testing::shared_path;

/// A corpus folder in `dir` with the first `count` real ImageNet photos of the shared sample.
pub fn tiny_corpus(dir: &Path, count: usize) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut files = ustad_core::images::images_in(&shared_path("data/imagenet-sample")).unwrap();
    files.truncate(count);
    for f in files {
        std::fs::copy(&f, images.join(f.file_name().unwrap())).unwrap();
    }
    images
}
