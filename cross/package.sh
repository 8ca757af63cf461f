#!/usr/bin/env bash
# .deb of the edge daemon for an ARM target with cargo-deb, from the release binary that
# cross/build.sh made (built first if missing), then checked with cross/check_deb.sh.
# Usage: cross/package.sh [--profile dev] TARGET
#   TARGET: aarch64-unknown-linux-gnu -> arm64, armv7-unknown-linux-gnueabihf -> armhf
#   --profile dev packages the binary of an existing dev/test build (CI: checks the packaging
#   without a second, release build of tract).
# Output: $CARGO_TARGET_DIR/debian/ustad_<version>_<arch>.deb (path printed on the last line).
# CARGO_DEB_VARIANT=jetpack5 (set by cross/jetpack5.sh --deb) packages the glibc-2.31 build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ustad/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

profile=release
if [ "${1:-}" = --profile ]; then profile="${2:?--profile needs a name}"; shift 2; fi
[ $# -eq 1 ] || { echo "usage: cross/package.sh [--profile dev] TARGET" >&2; exit 2; }
target="$1"
case "$profile" in release) profile_dir=release ;; dev) profile_dir=debug ;; *) profile_dir="$profile" ;; esac
# shellcheck source=cross/env.sh
source cross/env.sh
cross_check_target "$target"
case "$target" in
  aarch64*) arch=arm64 ;;
  armv7*) arch=armhf ;;
esac

# cargo-deb, pinned, installed once into the cache (not into ~/.cargo/bin).
cargo_deb_version=3.8.0
bin_root="$HOME/.cache/ustad/cargo-bin"
export PATH="$bin_root/bin:$PATH"
if ! cargo deb --version 2>/dev/null | grep -q "$cargo_deb_version"; then
  echo "== cargo install cargo-deb $cargo_deb_version into $bin_root"
  CARGO_TARGET_DIR="$HOME/.cache/ustad/target-tools" \
    cargo install --locked --root "$bin_root" --version "$cargo_deb_version" cargo-deb
fi

[ -f config/ustad.service ] || { echo "cross/package.sh: config/ustad.service is missing" >&2; exit 1; }
bin="$CARGO_TARGET_DIR/$target/$profile_dir/ustad"
if [ -n "${CARGO_DEB_VARIANT:-}" ] || [ "$profile" != release ]; then
  [ -x "$bin" ] || { echo "cross/package.sh: $bin missing (build it first: cross/build.sh, cross/jetpack5.sh or cargo test --no-run)" >&2; exit 1; }
elif [ ! -x "$bin" ] || [ -n "$(find src Cargo.toml -newer "$bin" -print -quit)" ]; then
  bash cross/build.sh "$target"
fi

variant=()
[ -z "${CARGO_DEB_VARIANT:-}" ] || variant=(--variant "$CARGO_DEB_VARIANT")
out="$CARGO_TARGET_DIR/debian"
mkdir -p "$out"
echo "== cargo deb -p ustad --target $target --profile $profile --no-build ${variant[*]}"
deb=$(cargo deb -p ustad --target "$target" --profile "$profile" --no-build "${variant[@]}" --output "$out" | tail -1)
[ -f "$deb" ] || { echo "cross/package.sh: cargo deb produced no .deb (got '$deb')" >&2; exit 1; }
bash cross/check_deb.sh "$deb" "$arch"
echo "$deb"
