#!/usr/bin/env python3
"""Writes the teacher-effect table of models/teachers/README.md from `ustad eval` reports.

Each argument is LABEL=REPORT.json[:BUNDLE]: the report.json that `ustad eval --out DIR` wrote
for a bundle fitted with the same preset and students on one teacher variant, and optionally
the bundle (its provenance gives the fit's seed, steps and final loss). The reports are copied
to models/teachers/effect/LABEL.json, so the table can be regenerated from the repository, and
the table between `<!-- teacher-effect:begin -->` and `<!-- teacher-effect:end -->` is replaced.

Example:
  python3 scripts/teacher_effect.py \\
      patch=/tmp/eval-patch/report.json dense=/tmp/eval-dense/report.json
  python3 scripts/teacher_effect.py            # regenerate from models/teachers/effect/
"""
import json
import shutil
import sys
from pathlib import Path

from markers import splice

root = Path(__file__).resolve().parent.parent / "models" / "teachers"
store = root / "effect"
readme = root / "README.md"

store.mkdir(exist_ok=True)
for arg in sys.argv[1:]:
    label, _, path = arg.partition("=")
    shutil.copyfile(path, store / f"{label}.json")

rows = [
    "| teacher | image AUROC (95 % CI) | pixel AUROC | AU-PRO@0.3 | false rejects | escapes | per defect (image AUROC) |",
    "|---|---|---|---|---|---|---|",
]
for report_path in sorted(store.glob("*.json")):
    r = json.loads(report_path.read_text())
    ci = r["image_auroc_interval"]
    t = r["at_threshold"]
    per = ", ".join(
        f"{d['defect']} {d['image_auroc']:.2f}"
        for d in r.get("per_defect", [])
        if d.get("image_auroc") is not None
    )
    rows.append(
        f"| {report_path.stem} | {r['image_auroc']:.3f} ({ci['low']:.3f}–{ci['high']:.3f}) | "
        f"{r['pixel_auroc']:.3f} | {r['au_pro']:.3f} | {100 * t['false_reject_rate']:.1f} % | "
        f"{100 * t['escape_rate']:.1f} % | {per or '–'} |"
    )
table = "\n".join(rows)
splice(readme, "teacher-effect", table)
print(table)
