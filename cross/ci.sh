#!/usr/bin/env bash
# CI stage for the ARM targets (called by .ci/run after the x86_64 tests):
#   1. cross toolchains (cross/setup.sh)
#   2. aarch64: builds both libraries (ustad-core, ustad), their tests and the `ustad` binary, and
#      runs both libraries' unit tests and the scoring-engine tests on real exported bundles (tests/engine.rs,
#      tests/bundle.rs) under qemu-aarch64 (Cortex-A76, tract forced to its A55 NEON+fp16 kernels);
#      three reference-loop comparisons too slow under emulation are skipped (see below)
#   3. armv7 (NEON): builds the same and runs the scoring-engine tests under qemu-arm
#   4. arm64 and armhf .debs of the test builds' binaries, checked by cross/check_deb.sh (itself
#      self-tested)
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
# Under qemu (no JIT for NEON; ~10-30x slower than native) three tests that compare tract with
# the pure-Rust direct-loop reference network cost 10+ CPU-minutes each; they check our Rust
# reference code, not the target's kernels, and run natively in the x86_64 stage. Everything
# else runs: all unit tests, all bundle tests, and the engine tests that load real exported
# bundles and run them with tract at f32 and f16 (NEON + fp16 kernels forced on).
slow_under_qemu=(--skip reference::tests::image_mode_equals_patch_network_at_every_sampled_pixel
                 --skip exported_graphs_match_the_reference_network
                 --skip engine_scores_follow_the_formulas)

stage "aarch64 build (libs, tests, bin)" cargo test -p ustad -p ustad-core --target "$a64" --lib --bins --test engine --test bundle --no-run
stage "aarch64 tests under qemu (both libs + bin + engine + bundle)" \
  bash cross/test.sh "$a64" --lib --bins --test engine --test bundle -- "${slow_under_qemu[@]}"
stage "armv7 build (lib, engine test, bin)" cargo test -p ustad -p ustad-core --target "$a32" --test engine --no-run
# armv7 has no fp16 arithmetic: tract's f16 path falls back to scalar code that is impractically
# slow under emulation, and f16 is an ARMv8.2 option anyway.
stage "armv7 scoring tests under qemu (engine)" bash cross/test.sh "$a32" --test engine -- "${slow_under_qemu[@]}" --skip f16_precision_stays_close_to_f32

if [ "${UST_CROSS_SKIP_DEB:-0}" != 1 ]; then
  stage "check_deb self-test" bash cross/check_deb_selftest.sh
  stage "arm64 .deb of the test build + check" bash cross/package.sh --profile dev "$a64"
  stage "armhf .deb of the test build + check" bash cross/package.sh --profile dev "$a32"
fi

echo "== cross stage times"
printf '   %s\n' "${times[@]}"
