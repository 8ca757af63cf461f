#!/usr/bin/env bash
# Installs what cross builds need on a Debian/Ubuntu workstation or CI machine: the GNU cross
# toolchains and target C libraries (linkers, CC for tract-linalg's assembly, sysroot headers for
# bindgen), qemu-user (to run the tests), libclang (bindgen) and the Rust targets.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get. No docker.
set -euo pipefail

pkgs=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
      qemu-user libclang-dev binutils-aarch64-linux-gnu binutils-arm-linux-gnueabihf)
targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "cross/setup.sh: apt-get not found; install by hand: ${missing[*]}" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "cross/setup.sh: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "== apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v rustup >/dev/null || { echo "cross/setup.sh: rustup not found (the toolchain comes from rustup)" >&2; exit 1; }
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || { echo "== rustup target add $t"; rustup target add "$t"; }
done

# qemu-user must be able to find the target's dynamic loader under -L; check the runners work.
for bin in qemu-aarch64 qemu-arm aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc; do
  command -v "$bin" >/dev/null || { echo "cross/setup.sh: $bin still missing after install" >&2; exit 1; }
done
echo "cross/setup.sh: toolchains ready (${targets[*]})"
