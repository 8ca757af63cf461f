#!/usr/bin/env bash
# Checks a ustad .deb: files (binary, systemd unit, config as conffile), control fields
# (architecture, explicit depends), maintainer scripts (system user, unit enabled), and that the
# packaged binary's ELF machine matches the architecture.
# Usage: cross/check_deb.sh DEB ARCH   (ARCH: arm64 | armhf | amd64)
# Prints "N passed, 0 failed" and exits 0 when every check holds.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: cross/check_deb.sh DEB ARCH" >&2; exit 2; }
deb="$1"; arch="$2"
[ -f "$deb" ] || { echo "check_deb: no such file: $deb" >&2; exit 2; }
case "$arch" in
  arm64) machine='AArch64' ;;
  armhf) machine='ARM' ;;
  amd64) machine='Advanced Micro Devices X86-64' ;;
  *) echo "check_deb: unknown ARCH '$arch' (arm64, armhf, amd64)" >&2; exit 2 ;;
esac
for tool in dpkg-deb readelf tar; do
  command -v "$tool" >/dev/null || { echo "check_deb: $tool not found" >&2; exit 2; }
done

passed=0; failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1" >&2; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$tmp/files"
dpkg-deb -f "$deb" >"$tmp/control"
dpkg-deb -I "$deb" conffiles >"$tmp/conffiles" 2>/dev/null || : >"$tmp/conffiles"
dpkg-deb -I "$deb" postinst >"$tmp/postinst" 2>/dev/null || : >"$tmp/postinst"
dpkg-deb -I "$deb" prerm >"$tmp/prerm" 2>/dev/null || : >"$tmp/prerm"

has_file() { grep -qxF "$1" "$tmp/files"; }
has_unit() { has_file /lib/systemd/system/ustad.service || has_file /usr/lib/systemd/system/ustad.service; }
field() { sed -n "s/^$1: //p" "$tmp/control"; }

check "binary /usr/bin/ustad listed" has_file /usr/bin/ustad
check "systemd unit ustad.service listed" has_unit
check "config /etc/ustad/ustad.toml listed" has_file /etc/ustad/ustad.toml
check "config is a conffile" grep -qxF /etc/ustad/ustad.toml "$tmp/conffiles"
check "package is ustad" test "$(field Package)" = ustad
check "Architecture: $arch" test "$(field Architecture)" = "$arch"
check "Depends names libc6 with a version" grep -Eq '^Depends: .*libc6 \(>= 2\.[0-9]+\)' "$tmp/control"
check "postinst creates the ustad system user" grep -q 'useradd --system' "$tmp/postinst"
check "postinst adds ustad to video and gpio" grep -q 'usermod --append --groups video,gpio ustad' "$tmp/postinst"
check "postinst creates the gpio group if missing" grep -q 'groupadd --system gpio' "$tmp/postinst"
check "postinst enables ustad.service" grep -Eq 'deb-systemd-helper (--quiet )?enable .*ustad\.service|deb-systemd-helper enable' "$tmp/postinst"
check "prerm stops ustad.service" grep -q 'ustad.service' "$tmp/prerm"
for script in postinst prerm; do
  check "$script is valid sh" sh -n "$tmp/$script"
done
check "postinst has the systemd snippet exactly once" test "$(grep -c 'deb-systemd-helper enable' "$tmp/postinst")" = 1

# The packaged binary itself: ELF machine (and hard-float ABI on armhf).
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/ustad >"$tmp/ustad"
header=$(readelf -h "$tmp/ustad" 2>/dev/null || true)
got=$(sed -n 's/^ *Machine: *//p' <<<"$header")
check "ELF machine is $machine (got: ${got:-not an ELF})" test "$got" = "$machine"
if [ "$arch" = armhf ]; then
  check "ARM binary uses the hard-float ABI" grep -q 'hard-float ABI' <<<"$header"
fi
check "binary is executable in the package" grep -Eq '^-rwxr-xr-x .* \./usr/bin/ustad$' <(dpkg-deb -c "$deb")

echo "checked $(basename "$deb")"
echo "check_deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
