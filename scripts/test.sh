#!/usr/bin/env bash
# Runs every test of the project. On a fresh Debian/Ubuntu machine it first installs what
# is missing (each tool is checked by running it; scripts/doctor.sh lists them): PostgreSQL
# server binaries, Node.js and npm, Chromium, nginx, the wasm toolchain, helm and a Python
# virtualenv (chart validation, schemathesis), and the Node packages of the protocol suite
# and of the load tester's official-client mode (the official @electric-sql/client) and of
# the SDK's browser suite (playwright-core); then it builds the SDK for wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

# Each phase prints its time, so a slow run shows where the time went.
phase() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name" >&2
  "$@"
  echo "== $name: $((SECONDS - start)) s (total $SECONDS s)" >&2
}
set_up() {
  ensure_tool rust
  ensure_tool nextest
  ensure_postgres
  ensure_psql
  ensure_node
  ensure_chromium
  ensure_nginx
  ensure_helm
  ensure_test_python
  (cd gateway/tests/electric-client && npm ci --no-audit --no-fund --loglevel=error)
  (cd loadtest/official-client && npm ci --no-audit --no-fund --loglevel=error)
  (cd client-sdk/tests && npm ci --no-audit --no-fund --loglevel=error)
}

phase set-up set_up
phase "wasm SDK" build_sdk
phase fmt cargo fmt --all -- --check
phase clippy cargo clippy --workspace --all-targets --locked -- -D warnings
# nextest: one pool for every test binary, the slowest tests first (.config/nextest.toml).
phase "build tests" cargo nextest run --workspace --locked --no-run
phase tests cargo nextest run --workspace --locked
phase doctests cargo test --workspace --locked --doc
# The Helm chart: lint, render variants, assert, validate (needs the gateway binary built above).
phase chart env GATEWAY_BIN=target/debug/gateway "$TEST_PYTHON" deploy/helm/tests/test_chart.py
