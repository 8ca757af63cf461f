#!/usr/bin/env bash
# Runs benches/ort_compare.py in a private virtual environment with onnxruntime and numpy,
# created on first use under $HOME/.cache/ustad/venv (override with USTAD_VENV).
# Pillow is not needed: the input image is preprocessed by ustad itself (`ustad bench --dump`),
# so both runtimes see bit-identical input.
set -euo pipefail
venv="${USTAD_VENV:-$HOME/.cache/ustad/venv}"
if ! "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
    echo "setting up $venv (onnxruntime, numpy)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet onnxruntime numpy >&2
fi
exec "$venv/bin/python" "$(dirname "$0")/ort_compare.py" "$@"
