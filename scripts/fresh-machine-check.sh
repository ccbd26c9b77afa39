#!/usr/bin/env bash
# Proves the README's two commands on a machine as it comes new. It removes what the
# project's scripts install (the Debian packages below and the tool caches under
# ~/.cache/gateway-*), checks that scripts/doctor.sh now reports those tools missing, clones
# the committed main into a temporary directory, then runs, timed, from that clone:
#   scripts/test.sh   (must pass)
#   scripts/demo.sh   (must serve the demo page and the SDK's wasm, then stop on Ctrl-C)
# and finally checks that doctor.sh reports every tool present. Run it before any change to
# set-up lands. It needs root or sudo, and it changes this machine: the packages are purged
# and installed again by the run. Logs go to the printed directory.
#   scripts/fresh-machine-check.sh [REV]     (default: HEAD)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh
repo=$(pwd)
rev=${1:-HEAD}

# What scripts/lib/setup.sh's installers add to a machine of this kind (which comes with a
# Rust toolchain, PostgreSQL, Node.js and Python).
PROJECT_PACKAGES=(chromium nginx-light rustc-web cargo-web rust-web-src rust-web-llvm lld-22)
# The tools those packages and caches provide; doctor.sh must report each missing after the purge.
PURGED_TOOLS=(chromium nginx wasm-rustc wasm-std-source rust-lld wasm-bindgen helm test-python)

work=$(mktemp -d /tmp/fresh-machine-check.XXXXXX)
echo "fresh-machine check of $(git rev-parse --short "$rev"); logs in $work" >&2

installed=()
for p in "${PROJECT_PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] && installed+=("$p")
done
if [ ${#installed[@]} -gt 0 ]; then
  echo "purging ${installed[*]} and what only they needed" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq -o DPkg::Lock::Timeout=600 "${installed[@]}" >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -qq -o DPkg::Lock::Timeout=600 >/dev/null
fi
rm -rf "$HOME"/.cache/gateway-*

scripts/doctor.sh >"$work/doctor-before.txt" 2>&1 || true
for t in "${PURGED_TOOLS[@]}"; do
  grep -Eq "^$t +[^ ]+ +MISSING" "$work/doctor-before.txt" ||
    die "after the purge doctor.sh still finds $t (see $work/doctor-before.txt): this machine is not as new"
done

git clone --quiet --no-hardlinks "$repo" "$work/clone"
git -C "$work/clone" checkout --quiet "$(git rev-parse "$rev")"
cd "$work/clone"

start=$SECONDS
if ! scripts/test.sh >"$work/test.log" 2>&1; then
  tail -40 "$work/test.log" >&2
  die "scripts/test.sh failed after $((SECONDS - start)) s (log: $work/test.log)"
fi
test_s=$((SECONDS - start))
echo "scripts/test.sh passed in $test_s s" >&2

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$SECONDS
setsid scripts/demo.sh --listen "127.0.0.1:$port" >"$work/demo.log" 2>&1 &
demo_pid=$!
trap 'kill -INT -- -$demo_pid 2>/dev/null || true' EXIT
base="http://127.0.0.1:$port/demo/examples/todos"
until curl -fsS -o /dev/null "$base/index.html" 2>/dev/null; do
  kill -0 "$demo_pid" 2>/dev/null || { tail -40 "$work/demo.log" >&2; die "scripts/demo.sh exited before serving the demo page"; }
  [ $((SECONDS - start)) -lt 3600 ] || die "scripts/demo.sh did not serve the demo page within an hour"
  sleep 2
done
demo_s=$((SECONDS - start))
curl -fsS -o "$work/sdk_bg.wasm" "http://127.0.0.1:$port/demo/js/pkg/sdk_bg.wasm" &&
  [ "$(head -c 4 "$work/sdk_bg.wasm" | od -An -tx1 | tr -d ' \n')" = 0061736d ] ||
  die "the demo serves its page but not the SDK's wasm"
grep -q "demo page: " "$work/demo.log" || die "scripts/demo.sh did not print the demo page's address"
kill -INT -- -"$demo_pid"
wait "$demo_pid" || true
trap - EXIT
echo "scripts/demo.sh served the demo page after $demo_s s" >&2

cd "$repo"
scripts/doctor.sh >"$work/doctor-after.txt" 2>&1 || { cat "$work/doctor-after.txt" >&2; die "doctor.sh still reports missing tools"; }
cat "$work/doctor-after.txt"
echo "fresh-machine check passed: scripts/test.sh $test_s s, scripts/demo.sh $demo_s s to the demo page"
