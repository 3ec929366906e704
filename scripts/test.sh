#!/usr/bin/env bash
# Runs every test: unit tests, the API server stand-in's conformance suite and the end-to-end
# suite (against the stand-in, or a real cluster when KRUSTLET_E2E_KUBECONFIG is set). First
# checks what the tests need on this machine and installs what it can (scripts/prerequisites.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
check_test_prerequisites
# The binaries the end-to-end tests start, with the features the tests are built with (one
# build of every dependency, not two), then the tests themselves.
cargo build --locked --workspace --bins --tests
cargo test --locked --workspace --no-fail-fast
