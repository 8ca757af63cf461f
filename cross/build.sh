#!/usr/bin/env bash
# Release binaries of the edge daemon (`-p ustad`, default features: v4l2 + gpio + daemon) for each
# target given. Usage: cross/build.sh [TARGET...]   (default: aarch64 and armv7)
# Binaries land in $CARGO_TARGET_DIR/TARGET/release/ustad. Run cross/setup.sh once before.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ustad/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# shellcheck source=cross/env.sh
source cross/env.sh

for t in "${targets[@]}"; do
  cross_check_target "$t"
  echo "== cargo build --release -p ustad --target $t"
  s=$(date +%s)
  cargo build --release -p ustad --bin ustad --target "$t"
  bin="$CARGO_TARGET_DIR/$t/release/ustad"
  [ -x "$bin" ] || { echo "cross/build.sh: $bin was not produced" >&2; exit 1; }
  echo "   $bin: $(stat -c %s "$bin") bytes, $(( $(date +%s) - s )) s; $(file -b "$bin" | cut -d, -f1-2)"
done
