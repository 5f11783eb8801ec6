#!/usr/bin/env bash
# Training-step throughput of tern's CPU engine against JAX (XLA CPU, f32) on SmolLM2-135M, both measured in this
# one run, alternating (the machine's speed varies between days and with load: never compare across runs).
#
#   scripts/experiments/step_throughput.sh [OUT_DIR]      (default runs/throughput)
#
# tern: `tern train-bench` on the real model, seq 512, batch 1 and 4: the QAT step (W1.58/A8 fake quantization,
# AdamW) with the bf16 (AMX) and the f32 matrix products on 1 and 2 threads, and the full-precision step (bf16,
# 2 threads). JAX: the
# full-precision forward + backward (`scripts/jax_train_step.py`, no optimizer), batch 1 and 4, 2 threads.
# Prints a table of tokens/s; the JSON lines stay in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${TERN:-./target/release/tern}
M=assets/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${1:-runs/throughput}
mkdir -p "$OUT"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
: >"$OUT/results.jsonl"
for batch in 1 4; do
  for threads in 1 2; do
    for precision in ${PRECISIONS:-bf16 f32}; do
      "$T" train-bench "$M" --batch "$batch" --seq-len 512 --steps 2 --warmup 1 --precision "$precision" \
        --threads "$threads" --ternary 2>>"$OUT/tern.log" | tail -1 >>"$OUT/results.jsonl"
    done
  done
  "$T" train-bench "$M" --batch "$batch" --seq-len 512 --steps 2 --warmup 1 --precision bf16 --threads 2 \
    2>>"$OUT/tern.log" | tail -1 >>"$OUT/results.jsonl"
  python3 scripts/jax_train_step.py "$M" --seq 512 --batch "$batch" --steps 3 --threads 2 2>>"$OUT/jax.log" \
    | tail -1 >>"$OUT/results.jsonl"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
python3 - "$OUT/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# The same model's FLOP per step for each batch (matrices 6·N·tokens plus attention), from the JAX rows.
gflop = {r["batch"]: r["gflop_per_step"] for r in rows if "peer" in r}
jax = {r["batch"]: r["tokens_per_s_best"] for r in rows if "peer" in r}
print("| tool | step | kernel | batch | threads | tokens/s | GFLOP/s | vs JAX |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    b = r["batch"]
    if r.get("tool") == "tern":
        tps = r["tokens_per_s"]
        step = "QAT W1.58/A8 + AdamW" if r["ternary"] else "FP + AdamW"
        gf = gflop.get(b, float("nan")) / (r["tokens_per_step"] / tps)
        print(f"| tern | {step} | {r['device']['matmul']} | {b} | {r['threads']} | {tps:.1f} | {gf:.1f} | "
              f"{tps / jax.get(b, float('nan')):.2f}x |")
    else:
        print(f"| {r['peer']} | FP fwd+bwd | XLA | {b} | {r['threads']} | {r['tokens_per_s_best']:.1f} | "
              f"{r['gflop_per_s_best']:.1f} | 1.00x |")
EOF
