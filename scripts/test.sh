#!/usr/bin/env bash
# Runs every test: unit tests, the API server stand-in's conformance suite and the end-to-end
# suite (against the stand-in, or a real cluster when KRUSTLET_E2E_KUBECONFIG is set).
# Needs Debian's docker-registry (apt-get install docker-registry) and
# `rustup target add wasm32-wasip1 wasm32-wasip2 wasm32-unknown-unknown` (what .ci/run installs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --workspace --bins
cargo test --locked --workspace --no-fail-fast
