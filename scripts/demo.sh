#!/usr/bin/env bash
# First run: installs PostgreSQL server binaries if missing, builds the gateway and runs
# `gateway demo` (a throwaway PostgreSQL with demo data, served on 127.0.0.1:3000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

ensure_postgres
cargo build --release --locked -p gateway
exec target/release/gateway demo "$@"
