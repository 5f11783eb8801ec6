#!/usr/bin/env bash
# The GPU machine's whole job, in stages that each write their results to OUT_DIR as they finish (a call cut
# short still returns what it did). Built for an H200 (CUDA 13, driver 580, PyTorch 2.11) with no package
# registry: everything comes prebuilt from scripts/gpu-prepare.sh (gpu-carry/, see there for the two calls).
#
#   scripts/gpu-run.sh OUT_DIR [STAGES...]     STAGES: 1 2 3 (default all that the carried files allow)
#
#   1  the CUDA parity suite (engine_backends, FP32 and TF32 against the CPU in f64, determinism)  ~1 min
#   2  one SmolLM2-shaped training step, timed: tern CUDA vs tern CPU vs PyTorch (TF32, BF16), same model
#      and batch (dumped by tern train-bench); plus tern's W1.58/A8 step                           ~2 min
#   3  a real quantization of SmolLM2 on the GPU (tern quantize --device cuda, Hestia by default), sized to
#      the time left; the .tern split into 16 MiB parts, metrics and plots in results.tar.gz       the rest
#
# Recipe (stage 3), set through the environment (defaults in brackets):
#   TERN_GPU_METHOD [hestia]  TERN_GPU_RECIPE [e2e]  TERN_GPU_BATCH [16]  TERN_GPU_SEQ [512]  TERN_GPU_LR [5e-4]
#   TERN_GPU_STEPS [as many as the time left allows, at most TERN_GPU_MAX_STEPS = 600: wiki.txt holds ~0.6M
#   tokens, so 600 steps of 16 × 512 already pass over it ~8 times]  TERN_GPU_DATA [wiki.txt]
#   TERN_GPU_ARGS [extra arguments, e.g. "--distill 1 --schedule wsd"]
#   TERN_GPU_BUDGET_S [450: the whole script's wall-clock budget, stage 3 included]
# Stage 2's shape: TERN_BENCH_BATCH [8]  TERN_BENCH_SEQ [512].
#
# Files in OUT_DIR (at most 8 come back): log.txt, bench-*.json (stage 2), table.txt, and after stage 3
# results.tar.gz (bench JSON, metrics.jsonl, summary.json, plots, hestia.json, traces.csv, SHA-256) and
# model.tern.part-0.. (reassemble with scripts/gpu-reassemble.sh).
set -uo pipefail
OUT="${1:?usage: gpu-run.sh OUT_DIR [STAGES...]}"
shift
STAGES="${*:-1 2 3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STASH=/tmp/tern-gpu
START=$(date +%s)
BUDGET="${TERN_GPU_BUDGET_S:-450}"
mkdir -p "$OUT" "$STASH"
LOG="$OUT/log.txt"
log() { echo "[gpu-run +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&2; }
left() { echo $(( START + BUDGET - $(date +%s) )); }

# Carried files join what an earlier call left on this (warm) machine.
for d in "$ROOT/gpu-carry/a" "$ROOT/gpu-carry/b"; do
    [[ -d "$d" ]] && cp -f "$d"/* "$STASH"/
done
chmod +x "$STASH"/tern "$STASH"/engine_backends 2>/dev/null
log "stages: $STAGES; stash: $(ls "$STASH" | tr '\n' ' ')"

# CUDA's libraries: the driver's folder, the toolkit, and PyTorch's NVIDIA wheels (libcublas, libnvrtc).
libdirs=$(find /usr/local/nvidia /usr/local/cuda* /usr/lib/x86_64-linux-gnu /opt -maxdepth 8 \
    \( -name 'libcuda.so*' -o -name 'libnvrtc.so*' -o -name 'libcublas.so*' -o -name 'libcublasLt.so*' \) \
    -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:-}"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv 2>&1 | tee -a "$LOG" >&2

has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

# ---- 1: the parity suite ----
if has_stage 1; then
    if [[ -x "$STASH/engine_backends" ]]; then
        log "stage 1: CUDA parity suite"
        timeout 240 "$STASH/engine_backends" --test-threads=1 --nocapture 2>&1 | tee -a "$LOG" | grep -E '^(test |test result|CUDA:|skipped)' >&2
        log "stage 1 finished (exit ${PIPESTATUS[0]})"
    else
        log "stage 1 skipped: no engine_backends binary (run scripts/gpu-prepare.sh, carry gpu-carry/a)"
    fi
fi

# ---- 2: one training step, three implementations ----
if has_stage 2; then
    if [[ -x "$STASH/tern" ]]; then
        B="${TERN_BENCH_BATCH:-8}"
        T="${TERN_BENCH_SEQ:-512}"
        log "stage 2: training step, batch $B × $T tokens, SmolLM2-135M shape"
        timeout 150 "$STASH/tern" train-bench --device cuda --batch "$B" --seq-len "$T" --steps 5 --warmup 2 \
            --dump "$STASH/bench" --json "$OUT/bench-cuda.json" 2>&1 | tee -a "$LOG" >&2
        timeout 120 python3 "$ROOT/scripts/torch_train_step.py" "$STASH/bench" --steps 5 --warmup 2 \
            --precision tf32 bf16 --json "$OUT/bench-torch.json" 2>&1 | tee -a "$LOG" >&2
        timeout 60 "$STASH/tern" train-bench --device cuda --ternary --batch "$B" --seq-len "$T" --steps 3 --warmup 1 \
            --json "$OUT/bench-cuda-ternary.json" 2>&1 | tee -a "$LOG" >&2
        timeout 150 "$STASH/tern" train-bench --device cpu --batch "$B" --seq-len "$T" --steps 1 --warmup 0 \
            --json "$OUT/bench-cpu.json" 2>&1 | tee -a "$LOG" >&2
        rm -rf "$STASH/bench"
        cp -f "$OUT"/bench-*.json "$STASH"/ 2>/dev/null
        log "stage 2 finished"
    else
        log "stage 2 skipped: no tern binary"
    fi
fi

# ---- 3: quantize SmolLM2 on the GPU ----
if has_stage 3; then
    MODEL="$STASH/smollm2.gguf"
    if [[ ! -f "$MODEL" && -f "$STASH/smollm2.gguf.part-0" && -f "$STASH/smollm2.gguf.part-1" ]]; then
        cat "$STASH/smollm2.gguf.part-0" "$STASH/smollm2.gguf.part-1" > "$MODEL"
    fi
    if [[ ! -x "$STASH/tern" || ! -f "$MODEL" ]]; then
        log "stage 3 skipped: the GGUF parts or the binary are missing (the machine went cold between the two calls?)"
    elif ! (cd "$STASH" && sha256sum -c smollm2.gguf.sha256 >>"$LOG" 2>&1); then
        log "stage 3 skipped: the reassembled GGUF does not match its SHA-256"
    else
        RUN="$STASH/run"
        rm -rf "$RUN"
        mkdir -p "$RUN"
        BATCH="${TERN_GPU_BATCH:-16}"
        SEQ="${TERN_GPU_SEQ:-512}"
        STEPS="${TERN_GPU_STEPS:-}"
        if [[ -z "$STEPS" ]]; then
            # Time left minus ~100 s for loading, traces, evaluations and the export, over the ternary step time
            # measured in stage 2 (scaled to this batch), else a conservative 0.5 s.
            STEPS=$(python3 - "$STASH/bench-cuda-ternary.json" "$(left)" "$BATCH" "$SEQ" <<'PY'
import json, sys
path, left, batch, seq = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    r = json.load(open(path))
    step = r["median_step_s"] * batch * seq / r["tokens_per_step"]
except Exception:
    step = 0.5
print(max(20, int((left - 100) / (step * 1.15))))
PY
)
            STEPS=$(( STEPS < ${TERN_GPU_MAX_STEPS:-600} ? STEPS : ${TERN_GPU_MAX_STEPS:-600} ))
        fi
        log "stage 3: tern quantize --device cuda, $STEPS steps of $BATCH × $SEQ tokens ($(left) s left)"
        # shellcheck disable=SC2086
        timeout $(( $(left) > 60 ? $(left) - 15 : 45 )) "$STASH/tern" quantize "$MODEL" -o "$RUN/model.tern" \
            --device cuda --method "${TERN_GPU_METHOD:-hestia}" --recipe "${TERN_GPU_RECIPE:-e2e}" \
            --data "$STASH/${TERN_GPU_DATA:-wiki.txt}" --seq-len "$SEQ" --batch "$BATCH" --steps "$STEPS" \
            --lr "${TERN_GPU_LR:-5e-4}" --eval-every $(( STEPS / 4 > 0 ? STEPS / 4 : 1 )) --eval-sequences 32 \
            --checkpoint-every "$STEPS" --checkpoint-dir "$RUN/dir" ${TERN_GPU_ARGS:-} 2>&1 | tee -a "$LOG" >&2
        status=${PIPESTATUS[0]}
        log "stage 3 finished (exit $status)"
        if [[ -f "$RUN/model.tern" ]]; then
            (cd "$RUN" && sha256sum model.tern > model.tern.sha256 && split -b 16M -d -a 1 model.tern "$OUT/model.tern.part-")
            cp "$RUN/model.tern.sha256" "$OUT/" 2>/dev/null
        fi
        mkdir -p "$RUN/results"
        cp "$STASH"/bench-*.json "$RUN/results/" 2>/dev/null
        (cd "$RUN/dir" 2>/dev/null && cp -f ./*.jsonl ./*.json ./*.svg ./*.csv "$RUN/results/" 2>/dev/null)
        cp -f "$RUN/model.tern.sha256" "$RUN/results/" 2>/dev/null
        tar -czf "$OUT/results.tar.gz" -C "$RUN" results && rm -f "$OUT"/bench-*.json "$OUT/model.tern.sha256"
    fi
fi

python3 "$ROOT/scripts/gpu_table.py" "$STASH" "$STASH/run/results" | tee "$OUT/table.txt"
log "done in $(( $(date +%s) - START )) s"
