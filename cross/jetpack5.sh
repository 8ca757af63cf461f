#!/usr/bin/env bash
# aarch64 release binary for NVIDIA JetPack 5 (Ubuntu 20.04, glibc 2.31), linked with zig through
# cargo-zigbuild against glibc 2.31 symbol versions. Both tools come from PyPI into a venv under
# $HOME/.cache/ustad/venv. Checks that the binary needs no GLIBC symbol newer than 2.31.
#
# Usage: cross/jetpack5.sh            -> $HOME/.cache/ustad/target-jetpack5/aarch64-unknown-linux-gnu/release/ustad
#        cross/jetpack5.sh --deb      -> also a .deb (depends libc6 >= 2.31) via cargo-deb's jetpack5 variant
# A separate target directory keeps this build from invalidating the normal glibc-2.35 one.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_TARGET_DIR="${JETPACK5_TARGET_DIR:-$HOME/.cache/ustad/target-jetpack5}"
max_glibc=2.31
target=aarch64-unknown-linux-gnu

# shellcheck source=cross/env.sh
source cross/env.sh
cross_check_target "$target"   # rust target + sysroot headers (bindgen) + binutils for objdump

venv="$HOME/.cache/ustad/venv"
if [ ! -x "$venv/bin/cargo-zigbuild" ] || ! "$venv/bin/python" -c 'import ziglang' 2>/dev/null; then
  echo "== installing ziglang + cargo-zigbuild into $venv"
  python3 -m venv "$venv" || { echo "cross/jetpack5.sh: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install -q --upgrade ziglang cargo-zigbuild
fi
[ -x "$venv/bin/cargo-zigbuild" ] || { echo "cross/jetpack5.sh: cargo-zigbuild missing in $venv" >&2; exit 1; }
export PATH="$venv/bin:$PATH"

echo "== cargo zigbuild --release -p ustad --target $target.$max_glibc"
s=$(date +%s)
cargo zigbuild --release -p ustad --bin ustad --target "$target.$max_glibc"
bin="$CARGO_TARGET_DIR/$target/release/ustad"
[ -x "$bin" ] || { echo "cross/jetpack5.sh: $bin was not produced" >&2; exit 1; }
echo "   $bin: $(stat -c %s "$bin") bytes, $(( $(date +%s) - s )) s"

# The highest GLIBC_x.y version the binary references must be <= 2.31.
newest=$(aarch64-linux-gnu-objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1)
echo "   newest GLIBC symbol version required: ${newest:-none}"
if [ -n "$newest" ] && [ "$(printf '%s\n%s\n' "$newest" "$max_glibc" | sort -V | tail -1)" != "$max_glibc" ]; then
  echo "cross/jetpack5.sh: $bin needs GLIBC_$newest > $max_glibc:" >&2
  aarch64-linux-gnu-objdump -T "$bin" | grep -E "GLIBC_$newest" >&2 || true
  exit 1
fi
readelf -h "$bin" | grep -q 'AArch64' || { echo "cross/jetpack5.sh: $bin is not an AArch64 ELF" >&2; exit 1; }

if [ "${1:-}" = --deb ]; then
  # shellcheck source=cross/package.sh
  CARGO_DEB_VARIANT=jetpack5 bash cross/package.sh "$target"
fi
