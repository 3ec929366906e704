#!/usr/bin/env bash
# Runs a user's first WebAssembly pod on the embedded default: no cluster needed.
# Builds what it needs (the wasm32-wasip1 target, the hello-wasm module, krustlet-wasi), then runs
# examples/hello-wasm/standalone.yaml with `krustlet-wasi --standalone` and prints the pod's output.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip1 >/dev/null
cargo build --quiet --manifest-path examples/Cargo.toml --target wasm32-wasip1 --release --target-dir target/wasm -p hello-wasm
cargo build --quiet -p krustlet-wasi
exec ./target/debug/krustlet-wasi --standalone \
  --pod-manifest-path examples/hello-wasm/standalone.yaml \
  --data-dir target/standalone-data --node-name standalone "$@"
