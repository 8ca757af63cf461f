#!/usr/bin/env python3
"""Builds the published speed/accuracy table of ustad's presets.

For each bundle given (one per preset) it runs, with the same thread count throughout:

  ustad eval  --bundle B --data DATA --out WORK/<preset>/eval      accuracy on the test split
  ustad bench --bundle B --precision f32,int8 --json               latency (int8 if exported)
  benches/ort_compare.sh --bundle B --json                         ratio against ONNX Runtime

and writes a markdown table (preset, input, scales, image AUROC, pixel AUROC, AU-PRO, false-reject
rate, escape rate, f32 ms, int8 ms, ratio vs ORT) with the machine description and the exact
commands into --out. With --readme it also replaces everything between the markers
`<!-- results:begin -->` and `<!-- results:end -->` of that file. Nothing is typed by hand, so
the numbers in README.md are always the output of these commands.

Only the Python standard library is needed here (ort_compare.sh brings its own venv).

Example:
  cargo build --release -p ustad
  python3 scripts/results_table.py --data ../shared/data/mtd --threads 2 \\
      --out results.md --readme README.md models/bundles/mtd-edge models/bundles/mtd-dense
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def default_ustad() -> Path:
    if os.environ.get("USTAD_BIN"):
        return Path(os.environ["USTAD_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "ustad"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", help="bundle directories, or NAME=DIR to name the preset")
    p.add_argument("--data", required=True, type=Path, help="MVTec-layout dataset (test split used)")
    p.add_argument("--threads", type=int, default=0, help="threads for every run (0 = all cores)")
    p.add_argument("--runs", type=int, default=20, help="timed frames per benchmark")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--limit", type=int, help="images per category for eval (quick runs only)")
    cache = Path.home() / ".cache" / "ustad" / "results"
    p.add_argument("--out", type=Path, default=cache / "results.md", help="markdown output")
    p.add_argument("--work", type=Path, default=cache,
                   help="eval reports (report.json, curves, overlays) and raw bench/ORT JSON")
    p.add_argument("--readme", type=Path, help="splice the table into this file between the markers")
    p.add_argument("--ustad", type=Path, default=default_ustad(),
                   help="ustad binary (default: $USTAD_BIN or $CARGO_TARGET_DIR/release/ustad)")
    p.add_argument("--skip-ort", action="store_true", help="leave the two ORT columns empty")
    p.add_argument("--skip-int8", action="store_true",
                   help="bench f32 only even where int8 is exported (its column then reads \"n/b\")")
    return p.parse_args()


def run(cmd: list[str], log: list[str], capture: bool = True) -> str:
    log.append(" ".join(shlex.quote(c) for c in cmd))
    print("+", log[-1], file=sys.stderr, flush=True)
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    out = subprocess.run(cmd, check=True, text=True, env=env,
                         stdout=subprocess.PIPE if capture else None)
    return out.stdout or ""


def machine(threads: int) -> str:
    model, cpus = "unknown CPU", str(os.cpu_count())
    try:
        for line in subprocess.run(["lscpu"], check=True, text=True, stdout=subprocess.PIPE).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "CPU(s)":
                cpus = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    used = threads or os.cpu_count()
    return f"{model}, {cpus} cores (lscpu), {used} threads used"


def describe(bundle: Path) -> tuple[str, str, bool]:
    manifest = tomllib.loads((bundle / "bundle.toml").read_text())
    size = f"{manifest['input']['width']}×{manifest['input']['height']}"
    scales = ", ".join(f"p{s['patch_size']}/s{s['stride']}" for s in manifest["scales"])
    int8 = all("int8" in s for s in manifest["scales"])
    return size, scales, int8


def fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def measure(name: str, bundle: Path, args: argparse.Namespace, log: list[str]) -> dict:
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    u = str(args.ustad)
    threads = str(args.threads)
    size, scales, has_int8 = describe(bundle)

    cmd = [u, "eval", "--bundle", str(bundle), "--data", str(args.data),
           "--out", str(work / "eval"), "--threads", threads]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    run(cmd, log, capture=False)
    report = json.loads((work / "eval" / "report.json").read_text())

    precisions = "f32,int8" if has_int8 and not args.skip_int8 else "f32"
    bench = json.loads(run([u, "bench", "--bundle", str(bundle), "--precision", precisions,
                            "--threads", threads, "--warmup", str(args.warmup),
                            "--runs", str(args.runs), "--json"], log))
    (work / "bench.json").write_text(json.dumps(bench, indent=2))
    measured = [r for r in bench["results"] if r["status"] == "measured"]
    ms = {r["precision"]: r["median_ms"] for r in measured}
    verdict_ms = {r["precision"]: r["verdict_median_ms"] for r in measured}
    gmac = measured[0]["macs"] / 1e9 if measured else None
    # The faster precision within the parity bound is what the daemon would run (bench's pick);
    # a part waits for its verdict, the map of map-only scales comes after (rejects only).
    pick = bench.get("recommendation")
    fps = 1000 / verdict_ms[pick] if pick in verdict_ms else None

    ratio = {}
    if not args.skip_ort:
        for precision in precisions.split(","):
            ort = json.loads(run([str(REPO / "benches" / "ort_compare.sh"), "--bundle", str(bundle),
                                  "--precision", precision, "--threads", threads,
                                  "--warmup", str(args.warmup), "--runs", str(args.runs),
                                  "--ustad", u, "--json"], log))
            (work / f"ort-{precision}.json").write_text(json.dumps(ort, indent=2))
            ratio[precision] = ort["ratio_ustad_frame_to_ort_networks"]

    t = report["at_threshold"]
    return {
        "preset": name, "input": size, "scales": scales,
        "image_auroc": report["image_auroc"], "pixel_auroc": report["pixel_auroc"],
        "image_auroc_ci": (report["image_auroc_interval"]["low"], report["image_auroc_interval"]["high"]),
        "au_pro": report["au_pro"], "frr": t["false_reject_rate"], "escape": t["escape_rate"],
        "f32_ms": ms.get("f32"), "int8_ms": ms.get("int8"),
        "verdict_ms": verdict_ms.get(pick),
        "ratio": ratio.get("f32"), "ratio_int8": ratio.get("int8"),
        "gmac": gmac, "fps": fps, "pick": pick,
        "int8_skipped": has_int8 and args.skip_int8,
        "images": report["images"], "recommendation": bench.get("recommendation"),
    }


def table(rows: list[dict], args: argparse.Namespace, log: list[str]) -> str:
    pct = lambda v: fmt(None if v is None else 100 * v, ".1f") + ("" if v is None else " %")  # noqa: E731
    lines = [
        f"<!-- generated by scripts/results_table.py on {datetime.date.today()}; do not edit by hand -->",
        "",
        "| preset | input | scales (p/stride) | image AUROC (95 % CI) | pixel AUROC | AU-PRO@0.3 | false rejects | escapes | GMAC | f32 ms | int8 ms | verdict ms | frames/s | ustad / ORT f32 | ustad / ORT int8 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['input']} | {r['scales']} | {fmt(r['image_auroc'], '.3f')} "
            f"({r['image_auroc_ci'][0]:.3f}–{r['image_auroc_ci'][1]:.3f}) "
            f"| {fmt(r['pixel_auroc'], '.3f')} | {fmt(r['au_pro'], '.3f')} | {pct(r['frr'])} "
            f"| {pct(r['escape'])} | {fmt(r['gmac'], '.1f')} | {fmt(r['f32_ms'], '.1f')} "
            f"| {fmt(r['int8_ms'], '.1f', 'n/b' if r['int8_skipped'] else '—')} "
            f"| {fmt(r['verdict_ms'], '.1f')} "
            f"| {fmt(r['fps'], '.1f')}{'' if r['pick'] is None else ' (' + r['pick'] + ')'} "
            f"| {fmt(r['ratio'], '.2f')} "
            f"| {fmt(r['ratio_int8'], '.2f', 'n/b' if r['int8_skipped'] else '—')} |"
        )
    images = sorted({r["images"] for r in rows})
    lines += [
        "",
        f"Dataset: `{args.data}` test split ({', '.join(map(str, images))} images"
        f"{', limited to ' + str(args.limit) + ' per category' if args.limit else ''}). "
        "Image AUROC interval: DeLong, as `ustad eval` reports it. "
        "False rejects and escapes at each bundle's own threshold. Latency: median whole frame "
        f"(resize, networks, scoring) over {args.runs} frames after {args.warmup} warm-up; int8 "
        "\"—\" = not exported, \"n/b\" = exported but not benchmarked (--skip-int8). GMAC: all networks "
        "of one frame, counted from the graphs. Verdict ms: the median time to the verdict alone "
        "(resize, the networks of the scales that judge, scoring), at the precision `ustad bench` "
        "recommends (the fastest within its parity bound); it is below the whole frame only where "
        "scales feed the anomaly map alone, which the daemon draws for rejected parts while no part "
        "waits. Frames/s: 1000 / verdict ms, one part at a time. ustad / ORT: ustad's whole frame over ONNX Runtime's time for "
        "the same network files alone (f32, or the bundle's int8 QOperator graphs), in ORT's faster schedule "
        "(sequential or one thread per network).",
        "",
        f"Machine: {machine(args.threads)}.",
        "",
        "Commands:",
        "",
        "```sh",
        *log,
        "```",
    ]
    return "\n".join(lines) + "\n"


def splice(readme: Path, text: str) -> None:
    content = readme.read_text()
    start, end = content.find(BEGIN), content.find(END)
    if start < 0 or end < start:
        sys.exit(f"{readme}: needs the markers {BEGIN} and {END} (in that order)")
    readme.write_text(content[: start + len(BEGIN)] + "\n" + text + content[end:])


def main() -> None:
    args = parse_args()
    if not args.ustad.is_file():
        sys.exit(f"{args.ustad}: no ustad binary (cargo build --release -p ustad, or pass --ustad)")
    log = [" ".join(shlex.quote(a) for a in ["python3", "scripts/results_table.py", *sys.argv[1:]])]
    rows = []
    for spec in args.bundles:
        name, _, path = spec.rpartition("=")
        bundle = Path(path)
        rows.append(measure(name or bundle.name, bundle, args, log))
    text = table(rows, args, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if args.readme:
        splice(args.readme, text)
        print(f"spliced into {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
