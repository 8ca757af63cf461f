//! `ustad`: the edge binary. `run` is the daemon (camera or replay → reject line),
//! `check-config` validates its configuration, `score` judges images, `eval` measures a bundle
//! on a labelled test split and `bench` times it. The logic lives in the library; this file
//! only parses arguments and reports errors.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use ustad_core::bundle::{Bundle, Precision};
use ustad_core::engine::{Engine, EngineOptions};
use ustad_core::judge::decide::FailSafePolicy;
use ustad_core::judge::heatmap;

mod measure;

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
    /// Run the edge daemon: camera (or replay) to reject output, until the source ends, a
    /// signal (SIGTERM/SIGINT stop, SIGHUP reloads) or --max-frames; prints a summary.
    Run {
        /// Daemon configuration (see config/ustad.toml).
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many frames (then drain pending rejects and print the summary).
        #[arg(long)]
        max_frames: Option<u64>,
    },
    /// Validate a daemon configuration file without running anything.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Evaluate a bundle on an MVTec-layout test split: image/pixel AUROC, AU-PRO, false
    /// rejects and escapes at the threshold, curves and overlays.
    Eval(measure::EvalArgs),
    /// Per-frame latency per precision, per-network breakdown, and a precision recommendation.
    Bench(measure::BenchArgs),
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
        /// Largest image decoded, in pixels; a larger one is unreadable (and rejected).
        #[arg(long, default_value_t = ustad::capture::decode::DEFAULT_MAX_PIXELS)]
        max_pixels: u64,
        /// Images, or folders of images (searched recursively, in name order).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    // journald under systemd, else stderr; RUST_LOG or `info` (a config's log.level may change it).
    ustad::daemon::service::init_logging();
    match Cli::parse().command {
        Command::Run { config, max_frames } => {
            let summary = ustad::daemon::service::run(&config, max_frames)?;
            println!("{summary}");
            Ok(())
        }
        Command::CheckConfig { file } => {
            print!("{}", ustad::daemon::service::check_config(&file)?);
            Ok(())
        }
        Command::Eval(args) => measure::eval(args),
        Command::Bench(args) => measure::bench(args),
        Command::Score {
            bundle,
            heatmaps,
            precision,
            threads,
            max_pixels,
            images,
        } => score(
            &bundle,
            heatmaps.as_deref(),
            EngineOptions { precision, threads },
            max_pixels,
            &images,
        ),
    }
}

fn score(
    bundle_dir: &Path,
    heatmaps: Option<&Path>,
    options: EngineOptions,
    max_pixels: u64,
    inputs: &[PathBuf],
) -> Result<()> {
    let bundle = Bundle::load(bundle_dir).context("loading the bundle")?;
    let mut engine = Engine::load(bundle, options).context("loading the networks")?;
    if let Some(dir) = heatmaps {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let files = ustad_core::images::collect_images(inputs)?;
    if files.is_empty() {
        bail!("no images found in {inputs:?}");
    }
    let threshold = engine.threshold();
    // What the daemon's default policy does with a part it cannot judge.
    let unjudged = FailSafePolicy::default().verdict();
    let mut failures = 0;
    let names = heatmap_names(&files);
    for (file, name) in files.iter().zip(&names) {
        let image = match ustad::capture::decode::load_image_file_within(file, max_pixels) {
            Ok(image) => image,
            Err(e) => {
                // A part we cannot read is a part we cannot pass.
                println!("{}\tNaN\t{unjudged}\t(unreadable: {e})", file.display());
                failures += 1;
                continue;
            }
        };
        // The map costs a pass of its own networks in some bundles: drawn only when asked for.
        let judged = engine.judge(&image).and_then(|judgement| {
            if heatmaps.is_some() {
                engine.map()?;
            }
            Ok(judgement)
        });
        match judged {
            Ok(judgement) => {
                println!(
                    "{}\t{:.4}\t{}",
                    file.display(),
                    judgement.score,
                    judgement.verdict
                );
                if let Some(dir) = heatmaps {
                    let analysis = engine.map()?;
                    let overlay = heatmap::overlay_at_threshold(
                        analysis.input,
                        analysis.map,
                        analysis.width,
                        analysis.height,
                        threshold,
                    );
                    let out = dir.join(name);
                    overlay
                        .save(&out)
                        .with_context(|| format!("writing {}", out.display()))?;
                }
            }
            Err(e) => {
                println!("{}\tNaN\t{unjudged}\t({e})", file.display());
                failures += 1;
            }
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be judged (listed above as rejects)",
            files.len()
        );
    }
    Ok(())
}

/// One heatmap file name per judged file, all distinct: each file's path below the folder that
/// all of them share, with `__` for each `/` and `.png` for its extension, so that
/// `a/crack/000.png` and `b/crack/000.png` (every MVTec defect folder has a `000.png`) do not
/// overwrite each other. A name that would still repeat (`x.jpg` beside `x.png`) gets `~2`,
/// `~3`, … in file order.
fn heatmap_names(files: &[PathBuf]) -> Vec<String> {
    let common = common_parent(files);
    let mut taken = HashSet::new();
    files
        .iter()
        .map(|file| {
            let relative = file
                .strip_prefix(&common)
                .unwrap_or(file)
                .with_extension("");
            let parts: Vec<String> = relative
                .components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            let base = parts.join("__");
            let mut name = format!("{base}.png");
            let mut copy = 2;
            while !taken.insert(name.clone()) {
                name = format!("{base}~{copy}.png");
                copy += 1;
            }
            name
        })
        .collect()
}

/// The deepest folder that holds every file of `files` (empty when they share none).
fn common_parent(files: &[PathBuf]) -> PathBuf {
    let mut parents = files.iter().filter_map(|file| file.parent());
    let Some(first) = parents.next() else {
        return PathBuf::new();
    };
    let mut common: Vec<Component> = first.components().collect();
    for parent in parents {
        let shared = common
            .iter()
            .zip(parent.components())
            .take_while(|(a, b)| **a == *b)
            .count();
        common.truncate(shared);
    }
    common.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[&str]) -> Vec<String> {
        heatmap_names(&files.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn heatmap_names_are_paths_below_the_shared_folder() {
        assert_eq!(
            names(&["d/test/crack/000.png", "d/test/good/000.png"]),
            ["crack__000.png", "good__000.png"]
        );
        assert_eq!(names(&["d/test/crack/000.jpg"]), ["000.png"]);
    }

    #[test]
    fn heatmap_names_never_repeat_across_roots_or_extensions() {
        // Two argument roots with the same layout: the roots tell them apart.
        assert_eq!(
            names(&["a/crack/000.png", "b/crack/000.png"]),
            ["a__crack__000.png", "b__crack__000.png"]
        );
        // Same stem, other extension; and a name that `__` joining would make twice.
        assert_eq!(
            names(&["x/p.png", "x/p.jpg", "x/a__b/c.png", "x/a/b__c.png"]),
            ["p.png", "p~2.png", "a__b__c.png", "a__b__c~2.png"]
        );
    }
}
