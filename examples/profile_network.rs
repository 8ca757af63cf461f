//! Where tract spends a network's time, node by node: the evidence behind README's
//! ustad / ONNX Runtime ratio (issue 13).
//!
//!     cargo run --release --example profile_network -- BUNDLE/p65-s8-teacher.onnx 128 128 [RUNS] [WORDS]
//!
//! Loads the graph at a fixed 1×3×H×W input exactly as the engine does (pinned shape, strided
//! depthwise convolutions channel-last, `into_optimized`), runs it RUNS times single-threaded
//! and prints the slowest nodes with their share of the median frame. WORDS: `as-exported`
//! skips the engine's rewrite; any other word is a tract transform applied on top.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;
use ustad::percentile::median;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, height, width, rest @ ..] = args.as_slice() else {
        bail!(
            "usage: profile_network MODEL.onnx HEIGHT WIDTH [RUNS] [as-exported | TRANSFORM ...]"
        );
    };
    let (height, width): (usize, usize) = (height.parse()?, width.parse()?);
    let runs: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(20);
    let mut typed = tract_onnx::onnx()
        .model_for_path(path)
        .with_context(|| format!("reading {path}"))?
        .with_input_fact(0, f32::fact([1, 3, height, width]).into())?
        .into_typed()?
        .into_decluttered()?;
    // As the engine loads it, unless told `as-exported`; any other word names a tract transform
    // to try on top (e.g. `conv_nhwc`).
    let words = &rest[rest.len().min(1)..];
    if !words.iter().any(|w| w == "as-exported") {
        ustad_core::engine::strided_depthwise::to_channel_last(&mut typed)?;
    }
    for name in words.iter().filter(|w| *w != "as-exported") {
        let transform = tract_onnx::tract_core::transform::get_transform(name)?
            .with_context(|| format!("no tract transform {name}"))?;
        typed = transform.transform_into(typed)?;
    }
    let model = typed.into_optimized()?.into_runnable()?;
    let input: TValue = Tensor::zero::<f32>(&[1, 3, height, width])?.into();
    let mut state = TypedSimpleState::new(&model)?;
    let mut per_node: BTreeMap<usize, (String, Vec<Duration>)> = BTreeMap::new();
    let mut totals = Vec::with_capacity(runs);
    for _ in 0..runs + 2 {
        let started = Instant::now();
        state.run_plan_with_eval(tvec![input.clone()], |session, op_state, node, inputs| {
            let t = Instant::now();
            let outputs = eval(session, op_state, node, inputs);
            let entry = per_node
                .entry(node.id)
                .or_insert_with(|| (describe(node), Vec::new()));
            entry.1.push(t.elapsed());
            outputs
        })?;
        totals.push(started.elapsed());
    }
    // Milliseconds, through the one median every ustad timing uses.
    let median_ms = |v: &[Duration]| median(&mut v.iter().map(|&d| ms(d)).collect::<Vec<_>>());
    let frame = median_ms(&totals);
    let mut rows: Vec<(f64, String)> = per_node
        .into_values()
        .map(|(name, times)| (median_ms(&times), name))
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!(
        "{path}: median {:.2} ms over {runs} runs, {} nodes",
        frame,
        rows.len()
    );
    for (time, name) in rows.iter().take(25) {
        let share = 100.0 * time / frame;
        println!("  {time:8.3} ms {share:5.1} %  {name}");
    }
    Ok(())
}

/// The node's name and op, with what the op says of itself (for a matrix product: the kernel
/// tract picked, which shows a fallback to generic kernels on a CPU it has none for).
fn describe(node: &TypedNode) -> String {
    let info = node.op.info().unwrap_or_default().join("; ");
    if info.is_empty() {
        format!("{} ({})", node.name, node.op.name())
    } else {
        format!("{} ({}: {info})", node.name, node.op.name())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
