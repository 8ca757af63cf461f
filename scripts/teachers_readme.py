#!/usr/bin/env python3
"""Writes the results table of models/teachers/README.md from the teachers' report.json files.

Each `ustad-train teacher --out models/teachers/pNN.ustw ...` run writes pNN.report.json and
pNN.loss.csv beside the weights; this script only copies their numbers into the table between
the markers of models/teachers/README.md, so the README never holds a hand-typed number.
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent / "models" / "teachers"
readme = root / "README.md"
rows = [
    "| p | iterations | patches/s (training) | final val. L_k | target variance | LS-decoder val. L_k: trained | LS-decoder val. L_k: random teacher |",
    "|---|---|---|---|---|---|---|",
]


def fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


for report_path in sorted(root.glob("p*.report.json"), key=lambda p: int(p.stem.split(".")[0][1:])):
    r = json.loads(report_path.read_text())
    rows.append(
        f"| {r['patch_size']} | {r['iterations']} | {fmt(r.get('patches_per_second') or None)} | "
        f"{fmt(r.get('final_validation_k'))} | {fmt(r.get('target_variance'))} | "
        f"{fmt(r.get('fitted_validation_k'))} | {fmt(r.get('random_teacher_fitted_validation_k'))} |"
    )
table = "\n".join(rows)
text = readme.read_text()
begin, end = "<!-- teachers:begin -->", "<!-- teachers:end -->"
if begin not in text or end not in text:
    sys.exit(f"{readme}: markers {begin} / {end} missing")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
readme.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
print(table)
