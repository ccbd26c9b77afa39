#!/usr/bin/env bash
# The chaos test's long form: N rounds (default 100) of faults — the gateway killed,
# PostgreSQL restarted fast and immediate, the gateway's disk filled and freed, the gateway
# paused past the replication timeout — under a continuous writer, then every subscriber
# checked against the database. Prints the faults survived. Needs root (it mounts a tmpfs).
#   scripts/chaos.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh
ensure_postgres
CHAOS_ROUNDS=${1:-100} cargo test --locked -p gateway --test main -- chaos:: --nocapture
