//! `ustad`: the edge binary. Scores images with a model bundle; more subcommands (run, eval,
//! bench, check-config) live beside `score` as the daemon grows.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use ustad::bundle::{Bundle, Precision};
use ustad::heatmap;
use ustad::infer::{Engine, EngineOptions};

#[derive(Parser)]
#[command(
    name = "ustad",
    version,
    about = "Student–teacher anomaly detection on the production line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score images with a bundle: one line per image (file, score, verdict).
    Score {
        /// Model bundle directory (contains bundle.toml).
        #[arg(long)]
        bundle: PathBuf,
        /// Write a colour anomaly overlay PNG per image into this directory.
        #[arg(long)]
        heatmaps: Option<PathBuf>,
        /// Network precision: f32, f16 or int8.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Worker threads for the networks (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Images, or folders of images (searched recursively, in name order).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Score {
            bundle,
            heatmaps,
            precision,
            threads,
            images,
        } => score(
            &bundle,
            heatmaps.as_deref(),
            EngineOptions { precision, threads },
            &images,
        ),
    }
}

fn score(
    bundle_dir: &Path,
    heatmaps: Option<&Path>,
    options: EngineOptions,
    inputs: &[PathBuf],
) -> Result<()> {
    let bundle = Bundle::load(bundle_dir).context("loading the bundle")?;
    let mut engine = Engine::load(bundle, options).context("loading the networks")?;
    if let Some(dir) = heatmaps {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let files = ustad::dataset::collect_images(inputs)?;
    let input_spec = engine.bundle().manifest.input.clone();
    if files.is_empty() {
        bail!("no images found in {inputs:?}");
    }
    let threshold = engine.threshold();
    let mut failures = 0;
    for file in &files {
        let image = match image::open(file) {
            Ok(image) => image,
            Err(e) => {
                // A part we cannot read is a part we cannot pass.
                println!("{}\tNaN\treject\t(unreadable: {e})", file.display());
                failures += 1;
                continue;
            }
        };
        match engine.analyze(&image) {
            Ok(analysis) => {
                println!(
                    "{}\t{:.4}\t{}",
                    file.display(),
                    analysis.score,
                    analysis.verdict
                );
                if let Some(dir) = heatmaps {
                    let rgb = ustad::preprocess::resize_rgb(&image, &input_spec);
                    let overlay = heatmap::overlay(
                        &rgb,
                        analysis.map,
                        analysis.width,
                        analysis.height,
                        0.0,
                        threshold.max(1e-3) * 1.5,
                    );
                    let stem = file
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let out = dir.join(format!("{stem}.png"));
                    overlay
                        .save(&out)
                        .with_context(|| format!("writing {}", out.display()))?;
                }
            }
            Err(e) => {
                println!("{}\tNaN\treject\t({e})", file.display());
                failures += 1;
            }
        }
    }
    if failures > 0 {
        log::warn!(
            "{failures} of {} images could not be judged and were rejected",
            files.len()
        );
    }
    Ok(())
}
