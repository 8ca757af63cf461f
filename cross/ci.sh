#!/usr/bin/env bash
# CI stage for the ARM targets (called by .ci/run after the x86_64 tests):
#   1. cross toolchains (cross/setup.sh)
#   2. aarch64: builds the library, its tests and the `ustad` binary, and runs the library's unit
#      tests and the scoring-engine tests on real exported bundles (tests/engine.rs,
#      tests/bundle.rs) under qemu-aarch64 (Cortex-A76, tract forced to its A55 NEON+fp16 kernels)
#   3. armv7 (NEON): builds the same and runs the scoring-engine tests under qemu-arm
#   4. an arm64 .deb of the test build's binary, checked by cross/check_deb.sh (itself self-tested)
# Each stage prints its wall time. UST_CROSS_SKIP_DEB=1 skips step 4.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ustad/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

a64=aarch64-unknown-linux-gnu
a32=armv7-unknown-linux-gnueabihf
times=()
stage() {  # stage NAME CMD...
  local name="$1" s; shift
  echo "== cross: $name"
  s=$(date +%s)
  "$@"
  times+=("$name: $(( $(date +%s) - s )) s")
}

stage "setup" bash cross/setup.sh
stage "aarch64 build (lib, tests, bin)" cargo test -p ustad --target "$a64" --lib --bins --test engine --test bundle --no-run
stage "aarch64 tests under qemu (lib + bin + engine + bundle)" \
  bash cross/test.sh "$a64" --lib --bins --test engine --test bundle
stage "armv7 build (lib, engine test, bin)" cargo test -p ustad --target "$a32" --test engine --no-run
stage "armv7 scoring tests under qemu (engine)" bash cross/test.sh "$a32" --test engine

if [ "${UST_CROSS_SKIP_DEB:-0}" != 1 ]; then
  stage "check_deb self-test" bash cross/check_deb_selftest.sh
  stage "arm64 .deb of the test build + check" bash cross/package.sh --profile dev "$a64"
fi

echo "== cross stage times"
printf '   %s\n' "${times[@]}"
