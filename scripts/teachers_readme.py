#!/usr/bin/env python3
"""Writes the results table of models/teachers/README.md from the teachers' report.json files.

Each `ustad-train teacher --out DIR/pNN.ustw ...` run writes pNN.report.json, pNN.loss.csv and
pNN.loss.png beside the weights; this script only copies their numbers into the table between
the markers of models/teachers/README.md, so the README never holds a hand-typed number. It reads
the shipped teachers (models/teachers/pNN.*) and the earlier patch-distilled ones kept for
comparison (models/teachers/patch/pNN.*).
"""
import json
import sys
from pathlib import Path

from markers import splice

root = Path(__file__).resolve().parent.parent / "models" / "teachers"
readme = root / "README.md"
rows = [
    "| file | p | distillation | iterations | crops or patches/s | targets/s | final val. L_k | target variance | LS probe val. L_k: trained | LS probe val. L_k: random teacher | probe: trained / random |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def patch_size(path):
    return int(path.name.split(".")[0][1:])


reports = sorted(root.glob("p*.report.json"), key=patch_size) + sorted(
    (root / "patch").glob("p*.report.json"), key=patch_size
)
for report_path in reports:
    r = json.loads(report_path.read_text())
    mode = r.get("distillation", "patch")
    dense = r.get("dense") or {}
    rate = r.get("patches_per_second") or None
    targets = dense.get("targets_per_second") if dense else rate
    trained, random = r.get("fitted_validation_k"), r.get("random_teacher_fitted_validation_k")
    ratio = trained / random if trained is not None and random else None
    name = report_path.relative_to(root).as_posix().replace(".report.json", ".ustw")
    rows.append(
        f"| `{name}` | {r['patch_size']} | {mode} | {r['iterations']} | {fmt(rate)} | {fmt(targets, 0)} | "
        f"{fmt(r.get('final_validation_k'), 3)} | {fmt(r.get('target_variance'), 3)} | "
        f"{fmt(trained, 3)} | {fmt(random, 3)} | {fmt(ratio, 2)} |"
    )
table = "\n".join(rows)
splice(readme, "teachers", table)
print(table)
