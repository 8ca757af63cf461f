//! Regression benchmark of the scoring engine: one whole frame (preprocess, teacher + students,
//! error/variance, fusion, image score) of a small random bundle written through the real export
//! path. Small on purpose (p = 33 at stride 4 on 64 × 64) so `cargo bench` stays quick; it
//! guards the engine's own overhead and tract's kernels, not a preset's absolute speed (that
//! is `ustad bench` on a trained bundle).

use criterion::{Criterion, criterion_group, criterion_main};

use ustad_core::bundle::onnx::{ChannelNorm, ScaleExport, TeacherExport, write_bundle};
use ustad_core::bundle::{Precision, Provenance};
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::decide::{Decision, ImageScoreRule};
use ustad_core::judge::preprocess::InputSpec;
use ustad_core::judge::score::Calibration;
use ustad_core::networks::arch::DESCRIPTOR_DIM;
use ustad_core::networks::weights::NetworkWeights;

const SIDE: usize = 64;

fn bundle(dir: &std::path::Path) -> ustad_core::bundle::Bundle {
    let teacher = NetworkWeights::random(33, 1).expect("p = 33 exists");
    let students: Vec<NetworkWeights> = (2..5)
        .map(|seed| NetworkWeights::random(33, seed).expect("p = 33 exists"))
        .collect();
    let scale = ScaleExport {
        stride: 4,
        reduction: 1,
        role: Default::default(),
        teacher: TeacherExport::Network(&teacher),
        students: &students,
        teacher_norm: ChannelNorm {
            mean: vec![0.0; DESCRIPTOR_DIM],
            std: vec![1.0; DESCRIPTOR_DIM],
        },
        calibration: Calibration::IDENTITY,
    };
    write_bundle(
        dir,
        InputSpec::imagenet(SIDE, SIDE),
        &[scale],
        ImageScoreRule::default(),
        Decision {
            threshold: 1.0,
            rule: "benchmark".into(),
        },
        Provenance::default(),
    )
    .expect("writing the benchmark bundle")
}

fn engine_frame(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bundle = bundle(dir.path());
    let image = ustad::bench::synthetic_image(SIDE, SIDE);
    let mut group = c.benchmark_group("engine");
    group.sample_size(20);
    for threads in [1, 0] {
        let mut engine = Engine::load(
            bundle.clone(),
            EngineOptions {
                precision: Precision::F32,
                threads,
            },
        )
        .expect("loading the engine");
        let name = if threads == 0 {
            "p33_s4_64x64_all_threads".to_string()
        } else {
            format!("p33_s4_64x64_{threads}_thread")
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let analysis = engine.analyze(&image).expect("frame");
                std::hint::black_box(analysis.score)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine_frame);
criterion_main!(benches);
