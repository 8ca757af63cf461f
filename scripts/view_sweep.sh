#!/usr/bin/env bash
# Fits and evaluates `edge-map`'s judging views alone: the backbone teacher of `edge-map`
# (committed preset, its map scale left out) on one 640×640 input, seen once per reduction in
# REDUCTIONS (5 = a 128² view, 10 = 64²), the views' calibrated maps averaged into the image
# score. Prints the bundle's MTD accuracy on one line. No 640² pass, so a fit takes about a
# minute: this is how `edge-map`'s score views were chosen (models/teachers/README.md).
#
#   scripts/view_sweep.sh NAME REDUCTIONS [SEED]
#   scripts/view_sweep.sh r5r10 5,10
#
# Environment: USTAD_TRAIN, USTAD (release binaries; default target/release), DATA (default
# ../shared/data/mtd), WORK (default /tmp/ustad-view-sweep), FIT_ARGS (more `fit` options,
# e.g. "--validation-fraction 0.5").
set -euo pipefail
name=$1 reductions=$2 seed=${3:-0}
root=$(cd "$(dirname "$0")/.." && pwd)
train=${USTAD_TRAIN:-$root/target/release/ustad-train}
ustad=${USTAD:-$root/target/release/ustad}
data=${DATA:-$root/../shared/data/mtd}
work=${WORK:-/tmp/ustad-view-sweep}
mkdir -p "$work"
base="$root/config/presets/edge-map.toml"
# One scale line of the committed preset, stripped of its reduction and role.
scale=$(grep -m1 'teacher = "backbone"' "$base" | sed -e 's/, reduction = [0-9]*//' -e 's/, role = "[a-z]*"//')
preset="$work/$name.toml"
{
    sed -n -e '/^scales = \[/q' -e "s/^name = .*/name = \"$name\"/" -e '/^[a-z_]* = /p' "$base"
    echo "scales = ["
    for k in ${reductions//,/ }; do
        echo "${scale% \},*}, reduction = $k },"
    done
    echo "]"
    sed -n '/^\[image_score\]/,$p' "$base"
} > "$preset"
rm -rf "${work:?}/$name"
"$train" fit --data "$data" --out "$work/$name" --preset "$preset" --seed "$seed" ${FIT_ARGS:-} \
    > "$work/$name.fit.log" 2>&1 || { tail -5 "$work/$name.fit.log"; exit 1; }
"$ustad" eval --bundle "$work/$name" --data "$data" --threads 2 2>/dev/null > "$work/$name.eval.txt"
pick() { grep -m1 "$1" "$work/$name.eval.txt" | tr -s ' ' | sed 's/^ //'; }
echo "$name (views 640/${reductions//,/, 640/}, seed $seed): $(pick 'image AUROC ') | $(pick 'AU-PRO') | $(pick 'false rejects') | $(pick 'escapes ')"
