//! The measuring subcommands of the `ustad` binary: `eval` (accuracy on a test split) and
//! `bench` (speed per precision). Kept out of `main.rs` so the daemon's subcommands and these
//! grow independently; the work itself is in [`ustad::eval::run`] and [`ustad::bench`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use ustad::bench::{self, BenchOptions};
use ustad::capture::decode::{DEFAULT_MAX_PIXELS, load_image_file_within};
use ustad::eval::run::{self as eval_run, DEFAULT_FPR_LIMIT, EvalReport};
use ustad_core::bundle::{Bundle, Precision};
use ustad_core::engine::{Engine, EngineOptions};

#[derive(Args)]
pub struct EvalArgs {
    /// Model bundle directory (contains bundle.toml).
    #[arg(long)]
    bundle: PathBuf,
    /// Dataset in MVTec AD layout (test/good, test/<defect>, ground_truth/<defect>).
    #[arg(long)]
    data: PathBuf,
    /// Write report.json, roc.png, pixel_roc.png, pro.png and overlays/ here (created if
    /// needed). Without it only the summary is printed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Network precision: f32, f16 or int8.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Worker threads for the networks (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// At most this many images per category (good and each defect type), in name order.
    #[arg(long)]
    limit: Option<usize>,
    /// Overlays of this many worst false rejects and worst escapes (and half as many
    /// detections).
    #[arg(long, default_value_t = 8)]
    examples: usize,
    /// FPR up to which AU-PRO is integrated.
    #[arg(long, default_value_t = DEFAULT_FPR_LIMIT)]
    fpr_limit: f64,
    /// Largest test image or mask decoded, in pixels; a larger one stops the run, named.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

/// `ustad eval`.
pub fn eval(args: EvalArgs) -> Result<()> {
    // The dataset is checked before the (slow) network load, so a typo fails at once.
    let split =
        eval_run::load_test_split(&args.data, args.limit).context("reading the test split")?;
    let bundle = Bundle::load(&args.bundle).context("loading the bundle")?;
    let mut engine = Engine::load(
        bundle,
        EngineOptions {
            precision: args.precision,
            threads: args.threads,
        },
    )
    .context("loading the networks")?;
    let bar = ProgressBar::new(split.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("scoring {bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let evaluation = eval_run::score_test_split(&mut engine, &split, args.max_pixels, |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let evaluation = evaluation?;
    let (mut report, pixels) = EvalReport::build(
        &evaluation,
        &args.bundle,
        &args.data,
        &args.precision.to_string(),
        args.fpr_limit,
        args.examples,
    )?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        eval_run::write_outputs(out, &mut report, &evaluation, &pixels)?;
    }
    print!("{}", report.summary());
    if let Some(out) = &args.out {
        println!("report, curves and overlays in {}", out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchArgs {
    /// Model bundle directory (contains bundle.toml).
    #[arg(long)]
    bundle: PathBuf,
    /// f32, f16, int8, a comma-separated list, or all. Precisions the bundle lacks are
    /// reported as skipped.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Worker threads for the networks (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Untimed frames before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed frames.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Benchmark image (default: a synthetic image at the bundle's input size), read as the
    /// daemon reads frames.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Largest `--image` decoded, in pixels.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Largest max |map − f32 map| accepted, as a fraction of the f32 map's spread.
    #[arg(long, default_value_t = 0.05)]
    parity_bound: f64,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the preprocessed input and every network's output (raw f32 + dump.json) into
    /// DIR/<precision>/, for benches/ort_compare.py.
    #[arg(long)]
    dump: Option<PathBuf>,
}

/// `ustad bench`.
pub fn bench(args: BenchArgs) -> Result<()> {
    let precisions = bench::parse_precisions(&args.precision).map_err(anyhow::Error::msg)?;
    let bundle = Bundle::load(&args.bundle).context("loading the bundle")?;
    let image = match &args.image {
        Some(path) => load_image_file_within(path, args.max_pixels)?,
        None => bench::synthetic_image(bundle.manifest.input.width, bundle.manifest.input.height),
    };
    let options = BenchOptions {
        threads: args.threads,
        warmup: args.warmup,
        runs: args.runs,
        parity_bound: args.parity_bound,
    };
    let mut dump_error = None;
    let report = bench::run_bench(&bundle, &precisions, &options, &image, |run| {
        log::info!(
            "{}: median {:.2} ms",
            run.bench.precision,
            run.bench.median_ms
        );
        if let Some(dir) = &args.dump
            && dump_error.is_none()
        {
            let dir = dir.join(run.bench.precision.to_string());
            dump_error = bench::dump_run(&dir, &bundle, run).err();
        }
    })
    .context("benchmarking")?;
    if let Some(e) = dump_error {
        return Err(e).context("writing the --dump files");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
