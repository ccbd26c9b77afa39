#!/usr/bin/env bash
# First run: installs PostgreSQL server binaries and the wasm toolchain if missing, builds
# the client SDK and the gateway, and runs `gateway demo` (a throwaway PostgreSQL with demo
# data, served on 127.0.0.1:3000, with the SDK's example app at /demo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

ensure_tool rust
ensure_postgres
build_sdk
cargo build --release --locked -p gateway
exec target/release/gateway demo "$@"
