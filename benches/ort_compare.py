#!/usr/bin/env python3
"""ustad against ONNX Runtime on the same exported networks of a bundle.

1. Runs `ustad bench --json --dump DIR` for the bundle: ustad's whole per-frame time (resize,
   normalise, every network, error/variance, fusion, image score), plus the preprocessed input
   and every network's output as raw f32 files.
2. Loads the same ONNX files into ONNX Runtime (CPU provider, all graph optimisations) and times
   the networks alone on that exact input, in two schedules:
   - sequential: one network after another, each session with intra_op_num_threads = THREADS
     (how ORT is usually deployed);
   - parallel: every network at once on a pool of THREADS Python threads, each session with
     intra_op_num_threads = 1 (ustad's own schedule; ORT releases the GIL while running).
3. Prints both ORT times, ustad's time, and the ratio ustad whole frame / ORT networks only
   against the faster ORT schedule (the baseline most favourable to ORT), and checks that the
   two runtimes agree: max |ORT − tract| of the teacher output (and of every network).

Run it through benches/ort_compare.sh, which provides onnxruntime and numpy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent


def default_ustad() -> Path:
    if os.environ.get("USTAD_BIN"):
        return Path(os.environ["USTAD_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "ustad"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, type=Path, help="model bundle directory")
    p.add_argument("--threads", type=int, default=0, help="threads for both runtimes (0 = all cores)")
    p.add_argument("--precision", default="f32", choices=["f32", "int8"],
                   help="which network files to compare (int8 = the bundle's QOperator graphs)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--image", type=Path, help="benchmark image (default: ustad's synthetic one)")
    p.add_argument("--ustad", type=Path, default=default_ustad(),
                   help="ustad binary (default: $USTAD_BIN or $CARGO_TARGET_DIR/release/ustad)")
    p.add_argument("--mode", default="both", choices=["sequential", "parallel", "both"],
                   help="ORT schedule(s) to time")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p.parse_args()


def run_ustad(args: argparse.Namespace, threads: int, dump: Path) -> dict:
    if not args.ustad.is_file():
        sys.exit(f"{args.ustad}: no ustad binary (cargo build --release -p ustad, or pass --ustad)")
    cmd = [str(args.ustad), "bench", "--bundle", str(args.bundle), "--precision", args.precision,
           "--threads", str(threads), "--warmup", str(args.warmup), "--runs", str(args.runs),
           "--json", "--dump", str(dump)]
    if args.image:
        cmd += ["--image", str(args.image)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
    report = json.loads(out.stdout)
    for r in report["results"]:
        if r["status"] == "measured" and r["precision"] == args.precision:
            return {"command": " ".join(cmd), "report": report, "result": r}
    sys.exit(f"ustad bench did not measure {args.precision}: {report['results']}")


def session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def time_frames(frame, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        frame()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        frame()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def p99(times: list[float]) -> float:
    s = sorted(times)
    return s[max(1, -(-99 * len(s) // 100)) - 1]


def main() -> None:
    args = parse_args()
    threads = args.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ustad-ort-") as tmp:
        dump_root = Path(tmp)
        ustad = run_ustad(args, threads, dump_root)
        dump_dir = dump_root / args.precision
        dump = json.loads((dump_dir / "dump.json").read_text())
        x = np.fromfile(dump_dir / dump["input"], dtype="<f4").reshape(dump["input_shape"])
        nets = dump["networks"]
        tract_out = {
            n["label"]: np.fromfile(dump_dir / n["output"], dtype="<f4").reshape(n["output_shape"])
            for n in nets
        }

    result: dict = {
        "bundle": str(args.bundle),
        "precision": args.precision,
        "threads": threads,
        "onnxruntime": ort.__version__,
        "networks": [n["label"] for n in nets],
        "ustad_command": ustad["command"],
        "ustad_median_ms": ustad["result"]["median_ms"],
        "ustad_p99_ms": ustad["result"]["p99_ms"],
    }

    # Agreement first (one run per network, threads as in the sequential schedule).
    seq = [(n["label"], session(n["onnx"], threads)) for n in nets]
    name = lambda s: s.get_inputs()[0].name  # noqa: E731
    diffs = {}
    for label, s in seq:
        y = s.run(None, {name(s): x})[0]
        ref = tract_out[label]
        if y.shape != ref.shape:
            sys.exit(f"{label}: ORT output {y.shape}, tract {ref.shape}")
        diffs[label] = {
            "max_abs_diff": float(np.max(np.abs(y - ref))),
            "output_range": float(ref.max() - ref.min()),
        }
    teachers = [d for label, d in diffs.items() if label.endswith("/teacher")]
    result["teacher_max_abs_diff"] = max(d["max_abs_diff"] for d in teachers)
    result["teacher_output_range"] = min(d["output_range"] for d in teachers)
    result["max_abs_diff_all_networks"] = max(d["max_abs_diff"] for d in diffs.values())
    result["agreement"] = diffs

    if args.mode in ("sequential", "both"):
        def frame_seq() -> None:
            for _, s in seq:
                s.run(None, {name(s): x})
        t = time_frames(frame_seq, args.warmup, args.runs)
        result["ort_sequential_median_ms"] = statistics.median(t)
        result["ort_sequential_p99_ms"] = p99(t)
    if args.mode in ("parallel", "both"):
        par = [session(n["onnx"], 1) for n in nets]
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            def frame_par() -> None:
                list(pool.map(lambda s: s.run(None, {name(s): x}), par))
            t = time_frames(frame_par, args.warmup, args.runs)
        result["ort_parallel_median_ms"] = statistics.median(t)
        result["ort_parallel_p99_ms"] = p99(t)

    schedules = {k: v for k, v in result.items() if k.startswith("ort_") and k.endswith("_median_ms")}
    best_key = min(schedules, key=schedules.get)
    result["ort_best_schedule"] = best_key.removeprefix("ort_").removesuffix("_median_ms")
    result["ort_best_median_ms"] = schedules[best_key]
    result["ratio_ustad_frame_to_ort_networks"] = result["ustad_median_ms"] / schedules[best_key]

    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"bundle {args.bundle}  precision {args.precision}  threads {threads}  "
          f"onnxruntime {ort.__version__}  networks {len(nets)}")
    print(f"agreement ORT vs tract: teacher max |diff| {result['teacher_max_abs_diff']:.3g} "
          f"(smallest teacher output range {result['teacher_output_range']:.3g}); "
          f"all networks max |diff| {result['max_abs_diff_all_networks']:.3g}")
    if "ort_sequential_median_ms" in result:
        print(f"ORT networks only, sequential ({threads} intra-op threads each): "
              f"median {result['ort_sequential_median_ms']:.2f} ms, p99 {result['ort_sequential_p99_ms']:.2f} ms")
    if "ort_parallel_median_ms" in result:
        print(f"ORT networks only, parallel (1 thread per network, {threads} at once): "
              f"median {result['ort_parallel_median_ms']:.2f} ms, p99 {result['ort_parallel_p99_ms']:.2f} ms")
    print(f"ustad whole frame (networks + scoring): median {result['ustad_median_ms']:.2f} ms, "
          f"p99 {result['ustad_p99_ms']:.2f} ms")
    print(f"ratio ustad frame / ORT networks ({result['ort_best_schedule']}): "
          f"{result['ratio_ustad_frame_to_ort_networks']:.2f}")


if __name__ == "__main__":
    main()
