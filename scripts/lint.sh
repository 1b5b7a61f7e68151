#!/usr/bin/env bash
# Lints every commit should pass.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features spot-agent/failpoints,spot-coordinator/failpoints -- -D warnings
