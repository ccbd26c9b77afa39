#!/usr/bin/env bash
# Times scripts/test.sh at a reference commit against HEAD, after set-up. Each side is
# cloned into a scratch directory and runs the suite once (installs, first build: the cold
# time, printed too); then the two run alternately, PAIRS times (default 3), and the median
# of after/before is printed (this machine's speed drifts minute to minute, so only
# interleaved pairs compare). Usage: scripts/bench-test-suite.sh REF [PAIRS]
# REUSE=<dir of an earlier run> skips the clones and cold runs: its `after` side moves to
# HEAD (its next run rebuilds what changed) and the pairs start at once.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: scripts/bench-test-suite.sh REF [PAIRS]}
pairs=${2:-3}
if [ -n "${REUSE:-}" ]; then
  work=$REUSE
  git -C "$work/after" pull -q --ff-only
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/bench-test-suite.XXXXXX")
  git clone -q . "$work/before"
  git clone -q . "$work/after"
  git -C "$work/before" checkout -q "$ref"
fi
echo "before: $(git -C "$work/before" log --oneline -1)" >&2
echo "after:  $(git -C "$work/after" log --oneline -1)" >&2

# One run of the suite on one side; prints its wall time in seconds.
run() {
  local side=$1 start=$SECONDS
  (cd "$work/$side" && scripts/test.sh) >>"$work/$side.log" 2>&1 || {
    echo "the $side suite failed; its log: $work/$side.log" >&2
    exit 1
  }
  echo $((SECONDS - start))
}

if [ -n "${REUSE:-}" ]; then
  echo "after: bringing the build up to date ..." >&2
  echo "after: $(run after) s" >&2
else
  echo "set-up runs (installs, first build) ..." >&2
  cold_before=$(run before)
  cold_after=$(run after)
  echo "cold: before $cold_before s, after $cold_after s" >&2
fi
ratios=()
for i in $(seq "$pairs"); do
  before=$(run before)
  after=$(run after)
  ratio=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a / b }')
  ratios+=("$ratio")
  echo "pair $i: before $before s, after $after s, after/before $ratio" >&2
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')
echo "median after/before over $pairs pairs: $median (logs: $work)"
