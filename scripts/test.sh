#!/usr/bin/env bash
# Runs every test of the project. On a fresh Debian/Ubuntu machine it first installs what
# is missing (each tool is checked by running it; scripts/doctor.sh lists them): PostgreSQL
# server binaries, Node.js and npm, Chromium, nginx, the wasm toolchain, helm and a Python
# virtualenv (chart validation, schemathesis), and the Node packages of the protocol suite
# (the official @electric-sql/client) and of the SDK's browser suite (playwright-core); then
# it builds the SDK for wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh

ensure_tool rust
ensure_postgres
ensure_psql
ensure_node
ensure_chromium
ensure_nginx
ensure_helm
ensure_test_python
(cd gateway/tests/electric-client && npm ci --no-audit --no-fund --loglevel=error)
(cd client-sdk/tests && npm ci --no-audit --no-fund --loglevel=error)
build_sdk

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Most tests wait on PostgreSQL, a gateway process or a browser, not on the CPU: four at a
# time finish sooner than one per core (each waits with a deadline, never a bare sleep).
RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" cargo test --workspace --locked
# The Helm chart: lint, render variants, assert, validate (needs the gateway binary built above).
GATEWAY_BIN=target/debug/gateway "$TEST_PYTHON" deploy/helm/tests/test_chart.py
