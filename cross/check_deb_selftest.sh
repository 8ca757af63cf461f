#!/usr/bin/env bash
# Self-test of cross/check_deb.sh: a hand-made package with the wrong ELF machine (the host's
# /bin/true as usr/bin/ustad) and no systemd unit must be rejected, and it must pass as amd64
# only for the checks that hold. Needs only dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root="$tmp/pkg"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/etc/ustad"
cp /bin/true "$root/usr/bin/ustad"
cp config/ustad.toml "$root/etc/ustad/ustad.toml"
printf '/etc/ustad/ustad.toml\n' >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/control" <<CTRL
Package: ustad
Version: 0.0.0
Architecture: arm64
Maintainer: test <test@example.invalid>
Depends: libc6 (>= 2.35)
Description: check_deb self-test
CTRL
dpkg-deb --root-owner-group -Zgzip --build "$root" "$tmp/bad.deb" >/dev/null

passed=0; failed=0
if bash cross/check_deb.sh "$tmp/bad.deb" arm64 >"$tmp/out" 2>&1; then
  echo "FAIL check_deb accepted an x86-64 binary without a unit as arm64"; failed=$((failed + 1))
else
  passed=$((passed + 1)); echo "ok   check_deb rejects a wrong package"
fi
for expect in "FAIL ELF machine is AArch64" "FAIL systemd unit ustad.service listed" "ok   binary /usr/bin/ustad listed" "ok   config is a conffile"; do
  if grep -qF "$expect" "$tmp/out"; then passed=$((passed + 1)); echo "ok   reports: $expect"
  else failed=$((failed + 1)); echo "FAIL missing report: $expect"; fi
done
[ "$failed" -eq 0 ] || cat "$tmp/out"
echo "check_deb_selftest: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
