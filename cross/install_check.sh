#!/usr/bin/env bash
# Installs the package on THIS machine and checks what the install does, then purges it:
# the system user and its groups, the unit enabled (not started), the state directory, the
# shipped config passing `ustad check-config`, and the daemon judging a few replayed images as
# the `ustad` user with a bundle under /var/lib/ustad/bundles (the layout DEPLOY.md describes).
#
# It changes the system (dpkg -i, a user `ustad` that stays after the purge, as Debian
# packages leave users), so run it on a throwaway machine or container, as root; CI does not
# run it. No running systemd is needed: enabling is checked through the unit's symlink and
# `systemctl is-enabled`, which work offline.
#
# Usage: cross/install_check.sh            -> builds an amd64 .deb of the dev build and checks it
#        cross/install_check.sh FILE.deb   -> checks that .deb (its architecture must run here)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ustad/target}"
[ "$(id -u)" = 0 ] || { echo "install_check: run as root (it installs a package)" >&2; exit 2; }
for tool in dpkg runuser systemctl; do
  command -v "$tool" >/dev/null || { echo "install_check: $tool not found" >&2; exit 2; }
done
if dpkg -s ustad >/dev/null 2>&1; then
  echo "install_check: ustad is already installed here; not touching it" >&2
  exit 2
fi

deb="${1:-}"
if [ -z "$deb" ]; then
  export PATH="$HOME/.cache/ustad/cargo-bin/bin:$PATH"
  command -v cargo-deb >/dev/null || { echo "install_check: cargo-deb missing (cross/package.sh installs it)" >&2; exit 2; }
  cargo build -p ustad --bin ustad
  out=$(mktemp -d)
  deb=$(cargo deb -p ustad --profile dev --no-build --output "$out" 2>/dev/null | tail -1)
fi
[ -f "$deb" ] || { echo "install_check: no such .deb: $deb" >&2; exit 2; }

passed=0; failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1" >&2; }
check() { local what="$1"; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }

work=$(mktemp -d)
cleanup() { dpkg --purge ustad >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

check "dpkg -i $(basename "$deb")" dpkg -i "$deb"
check "user ustad exists" id ustad
check "ustad is in group video" bash -c 'id -nG ustad | tr " " "\n" | grep -qx video'
check "ustad is in group gpio" bash -c 'id -nG ustad | tr " " "\n" | grep -qx gpio'
check "ustad.service is enabled" bash -c '[ "$(systemctl is-enabled ustad 2>/dev/null)" = enabled ]'
check "ustad.service is in multi-user.target.wants" test -L /etc/systemd/system/multi-user.target.wants/ustad.service
check "/var/lib/ustad belongs to ustad" bash -c '[ "$(stat -c %U /var/lib/ustad)" = ustad ]'
check "shipped /etc/ustad/ustad.toml passes check-config" /usr/bin/ustad check-config /etc/ustad/ustad.toml

# The daemon as the service runs it (user ustad), on a bundle installed as DEPLOY.md says.
rm -rf /var/lib/ustad/archive/*   # left by an earlier install: purge keeps state
bundle=/var/lib/ustad/bundles/mtd-edge
mkdir -p "$bundle"
cp models/bundles/mtd-edge/bundle.toml models/bundles/mtd-edge/*.onnx "$bundle/"
chown -R root:ustad "$bundle" && chmod -R g+rX "$bundle"
frames="$work/frames"
mkdir -p "$frames"
find ../shared/data/mtd/test/good -name '*.jpg' | sort | head -3 | xargs -I{} cp {} "$frames/"
chmod -R a+rX "$work"
sed -e "s#^bundle = .*#bundle = \"$bundle\"#" -e "s#^path = .*#path = \"$frames\"#" \
    -e 's#^dir = .*#dir = "/var/lib/ustad/archive"#' -e 's#^listen = .*#listen = "127.0.0.1:0"#' \
    config/replay.toml >"$work/replay.toml"
chmod a+r "$work/replay.toml"
if runuser -u ustad -- /usr/bin/ustad run --config "$work/replay.toml" >"$work/run.log" 2>&1 \
   && grep -q '^frames 3  parts 3' "$work/run.log"; then
  ok "ustad run as user ustad judged 3 replayed parts"
else
  fail "ustad run as user ustad (log: $(tail -3 "$work/run.log" | tr '\n' ' '))"
fi
check "the archive got one JSON line per part" \
  bash -c '[ "$(cat /var/lib/ustad/archive/*-parts.jsonl | wc -l)" = 3 ]'

check "dpkg --purge ustad" dpkg --purge ustad
check "unit symlink gone after purge" test ! -e /etc/systemd/system/multi-user.target.wants/ustad.service
check "binary gone after purge" test ! -e /usr/bin/ustad

echo "install_check: $passed passed, $failed failed"
[ "$failed" = 0 ]
