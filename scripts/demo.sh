#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct, convert it to a ternary .tern, inspect it and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo build --release
mkdir -p runs
./target/release/tern convert assets/SmolLM2-135M-Instruct.Q4_1.gguf -o runs/smol-ptq.tern
./target/release/tern inspect runs/smol-ptq.tern
./target/release/tern run -m runs/smol-ptq.tern -p "The capital of France is" -n 32 --seed 1
./target/release/tern perplexity -m runs/smol-ptq.tern -f assets/lee.txt --ctx 512
