//! `ustad bench` as a library: per-frame latency of a bundle at each precision, where the time
//! goes, and which precision a device should run.
//!
//! Precision is a per-device choice (DESIGN.md §5: int8 is 3.7× *slower* than f32 on x86
//! without VNNI, f16 only pays on ARMv8.2 fp16 cores), so it is measured, never assumed. Each
//! precision is loaded fresh, warmed up, then timed over repeated whole frames
//! ([`Engine::analyze`]: resize, normalise, every network, scoring); the recommendation is the
//! fastest precision whose anomaly map stays within a parity bound of the f32 map on the same
//! image.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{DynamicImage, RgbImage};
use serde::Serialize;
use thiserror::Error;

use crate::percentile::{median, percentile};
use ustad_core::bundle::cost::{CostError, ScaleCost, network_macs, scale_costs};
use ustad_core::bundle::{Bundle, Precision};
use ustad_core::engine::{Engine, EngineError, EngineOptions};
use ustad_core::judge::preprocess;

/// Why a benchmark could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Cost(#[from] CostError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("at least one timed run is needed")]
    NoRuns,
}

/// How to benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchOptions {
    /// Network threads (0 = one per core), as in [`EngineOptions`].
    pub threads: usize,
    /// Untimed frames first: tract allocates scratch space and the caches warm up.
    pub warmup: usize,
    /// Timed frames.
    pub runs: usize,
    /// Largest acceptable `max |map − f32 map| / (max − min of the f32 map)`.
    pub parity_bound: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            warmup: 3,
            runs: 20,
            parity_bound: 0.05,
        }
    }
}

/// Median time of one network over the timed runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkTiming {
    pub network: String,
    pub median_ms: f64,
    pub macs: u64,
}

/// How far a precision's anomaly map is from the f32 map of the same image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Parity {
    pub max_abs_diff: f64,
    /// `max_abs_diff` over the f32 map's spread (max − min): scale-free, so one bound fits
    /// every bundle and calibration.
    pub relative: f64,
    pub within_bound: bool,
}

/// The measurements of one precision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrecisionBench {
    pub precision: Precision,
    pub load_ms: f64,
    pub runs: usize,
    /// The whole frame: verdict and anomaly map.
    pub median_ms: f64,
    /// The verdict alone ([`Engine::judge`]): what a part waits for before the actuator hears
    /// of it. Below `median_ms` only for bundles with map-only scales, whose map the daemon
    /// draws for rejected parts alone.
    pub verdict_median_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    /// Per-network medians. The networks run in parallel, so these overlap and do not add up
    /// to the frame time; the largest one bounds it from below.
    pub networks: Vec<NetworkTiming>,
    /// Multiply-accumulates of all networks for one frame.
    pub macs: u64,
    /// `2 · macs / median frame time`.
    pub gflops: f64,
    /// Peak resident memory of the process while this precision was loaded and run (VmHWM,
    /// reset before loading where the kernel allows), KiB.
    pub peak_rss_kib: Option<u64>,
    /// Image score of the benchmark image (a quick sanity check between precisions).
    pub score: f32,
    /// Against f32; `None` for f32 itself.
    pub parity: Option<Parity>,
}

/// What happened to one requested precision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Measured(PrecisionBench),
    /// The bundle has no networks for it (int8 not exported).
    Missing {
        precision: Precision,
        reason: String,
    },
    /// Loading or running failed (e.g. a tract build without the f16 transform).
    Failed {
        precision: Precision,
        error: String,
    },
}

/// The whole `ustad bench` result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub bundle: std::path::PathBuf,
    pub cpu: String,
    /// The ISA rung tract picked its kernels for ([`ustad_core::engine::cpu_kernels`]).
    pub kernels: String,
    pub cores: usize,
    pub threads: usize,
    pub input_width: usize,
    pub input_height: usize,
    pub warmup: usize,
    pub runs: usize,
    pub parity_bound: f64,
    /// Per-layer arithmetic of each scale's networks.
    pub scales: Vec<ScaleCost>,
    pub results: Vec<Outcome>,
    /// Fastest measured precision within the parity bound.
    pub recommendation: Option<Precision>,
    pub recommendation_reason: String,
}

/// Why `bundle` cannot run at `precision`, if it cannot.
pub fn missing_precision(bundle: &Bundle, precision: Precision) -> Option<String> {
    let missing = bundle
        .manifest
        .scales
        .iter()
        .filter(|s| bundle.networks(s, precision).is_none())
        .count();
    (missing > 0).then(|| {
        format!(
            "the bundle has no {precision} networks for {missing} of {} scales (export it with --precision {precision})",
            bundle.manifest.scales.len()
        )
    })
}

/// Compares `map` with the f32 `reference` (same size).
pub fn parity(reference: &[f32], map: &[f32], bound: f64) -> Parity {
    let (lo, hi) = reference
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let spread = f64::from(hi - lo);
    let max_abs_diff = if reference.len() == map.len() {
        reference
            .iter()
            .zip(map)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(
                0.0,
                |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
            )
    } else {
        f64::INFINITY
    };
    // A constant reference map has no spread: only an identical map is within any bound.
    let relative = if spread > 0.0 && spread.is_finite() {
        max_abs_diff / spread
    } else if max_abs_diff == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    Parity {
        max_abs_diff,
        relative,
        within_bound: relative <= bound,
    }
}

/// Peak resident set size of this process (VmHWM), KiB; `None` off Linux.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0, `clear_refs` value 5), so each precision's
/// peak is its own and not the largest so far. Best effort: returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The CPU's model name from /proc/cpuinfo, for reports ("unknown" elsewhere).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A deterministic benchmark image at the bundle's input size (so resizing costs nothing and
/// the frame time is the engine's): smooth gradients plus mild texture.
pub fn synthetic_image(width: usize, height: usize) -> DynamicImage {
    DynamicImage::ImageRgb8(image::RgbImage::from_fn(
        width as u32,
        height as u32,
        |x, y| {
            let texture = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)) % 23) as u8;
            let v = ((x * 3 + y * 2) % 200) as u8 + texture;
            image::Rgb([v, v, v])
        },
    ))
}

/// Everything one precision run produces besides its numbers.
pub struct PrecisionRun {
    pub bench: PrecisionBench,
    /// Fused anomaly map of the benchmark image.
    pub map: Vec<f32>,
    /// `(label, output)` of every network for the benchmark image, in engine order.
    pub outputs: Vec<(String, Vec<f32>)>,
    /// The benchmark image as the engine judged it (resized to the input size).
    pub judged: Arc<RgbImage>,
}

/// Loads `bundle` at `precision` and times `options.runs` frames of `image` after
/// `options.warmup` untimed ones.
pub fn bench_precision(
    bundle: &Bundle,
    precision: Precision,
    options: &BenchOptions,
    image: &DynamicImage,
) -> Result<PrecisionRun, BenchError> {
    if options.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let macs = network_macs(bundle)?;
    reset_peak_rss();
    let start = Instant::now();
    let mut engine = Engine::load(
        bundle.clone(),
        EngineOptions {
            precision,
            threads: options.threads,
        },
    )?;
    let load_ms = ms(start.elapsed());
    for _ in 0..options.warmup {
        engine.analyze(image)?;
    }
    let mut frames = Vec::with_capacity(options.runs);
    let mut verdicts = Vec::with_capacity(options.runs);
    let mut per_network: Vec<Vec<f64>> = Vec::new();
    let mut score = f32::NAN;
    let mut map = Vec::new();
    for run in 0..options.runs {
        let start = Instant::now();
        engine.judge(image)?;
        verdicts.push(ms(start.elapsed()));
        let analysis = engine.map()?;
        frames.push(ms(start.elapsed()));
        score = analysis.score;
        // Copied outside the timed span, and only once: an extra frame just for the map would
        // double the cost of slow precisions (f16 emulated on x86 takes seconds per frame).
        if run + 1 == options.runs {
            map = analysis.map.to_vec();
        }
        let timings = engine.network_timings();
        per_network.resize_with(timings.len(), Vec::new);
        for (samples, (_, t)) in per_network.iter_mut().zip(&timings) {
            samples.push(ms(*t));
        }
    }
    let outputs = engine
        .network_outputs()
        .into_iter()
        .map(|(label, values)| (label.to_string(), values.to_vec()))
        .collect();
    let labels: Vec<String> = engine
        .network_timings()
        .iter()
        .map(|(l, _)| l.to_string())
        .collect();
    let networks = labels
        .into_iter()
        .zip(per_network.iter_mut())
        .zip(macs.iter().copied().chain(std::iter::repeat(0)))
        .map(|((network, samples), macs)| NetworkTiming {
            network,
            median_ms: median(samples),
            macs,
        })
        .collect();
    let mean_ms = frames.iter().sum::<f64>() / frames.len() as f64;
    let median_ms = median(&mut frames);
    let verdict_median_ms = median(&mut verdicts);
    let total_macs: u64 = macs.iter().sum();
    Ok(PrecisionRun {
        bench: PrecisionBench {
            precision,
            load_ms,
            runs: options.runs,
            median_ms,
            verdict_median_ms,
            p99_ms: percentile(&frames, 0.99),
            mean_ms,
            min_ms: frames.first().copied().unwrap_or(f64::NAN),
            networks,
            macs: total_macs,
            gflops: 2.0 * total_macs as f64 / (median_ms * 1e-3) / 1e9,
            peak_rss_kib: peak_rss_kib(),
            score,
            parity: None,
        },
        map,
        outputs,
        judged: Arc::clone(engine.judged_image()),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs every precision of `precisions` (in that order) on `image`, compares each map with the
/// f32 map (computed once more at the end if f32 was not requested), and recommends one.
///
/// `on_run` sees every finished precision run (the CLI dumps network outputs from it).
pub fn run_bench(
    bundle: &Bundle,
    precisions: &[Precision],
    options: &BenchOptions,
    image: &DynamicImage,
    mut on_run: impl FnMut(&PrecisionRun),
) -> Result<BenchReport, BenchError> {
    let mut results = Vec::new();
    let mut maps: Vec<Option<Vec<f32>>> = Vec::new();
    let mut reference: Option<Vec<f32>> = None;
    for &precision in precisions {
        if let Some(reason) = missing_precision(bundle, precision) {
            results.push(Outcome::Missing { precision, reason });
            maps.push(None);
            continue;
        }
        match bench_precision(bundle, precision, options, image) {
            Ok(run) => {
                on_run(&run);
                if precision == Precision::F32 {
                    reference = Some(run.map.clone());
                }
                maps.push(Some(run.map));
                results.push(Outcome::Measured(run.bench));
            }
            Err(e) => {
                log::warn!("{precision}: {e}");
                results.push(Outcome::Failed {
                    precision,
                    error: e.to_string(),
                });
                maps.push(None);
            }
        }
    }
    let needs_reference = results
        .iter()
        .any(|r| matches!(r, Outcome::Measured(b) if b.precision != Precision::F32));
    if reference.is_none() && needs_reference {
        // One f32 frame is enough for parity; its speed is not part of the report.
        let mut engine = Engine::load(
            bundle.clone(),
            EngineOptions {
                precision: Precision::F32,
                threads: options.threads,
            },
        )?;
        reference = Some(engine.analyze(image)?.map.to_vec());
    }
    if let Some(reference) = &reference {
        for (outcome, map) in results.iter_mut().zip(&maps) {
            if let (Outcome::Measured(b), Some(map)) = (outcome, map)
                && b.precision != Precision::F32
            {
                b.parity = Some(parity(reference, map, options.parity_bound));
            }
        }
    }
    let (recommendation, recommendation_reason) = recommend(&results, options.parity_bound);
    let (height, width) = (bundle.manifest.input.height, bundle.manifest.input.width);
    Ok(BenchReport {
        bundle: bundle.dir.clone(),
        cpu: cpu_model(),
        kernels: ustad_core::engine::cpu_kernels(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        threads: options.threads,
        input_width: width,
        input_height: height,
        warmup: options.warmup,
        runs: options.runs,
        parity_bound: options.parity_bound,
        scales: scale_costs(bundle)?,
        results,
        recommendation,
        recommendation_reason,
    })
}

/// The fastest measured precision whose map is within the parity bound (f32 is the reference
/// and always qualifies), with a sentence saying why.
pub fn recommend(results: &[Outcome], bound: f64) -> (Option<Precision>, String) {
    let qualifying = results.iter().filter_map(|r| match r {
        Outcome::Measured(b) if b.parity.is_none_or(|p| p.within_bound) => Some(b),
        _ => None,
    });
    let best = qualifying.min_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    let Some(best) = best else {
        return (
            None,
            "no precision was measured within the parity bound".into(),
        );
    };
    let measured = results
        .iter()
        .filter(|r| matches!(r, Outcome::Measured(_)))
        .count();
    let mut reason = if measured == 1 {
        format!(
            "{} is the only precision measured ({:.1} ms median)",
            best.precision, best.median_ms
        )
    } else {
        format!(
            "{} is the fastest ({:.1} ms median) with its map within {:.1} % of f32",
            best.precision,
            best.median_ms,
            100.0 * bound
        )
    };
    for r in results {
        match r {
            Outcome::Measured(b) if b.parity.is_some_and(|p| !p.within_bound) => {
                reason.push_str(&format!(
                    "; {} is off by {:.1} % of the map's spread",
                    b.precision,
                    100.0 * b.parity.map_or(f64::NAN, |p| p.relative)
                ));
            }
            Outcome::Missing { precision, .. } => {
                reason.push_str(&format!("; {precision} is not in the bundle"));
            }
            Outcome::Failed { precision, .. } => {
                reason.push_str(&format!("; {precision} failed to run"));
            }
            _ => {}
        }
    }
    (Some(best.precision), reason)
}

impl BenchReport {
    /// The table `ustad bench` prints.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} — {}×{} input, {} threads ({} cores: {}; tract kernels {}), {} warm-up + {} timed frames\n\n",
            self.bundle.display(),
            self.input_width,
            self.input_height,
            if self.threads == 0 {
                "all".to_string()
            } else {
                self.threads.to_string()
            },
            self.cores,
            self.cpu,
            self.kernels,
            self.warmup,
            self.runs
        );
        s.push_str(
            "precision   median ms    p99 ms  verdict ms   GFLOP/s   peak RSS MiB   load ms   parity (of f32 spread)\n",
        );
        for r in &self.results {
            match r {
                Outcome::Measured(b) => {
                    let parity = b.parity.map_or("reference".to_string(), |p| {
                        format!(
                            "{:.2} %{}",
                            100.0 * p.relative,
                            if p.within_bound { "" } else { " (over bound)" }
                        )
                    });
                    s.push_str(&format!(
                        "{:<9} {:>11.2} {:>9.2} {:>11.2} {:>9.1} {:>14} {:>9.0}   {}\n",
                        b.precision.to_string(),
                        b.median_ms,
                        b.p99_ms,
                        b.verdict_median_ms,
                        b.gflops,
                        b.peak_rss_kib
                            .map_or("?".to_string(), |k| format!("{:.0}", k as f64 / 1024.0)),
                        b.load_ms,
                        parity
                    ));
                }
                Outcome::Missing { precision, reason } => {
                    s.push_str(&format!("{:<9} skipped: {reason}\n", precision.to_string()));
                }
                Outcome::Failed { precision, error } => {
                    s.push_str(&format!("{:<9} failed: {error}\n", precision.to_string()));
                }
            }
        }
        for r in &self.results {
            if let Outcome::Measured(b) = r {
                s.push_str(&format!(
                    "\n{} per network (median ms; networks run in parallel, so they overlap):\n",
                    b.precision
                ));
                for n in &b.networks {
                    let gflops = 2.0 * n.macs as f64 / (n.median_ms * 1e-3) / 1e9;
                    s.push_str(&format!(
                        "  {:<16} {:>9.2} ms  {:>7.2} GMAC  {:>7.1} GFLOP/s\n",
                        n.network,
                        n.median_ms,
                        n.macs as f64 / 1e9,
                        gflops
                    ));
                }
            }
        }
        // A scale of the teacher alone has no student layers to break down.
        for scale in self.scales.iter().filter(|scale| scale.students > 0) {
            s.push_str(&format!(
                "\np{} stride {}: {:.2} GMAC per student × {} students; per layer:\n",
                scale.patch_size,
                scale.stride,
                scale.macs_per_student as f64 / 1e9,
                scale.students
            ));
            for l in &scale.layers {
                s.push_str(&format!(
                    "  {:<36} {:>7.2} GMAC  {:>5.1} %\n",
                    l.layer,
                    l.macs as f64 / 1e9,
                    100.0 * l.share
                ));
            }
        }
        s.push_str(&format!(
            "\nrecommendation: {}\n",
            self.recommendation
                .map_or("none".to_string(), |p| p.to_string())
        ));
        s.push_str(&format!("  {}\n", self.recommendation_reason));
        s
    }
}

/// Writes the normalised input that `run` judged and every network's output as raw
/// little-endian f32 files plus `dump.json`, for comparing against another runtime
/// (`benches/ort_compare.py`). Each network entry names its ONNX file inside the bundle.
pub fn dump_run(dir: &Path, bundle: &Bundle, run: &PrecisionRun) -> Result<(), BenchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let spec = &bundle.manifest.input;
    let input = preprocess::normalise(&run.judged, spec);
    let input_path = dir.join("input.f32");
    std::fs::write(&input_path, f32_bytes(&input)).map_err(io(&input_path))?;
    let files: Vec<&str> = bundle
        .manifest
        .scales
        .iter()
        .filter_map(|s| bundle.networks(s, run.bench.precision))
        .flat_map(|(t, students)| std::iter::once(t).chain(students.iter().map(String::as_str)))
        .collect();
    let mut networks = Vec::new();
    for (i, (label, values)) in run.outputs.iter().enumerate() {
        let name = format!("{}.f32", label.replace('/', "_"));
        let path = dir.join(&name);
        std::fs::write(&path, f32_bytes(values)).map_err(io(&path))?;
        let scale = bundle
            .manifest
            .scales
            .iter()
            .enumerate()
            .find(|(_, s)| label.starts_with(&format!("{}/", s.label())))
            .map(|(index, _)| index);
        let map = scale.and_then(|index| bundle.map_size(index));
        networks.push(serde_json::json!({
            "label": label,
            "onnx": files.get(i).map(|f| bundle.file(f)),
            "output": name,
            "output_shape": map.map(|(h, w)| [1, ustad_core::networks::arch::DESCRIPTOR_DIM, h, w]),
        }));
    }
    let manifest = serde_json::json!({
        "precision": run.bench.precision,
        "input": "input.f32",
        "input_shape": [1, 3, spec.height, spec.width],
        "networks": networks,
    });
    let path = dir.join("dump.json");
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(&path, text).map_err(io(&path))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Resolves a precision list flag: `all` = f32, f16, int8.
pub fn parse_precisions(text: &str) -> Result<Vec<Precision>, String> {
    if text == "all" {
        return Ok(vec![Precision::F32, Precision::F16, Precision::Int8]);
    }
    text.split(',')
        .map(|p| p.trim().parse::<Precision>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ustad_core::networks::arch::{Architecture, Mode};

    #[test]
    fn parity_is_relative_to_the_reference_spread() {
        let reference = [0.0, 5.0, 10.0];
        let p = parity(&reference, &[0.2, 5.0, 10.0], 0.05);
        assert!((p.relative - 0.02).abs() < 1e-6 && p.within_bound, "{p:?}");
        let p = parity(&reference, &[1.0, 5.0, 10.0], 0.05);
        assert!(!p.within_bound);
        let p = parity(&reference, &[f32::NAN, 5.0, 10.0], 0.05);
        assert!(!p.within_bound, "NaN never passes");
        let p = parity(&[1.0, 1.0], &[1.0, 1.0], 0.05);
        assert!(p.within_bound);
    }

    fn measured(precision: Precision, median_ms: f64, relative: Option<f64>) -> Outcome {
        Outcome::Measured(PrecisionBench {
            precision,
            load_ms: 0.0,
            runs: 1,
            median_ms,
            verdict_median_ms: median_ms,
            p99_ms: median_ms,
            mean_ms: median_ms,
            min_ms: median_ms,
            networks: vec![],
            macs: 0,
            gflops: 0.0,
            peak_rss_kib: None,
            score: 0.0,
            parity: relative.map(|relative| Parity {
                max_abs_diff: relative,
                relative,
                within_bound: relative <= 0.05,
            }),
        })
    }

    #[test]
    fn recommends_the_fastest_precision_within_the_bound() {
        let results = [
            measured(Precision::F32, 10.0, None),
            measured(Precision::F16, 30.0, Some(0.001)),
            measured(Precision::Int8, 4.0, Some(0.2)),
        ];
        let (best, why) = recommend(&results, 0.05);
        assert_eq!(best, Some(Precision::F32));
        assert!(why.contains("int8 is off by 20.0 %"), "{why}");

        let results = [
            measured(Precision::F32, 10.0, None),
            measured(Precision::Int8, 4.0, Some(0.01)),
        ];
        assert_eq!(recommend(&results, 0.05).0, Some(Precision::Int8));

        let results = [
            measured(Precision::F32, 10.0, None),
            Outcome::Missing {
                precision: Precision::Int8,
                reason: "absent".into(),
            },
        ];
        let (best, why) = recommend(&results, 0.05);
        assert_eq!(best, Some(Precision::F32));
        assert!(why.contains("int8 is not in the bundle"), "{why}");
    }

    #[test]
    fn layer_macs_add_up_to_the_architecture_total() {
        for (p, stride, divisor) in [(17, 1, 1), (33, 4, 1), (65, 8, 1), (65, 8, 2)] {
            let arch = Architecture::for_patch_size(p)
                .unwrap()
                .with_channel_divisor(divisor)
                .unwrap();
            let mode = Mode::Image { stride };
            let total = arch.macs(mode, 96, 80).unwrap();
            let dir = std::path::PathBuf::from("unused");
            let bundle = Bundle {
                dir,
                manifest: ustad_core::bundle::Manifest {
                    format_version: ustad_core::bundle::FORMAT_VERSION,
                    input: ustad_core::judge::preprocess::InputSpec::imagenet(80, 96),
                    scales: vec![ustad_core::bundle::ScaleSpec {
                        patch_size: p,
                        stride,
                        student_channel_divisor: divisor,
                        reduction: 1,
                        role: Default::default(),
                        teacher: "t.onnx".into(),
                        students: vec!["a.onnx".into(), "b.onnx".into()],
                        int8: None,
                        teacher_mean: vec![],
                        teacher_std: vec![],
                        calibration: ustad_core::judge::score::Calibration::IDENTITY,
                    }],
                    image_score: Default::default(),
                    decision: ustad_core::judge::decide::Decision {
                        threshold: 1.0,
                        rule: String::new(),
                    },
                    provenance: Default::default(),
                    checksums: Default::default(),
                },
            };
            let costs = scale_costs(&bundle).unwrap();
            let sum: u64 = costs[0].layers.iter().map(|l| l.macs).sum();
            assert_eq!(sum, total, "p{p}/{divisor}");
            assert_eq!(costs[0].students, 2);
        }
    }

    #[test]
    fn precision_lists_parse() {
        assert_eq!(parse_precisions("all").unwrap().len(), 3);
        assert_eq!(
            parse_precisions("f32,int8").unwrap(),
            [Precision::F32, Precision::Int8]
        );
        assert!(parse_precisions("f64").is_err());
    }
}
