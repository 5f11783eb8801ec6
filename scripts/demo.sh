#!/usr/bin/env bash
# The main job: run the ternary SmolLM2-135M-Instruct that ships in models/ (made by tern's own QAT; recipe and
# numbers in models/README.md) — a short generation and a chat-style exchange, each printing its tokens/s and the
# kernel table that ran — then its held-out perplexity next to the full-precision original's.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/smollm2-135m-ternary.tern
cargo build --release -p tern
T=./target/release/tern
$T inspect "$MODEL" | head -12
echo
echo "== generation (greedy)"
$T run -m "$MODEL" -p "The capital of France is" -n 32 --temp 0
echo
echo "== chat"
$T run -m "$MODEL" --chat -p "What is the capital of France?" -n 48 --temp 0.6 --seed 1
echo
# Held-out text (assets/lee.txt, from the gensim wheel on PyPI; no training run saw it) and the original model.
scripts/fetch-assets.sh >/dev/null
echo "== perplexity on assets/lee.txt (ctx 512), the full-precision teacher as reference"
mkdir -p runs
[ -f runs/teacher-f16.tern ] || $T convert assets/SmolLM2-135M-Instruct.Q4_1.gguf -o runs/teacher-f16.tern --keep f16 >/dev/null
$T perplexity -m "$MODEL" -f assets/lee.txt --ctx 512 --reference runs/teacher-f16.tern 2>&1 | tail -3
