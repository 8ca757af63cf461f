#!/usr/bin/env bash
# Fits and evaluates one variant of the `edge-teacher` preset (the backbone teacher alone, no
# students: seconds per fit) and prints its MTD accuracy on one line. What the teacher sees is
# what decides accuracy on these components, so this is how input size, taps and stride are
# chosen before students are trained on a preset.
#
#   scripts/teacher_sweep.sh NAME SIZE STRIDE TAPS [SMOOTHING TOP_FRACTION]
#   scripts/teacher_sweep.sh s256 256 8 res4,res10,res12
#
# Environment: USTAD_TRAIN, USTAD (release binaries; default target/release), DATA (default
# ../shared/data/mtd), WORK (default /tmp/ustad-teacher-sweep).
set -euo pipefail
name=$1 size=$2 stride=$3 taps=$4 sigma=${5:-2.0} top=${6:-0.05}
root=$(cd "$(dirname "$0")/.." && pwd)
train=${USTAD_TRAIN:-$root/target/release/ustad-train}
ustad=${USTAD:-$root/target/release/ustad}
data=${DATA:-$root/../shared/data/mtd}
work=${WORK:-/tmp/ustad-teacher-sweep}
mkdir -p "$work"
nodes=$(printf '"%s", ' ${taps//,/ })
preset="$work/$name.toml"
sed -e "s/^name = .*/name = \"$name\"/" \
    -e "s/^width = .*/width = $size/" -e "s/^height = .*/height = $size/" \
    -e "s/stride = [0-9]*/stride = $stride/" \
    -e "s/teacher_nodes = \[[^]]*\]/teacher_nodes = [${nodes%, }]/" \
    -e "s/^smoothing_sigma = .*/smoothing_sigma = $sigma/" \
    -e "s/^top_fraction = .*/top_fraction = $top/" \
    "$root/config/presets/edge-teacher.toml" > "$preset"
rm -rf "$work/$name"
"$train" fit --data "$data" --out "$work/$name" --preset "$preset" > "$work/$name.fit.log" 2>&1 \
    || { tail -5 "$work/$name.fit.log"; exit 1; }
"$ustad" eval --bundle "$work/$name" --data "$data" --threads 2 2>/dev/null > "$work/$name.eval.txt"
pick() { grep -m1 "$1" "$work/$name.eval.txt" | tr -s ' ' | sed 's/^ //'; }
echo "$name ($size², stride $stride, $taps, σ $sigma, top $top): $(pick 'image AUROC ') | $(pick 'AU-PRO') | $(pick 'false rejects') | $(pick 'escapes ')"
