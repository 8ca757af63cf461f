#!/usr/bin/env python3
"""CI's benchmark step: the packaged (release-profile) binary against itself and ONNX Runtime.

On one bundle, in one run, with the same threads throughout:

  ustad bench --bundle B --precision f32,int8 --json      f32 and int8 whole-frame medians
  benches/ort_compare.sh --bundle B --json                ustad's frame over ORT's networks

and prints the ratios int8 / f32 and ustad / ORT. Shared CI machines make absolute times
meaningless, so nothing is compared with a stored figure; the step fails only on a gross
regression measured within the run: int8 slower than --max-int8-ratio × f32 (1.5× catches a
fallback to generic kernels, as the release profile once had, and the unfused per-channel
requantisation that put it at 2.1×: issue 13), or ustad slower than --max-ort-ratio × ONNX
Runtime. The raw JSON of both tools is written under --out.

The int8 gate needs a CPU with an int8 dot-product instruction (x86 AVX-512 VNNI, AVX-VNNI or
AMX; ARM dotprod). Without one, tract falls back to its AVX2 int8 kernel, which widens each
byte to 16 bits and multiplies lane by lane. On session 17's AMD EPYC (AVX2, no AVX-512 or
VNNI) that kernel ran at 0.5 GMAC/s in release and dev builds alike
(`examples/profile_network.rs` names each node's kernel), and CI measured an `edge` int8 frame
at 52× f32; on the machine issue 13 was closed on (also an AMD EPYC, its instruction set not
recorded) int8 was 0.84× f32. The slow case is not a regression of ours, and `ustad bench`
recommends f32 there, so on such a CPU the ratio is printed, not gated.

Only the Python standard library is needed (ort_compare.sh brings its own venv).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "bundles" / "mtd-edge")
    p.add_argument("--ustad", type=Path, default=target / "release" / "ustad",
                   help="the release-profile binary (default: $CARGO_TARGET_DIR/release/ustad)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-int8-ratio", type=float, default=1.5)
    p.add_argument("--max-ort-ratio", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=Path.home() / ".cache" / "ustad" / "ci-bench")
    return p.parse_args()


def int8_dot_product(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The int8 dot-product instruction set this CPU offers tract's kernels, or None."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    for flag in ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp"):
        if flag in flags:
            return flag
    return None


def run_json(cmd: list[str]) -> dict:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    out = subprocess.run(cmd, check=True, text=True, env=env, stdout=subprocess.PIPE)
    return json.loads(out.stdout)


def main() -> int:
    args = parse_args()
    if not args.ustad.is_file():
        sys.exit(f"{args.ustad}: no ustad binary (cargo build --release -p ustad, or pass --ustad)")
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--bundle", str(args.bundle), "--threads", str(args.threads),
              "--warmup", str(args.warmup), "--runs", str(args.runs), "--json"]

    bench = run_json([str(args.ustad), "bench", "--precision", "f32,int8", *common])
    (args.out / "bench.json").write_text(json.dumps(bench, indent=2))
    ms = {r["precision"]: r["median_ms"] for r in bench["results"] if r["status"] == "measured"}
    if "f32" not in ms or "int8" not in ms:
        sys.exit(f"{args.bundle}: bench measured {sorted(ms)}, needs f32 and int8")

    ort = run_json([str(REPO / "benches" / "ort_compare.sh"), "--ustad", str(args.ustad), *common])
    (args.out / "ort.json").write_text(json.dumps(ort, indent=2))
    ort_ratio = ort["ratio_ustad_frame_to_ort_networks"]

    int8_ratio = ms["int8"] / ms["f32"]
    dot_product = int8_dot_product()
    int8_gate = (f"fails above {args.max_int8_ratio}; {dot_product}" if dot_product else
                 "not gated: this CPU has no int8 dot-product instruction")
    print(f"bundle {args.bundle}, {args.threads} threads, median of {args.runs} frames")
    print(f"  f32 frame   {ms['f32']:8.1f} ms ({1000 / ms['f32']:.1f} frames/s)")
    print(f"  int8 frame  {ms['int8']:8.1f} ms")
    print(f"  int8 / f32  {int8_ratio:8.2f}   ({int8_gate})")
    print(f"  ustad / ORT {ort_ratio:8.2f}   (fails above {args.max_ort_ratio})")
    failures = []
    if dot_product and int8_ratio > args.max_int8_ratio:
        failures.append(f"int8 is {int8_ratio:.2f}x f32")
    if ort_ratio > args.max_ort_ratio:
        failures.append(f"ustad is {ort_ratio:.2f}x ONNX Runtime")
    for failure in failures:
        print(f"error: gross speed regression: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
