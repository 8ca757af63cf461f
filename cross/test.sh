#!/usr/bin/env bash
# Runs the tests of `ustad` and `ustad-core` (the networks, judging math, bundle and engine)
# for an ARM target under qemu-user (runners and the tract CPU knobs come from
# .cargo/config.toml). Both packages go in one cargo call: built apart, their features resolve
# differently and the second call rebuilds tract (6 min of CI).
#
# Usage: [UST_PACKAGES="ustad ustad-core"] cross/test.sh TARGET [SUBSET] [CARGO_TEST_ARGS...]
#   cross/test.sh aarch64-unknown-linux-gnu                     # everything: lib, bins, tests/
#   cross/test.sh aarch64-unknown-linux-gnu --lib               # unit tests only
#   cross/test.sh armv7-unknown-linux-gnueabihf --test engine   # the scoring-engine tests
#   cross/test.sh aarch64-unknown-linux-gnu --lib -- infer      # unit tests whose name has "infer"
#   cross/test.sh aarch64-unknown-linux-gnu scoring             # named subset, see below
# Named subsets: `scoring` = tests/engine.rs + tests/bundle.rs (real exported bundles run by tract).
#   `qemu-fast` = what CI runs: lib + bins + engine + bundle, without the three comparisons with
#   the direct-loop reference network (10+ CPU-minutes each under qemu; they run natively on x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ustad/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

[ $# -ge 1 ] || { sed -n "2,16p" "$0" >&2; exit 2; }
target="$1"; shift
# shellcheck source=cross/env.sh
source cross/env.sh
cross_check_target "$target"
case "$target" in
  aarch64*) qemu="qemu-aarch64" ;;
  *) qemu="qemu-arm" ;;
esac
command -v "$qemu" >/dev/null || { echo "cross/test.sh: $qemu missing: run cross/setup.sh" >&2; exit 1; }

args=("$@")
slow_under_qemu=(--skip reference::tests::image_mode_equals_patch_network_at_every_sampled_pixel
                 --skip exported_graphs_match_the_reference_network
                 --skip engine_scores_follow_the_formulas)
if [ ${#args[@]} -ge 1 ]; then
  case "${args[0]}" in
    scoring) args=(--test engine --test bundle "${args[@]:1}") ;;
    qemu-fast) args=(--lib --bins --test engine --test bundle "${args[@]:1}" -- "${slow_under_qemu[@]}") ;;
  esac
fi

packages=()
for p in ${UST_PACKAGES:-ustad ustad-core}; do packages+=(-p "$p"); done
echo "== cargo test ${packages[*]} --target $target ${args[*]} (under $qemu)"
s=$(date +%s)
cargo test "${packages[@]}" --target "$target" "${args[@]}"
echo "== cross/test.sh $target: $(( $(date +%s) - s )) s"
