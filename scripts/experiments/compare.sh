#!/usr/bin/env bash
# The recipe comparison of docs/RESULTS.md on SmolLM2-135M-Instruct: every run trains on assets/wiki.txt and is
# evaluated on assets/lee.txt (never trained on), with the same seed, sequence length and batch. Runs go to
# runs/compare/NAME (resumable: rerun the script and finished runs are skipped, interrupted ones resume).
#
#   scripts/experiments/compare.sh NAME...      (names below; default: all)
#
# Budgets are in optimizer steps of 4 x 512 tokens, chosen so that every recipe costs about the same CPU time
# (see docs/RESULTS.md for the measured CPU hours of each run). THREADS (default 1) lets two runs share the
# two cores; TRACES (default docs/traces-smollm2.csv, made by `tern hessian`) feeds Hestia alpha > 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${TERN:-./target/release/tern}
M=assets/SmolLM2-135M-Instruct.Q4_1.gguf
THREADS=${THREADS:-1}
STEPS=${STEPS:-300}
TRACES=${TRACES:-docs/traces-smollm2.csv}
OUT=${OUT:-runs/compare}
mkdir -p "$OUT"
common=(--data assets/wiki.txt --eval-data assets/lee.txt --seq-len 512 --batch 4 --lr 1e-3 --min-lr 1e-4
        --warmup 10 --eval-every 25 --eval-sequences 64 --checkpoint-every 25 --threads "$THREADS" --seed 0)

run() {
  local name="$1"; shift
  local dir="$OUT/$name"
  if [ -f "$dir.tern" ] && [ -f "$dir/summary.json" ]; then
    echo "== $name: done ($dir.tern)"; return
  fi
  local resume=()
  [ -d "$dir" ] && resume=(--resume)
  echo "== $name: $*"
  "$T" quantize "$M" -o "$dir.tern" --checkpoint-dir "$dir" "${common[@]}" "$@" "${resume[@]}" > "$dir.log" 2>&1
  # A finished run keeps only its last checkpoint (1.6 GB for SmolLM2; `--resume` with other export options,
  # e.g. --layout base3 --head int4, re-exports from it without training).
  ls "$dir"/checkpoint-*.tck 2>/dev/null | sort | head -n -1 | xargs -r rm -f
  echo "== $name: finished"
}

for name in ${@:-ptq ste hestia-a0.4 hestia-a0 ste-kd blockwise-ste-kd ste-mixed5 ste-mixed15 ste-random5}; do
  case "$name" in
    ptq) run ptq --method ptq ;;
    ste) run ste --method ste --steps "$STEPS" ;;
    hestia-a0) run hestia-a0 --method hestia --alpha 0 --steps "$STEPS" ;;
    hestia-a0.4) run hestia-a0.4 --method hestia --alpha 0.4 --traces "$TRACES" --steps "$STEPS" ;;
    # Distillation: the teacher's forward costs about a third of a step, so fewer steps for the same CPU time.
    ste-kd) run ste-kd --method ste --distill 1 --steps "${KD_STEPS:-230}" ;;
    blockwise-ste-kd) run blockwise-ste-kd --method ste --recipe blockwise+e2e --block-steps "${BLOCK_STEPS:-100}" \
        --block-batch 4 --block-windows "${BLOCK_WINDOWS:-256}" --block-lr 1e-3 --block-min-lr 1e-4 --distill 1 --steps "${E2E_STEPS:-150}" ;;
    # Hessian-aware mixed precision (HAWQ-V2) at +5% and +15% of the all-ternary file, and a random assignment
    # of the same +5% as the control: the same STE budget as `ste`, the uniform ternary run.
    ste-mixed5) run ste-mixed5 --method ste --budget +5% --traces "$TRACES" --steps "$STEPS" ;;
    ste-mixed15) run ste-mixed15 --method ste --budget +15% --traces "$TRACES" --steps "$STEPS" ;;
    ste-random5) run ste-random5 --method ste --budget +5% --traces "$TRACES" --random-assignment 1 --steps "$STEPS" ;;
    *) echo "unknown run $name"; exit 2 ;;
  esac
done
