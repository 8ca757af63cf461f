# shellcheck shell=bash
# Sourced by the cross/ scripts: checks that a target is supported and that its toolchain is
# installed. The linkers, runners and CC/bindgen variables themselves live in .cargo/config.toml.

cross_sysroot() {
  case "$1" in
    aarch64-unknown-linux-gnu*) echo /usr/aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) echo /usr/arm-linux-gnueabihf ;;
    *) return 1 ;;
  esac
}

cross_check_target() {
  local t="$1" sysroot gcc
  sysroot=$(cross_sysroot "$t") || {
    echo "cross: unsupported target '$t' (supported: aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2
    exit 2
  }
  case "$t" in aarch64*) gcc=aarch64-linux-gnu-gcc ;; *) gcc=arm-linux-gnueabihf-gcc ;; esac
  if ! command -v "$gcc" >/dev/null || [ ! -d "$sysroot/include/linux" ]; then
    echo "cross: toolchain for $t missing ($gcc, $sysroot/include/linux): run cross/setup.sh" >&2
    exit 1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "${t%%.*}"; then
    echo "cross: Rust target ${t%%.*} not installed: run cross/setup.sh" >&2
    exit 1
  fi
}
