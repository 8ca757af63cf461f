//! Teacher distillation on real photos with the real backbone, kept tiny.

mod common;

use std::path::{Path, PathBuf};

use common::tiny_corpus;
use ustad_core::testing::shared_path;

use burn::tensor::{Device, Tensor, TensorData};
use ustad_core::networks::weights::NetworkWeights;
use ustad_train::teacher::{TeacherOptions, compactness_loss, train_teacher};

fn tiny_options(dir: &Path, images: PathBuf, iterations: usize) -> TeacherOptions {
    TeacherOptions {
        iterations,
        batch: 16,
        learning_rate: 1e-3,
        cache_patches: 96,
        validation_patches: 32,
        validation_every: iterations,
        checkpoint_every: 2,
        baseline_patches: 64,
        progress: false,
        ..TeacherOptions::paper(
            17,
            shared_path("models/efficientnet_lite0_imagenet.onnx"),
            images,
            dir.join("teacher.ustw"),
        )
    }
}

fn hadamard(n: usize) -> Vec<Vec<f32>> {
    let mut h = vec![vec![1.0f32]];
    while h.len() < n {
        let m = h.len();
        let mut next = vec![vec![0.0; 2 * m]; 2 * m];
        for i in 0..m {
            for j in 0..m {
                next[i][j] = h[i][j];
                next[i][j + m] = h[i][j];
                next[i + m][j] = h[i][j];
                next[i + m][j + m] = -h[i][j];
            }
        }
        h = next;
    }
    h
}

#[test]
fn compactness_is_zero_for_decorrelated_and_positive_for_correlated_descriptors() {
    let device = Device::flex();
    // Columns 1..=128 of a 256×256 Hadamard matrix: zero mean and mutually orthogonal.
    let h = hadamard(256);
    let decorrelated: Vec<f32> = (0..256)
        .flat_map(|r| (1..=128).map(move |c| (r, c)))
        .map(|(r, c)| h[r][c])
        .collect();
    let loss = compactness_loss(Tensor::from_data(
        TensorData::new(decorrelated.clone(), [256, 128]),
        &device,
    ));
    let value = loss.into_data().try_into_vec::<f32>().unwrap()[0];
    assert!(value.abs() < 1e-6, "decorrelated: {value}");

    // Make channel 1 a noisy copy of channel 0.
    let mut correlated = decorrelated;
    for r in 0..256 {
        correlated[r * 128 + 1] = correlated[r * 128] + 0.1 * correlated[r * 128 + 2];
    }
    let loss = compactness_loss(Tensor::from_data(
        TensorData::new(correlated, [256, 128]),
        &device,
    ));
    let value = loss.into_data().try_into_vec::<f32>().unwrap()[0];
    assert!(value > 1.0, "correlated: {value}");
}

/// Training loss per step, read back from the loss curve the run writes.
fn train_losses(out: &Path) -> Vec<f32> {
    let csv = std::fs::read_to_string(out.with_extension("loss.csv")).unwrap();
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn distillation_loss_decreases_within_a_few_iterations() {
    let dir = tempfile::tempdir().unwrap();
    let images = tiny_corpus(dir.path(), 8);
    // Pure distillation on a pool small enough to fit: L_k must fall quickly.
    let options = TeacherOptions {
        lambda_c: 0.0,
        cache_patches: 32,
        ..tiny_options(dir.path(), images, 24)
    };
    train_teacher(&options, &Device::flex().autodiff()).unwrap();
    let losses = train_losses(&options.out);
    assert_eq!(losses.len(), 24);
    let first = losses[..4].iter().sum::<f32>() / 4.0;
    let last = losses[20..].iter().sum::<f32>() / 4.0;
    assert!(last < 0.8 * first, "train L_k {first} → {last}: {losses:?}");
    let weights = NetworkWeights::load(&options.out).unwrap();
    assert_eq!(weights.patch_size, 17);
    assert_eq!(weights.meta("role"), Some("teacher"));
}

#[test]
fn checkpoints_round_trip_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let images = tiny_corpus(dir.path(), 6);
    let device = Device::flex().autodiff();

    // Two iterations write the teacher and a checkpoint at step 2.
    let first = tiny_options(dir.path(), images.clone(), 2);
    train_teacher(&first, &device).unwrap();
    let trained = NetworkWeights::load(&first.out).unwrap();
    // Resuming at the checkpoint's own step trains nothing: the weights written must be
    // exactly those the checkpoint saved.
    let finalise = TeacherOptions {
        resume: true,
        ..tiny_options(dir.path(), images.clone(), 2)
    };
    train_teacher(&finalise, &device).unwrap();
    let reloaded = NetworkWeights::load(&finalise.out).unwrap();
    assert_eq!(trained.convs, reloaded.convs);
    // Resuming to 4 continues from step 2: two more steps in the loss curve, new weights.
    let more = TeacherOptions {
        resume: true,
        ..tiny_options(dir.path(), images, 4)
    };
    train_teacher(&more, &device).unwrap();
    assert_eq!(train_losses(&more.out).len(), 4);
    assert_ne!(
        NetworkWeights::load(&more.out).unwrap().convs,
        trained.convs
    );
}

#[test]
fn bad_backbone_and_empty_corpus_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let images = tiny_corpus(dir.path(), 2);

    let bogus = dir.path().join("bogus.onnx");
    std::fs::write(&bogus, b"this is not onnx").unwrap();
    let options = TeacherOptions {
        backbone: bogus.clone(),
        backbone_config: Some(ustad_core::testing::repo_path(
            "models/backbones/efficientnet_lite0_imagenet.toml",
        )),
        ..tiny_options(dir.path(), images, 1)
    };
    let err = format!("{:#}", train_teacher(&options, &device).unwrap_err());
    assert!(
        err.contains("bogus.onnx") && err.contains("not a usable backbone"),
        "{err}"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let options = tiny_options(dir.path(), empty.clone(), 1);
    let err = format!("{:#}", train_teacher(&options, &device).unwrap_err());
    assert!(err.contains("empty") && err.contains("no images"), "{err}");
}
