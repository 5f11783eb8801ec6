#!/usr/bin/env bash
# tern against llama.cpp on this machine, both measured in one run, alternating (not part of CI).
#
#   benches/peer/run.sh [-t THREADS] [-r ROUNDS] [-p N_PROMPT] [-n N_GEN] [-s smollm2,bitnet-2b]
#
# What it does, everything outside the repository (PEER_DIR, default ~/.cache/tern-peer):
# 1. builds llama-bench and llama-quantize from the llama.cpp vendored in the llama-cpp-python source
#    package (pip download --no-binary; cmake -DGGML_NATIVE=ON), once;
# 2. makes the models, each pair from one source:
#    - smollm2: SmolLM2-135M-Instruct's own Q4_1 GGUF (assets/, scripts/fetch-assets.sh) for llama.cpp, and
#      `tern convert` of the same file (ternary 2-bit, the defaults) for tern;
#    - bitnet-2b: an f16 GGUF of a Llama of the BitNet b1.58 2B shape (hidden 2560, FFN 6912, 30 layers,
#      20 heads, 5 KV heads, SmolLM2's vocabulary and tokenizer, random weights; make_shape_gguf.py), then
#      `llama-quantize … TQ2_0` for llama.cpp and `tern convert` for tern;
# 3. runs `llama-bench` and `tern bench` alternately, ROUNDS times each (one repetition per call, after each
#    tool's own warm-up), with THREADS threads, pp N_PROMPT and tg N_GEN, and the read-bandwidth probe of
#    `tern bench` in every round;
# 4. prints the ratio table (aggregate.py) with the CPU, its SIMD flags, the measured bandwidth and the load.
#
# Never commits or copies llama.cpp code or binaries into the repository.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
PEER_DIR="${PEER_DIR:-$HOME/.cache/tern-peer}"
LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}"
threads=2 rounds=5 n_prompt=128 n_gen=64 shapes="smollm2,bitnet-2b"
while getopts "t:r:p:n:s:" opt; do
  case "$opt" in
    t) threads="$OPTARG" ;;
    r) rounds="$OPTARG" ;;
    p) n_prompt="$OPTARG" ;;
    n) n_gen="$OPTARG" ;;
    s) shapes="$OPTARG" ;;
    *) sed -n '2,4p' "$0"; exit 2 ;;
  esac
done
mkdir -p "$PEER_DIR/models"
log() { echo "== $*" >&2; }

log "tern (release)"
(cd "$repo" && cargo build --release -p tern -q)
tern="$repo/target/release/tern"

bin="$PEER_DIR/build/bin"
smol_gguf="$repo/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$smol_gguf" ] || "$repo/scripts/fetch-assets.sh"
llama_src() { echo "$(ls -td "$PEER_DIR"/llama_cpp_python-*/ | head -1)vendor/llama.cpp"; }
build_llama() {
  rm -rf "$PEER_DIR/build"
  cmake -S "$(llama_src)" -B "$PEER_DIR/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF "$@" >"$PEER_DIR/cmake.log"
  cmake --build "$PEER_DIR/build" -j "$(nproc)" --target llama-bench llama-quantize >"$PEER_DIR/build.log"
  echo "$*" >"$PEER_DIR/build/tern-peer-flags"
}
if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-quantize" ]; then
  log "llama.cpp from the $LLAMA_CPP_PYTHON source package (-DGGML_NATIVE=ON)"
  if ! ls "$PEER_DIR"/llama_cpp_python-*/vendor/llama.cpp >/dev/null 2>&1; then
    (cd "$PEER_DIR" && python3 -m pip download --quiet --no-deps --no-binary :all: "$LLAMA_CPP_PYTHON")
    tar -xzf "$(ls -t "$PEER_DIR"/llama_cpp_python-*.tar.gz | head -1)" -C "$PEER_DIR"
  fi
  build_llama -DGGML_NATIVE=ON
  # A CPU may report instructions its hypervisor does not let a process use: on the machine this script was
  # written on, cpuid lists AMX and the native build's AMX kernels die with SIGILL. Then build for the CPU's
  # AVX features without AMX (the fastest llama.cpp that runs there).
  if ! "$bin/llama-bench" -m "$smol_gguf" -p 8 -n 1 -r 1 -t 1 >/dev/null 2>&1; then
    log "llama.cpp's native build crashes here (AMX faults under this hypervisor?): rebuilding without AMX"
    opts=(-DGGML_NATIVE=OFF)
    have() { grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -qx "$1"; }
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
      avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
      if have "${pair%%:*}"; then opts+=("-DGGML_${pair##*:}=ON"); else opts+=("-DGGML_${pair##*:}=OFF"); fi
    done
    build_llama "${opts[@]}"
    "$bin/llama-bench" -m "$smol_gguf" -p 8 -n 1 -r 1 -t 1 >/dev/null
  fi
fi
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet "gguf==0.19.0" numpy

m="$PEER_DIR/models"
declare -A llama_model tern_model
for shape in ${shapes//,/ }; do
  case "$shape" in
    smollm2)
      llama_model[$shape]="$smol_gguf"
      tern_model[$shape]="$m/smollm2-2bit.tern"
      [ -f "${tern_model[$shape]}" ] || { log "tern convert SmolLM2"; "$tern" convert "$smol_gguf" -o "${tern_model[$shape]}"; }
      ;;
    bitnet-2b)
      llama_model[$shape]="$m/bitnet-2b-tq2_0.gguf"
      tern_model[$shape]="$m/bitnet-2b-2bit.tern"
      if [ ! -f "${llama_model[$shape]}" ] || [ ! -f "${tern_model[$shape]}" ]; then
        f16="$m/bitnet-2b-f16.gguf"
        log "f16 source of the BitNet-2B shape"
        python3 "$repo/benches/peer/make_shape_gguf.py" --tokenizer-from "$smol_gguf" --out "$f16" \
          --hidden 2560 --ffn 6912 --layers 30 --heads 20 --kv-heads 5
        log "llama-quantize TQ2_0"
        "$bin/llama-quantize" "$f16" "${llama_model[$shape]}" TQ2_0 >"$m/quantize.log" 2>&1
        log "tern convert"
        "$tern" convert "$f16" -o "${tern_model[$shape]}"
        rm -f "$f16"
      fi
      ;;
    *) echo "unknown shape $shape (smollm2, bitnet-2b)" >&2; exit 2 ;;
  esac
done

out="$PEER_DIR/results-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
{
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cores: $(nproc) logical"
  echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni|amx_int8|asimd|asimddp)$' | tr '\n' ' ')"
  echo "llama.cpp build: $(cat "$PEER_DIR/build/tern-peer-flags" 2>/dev/null)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"
for round in $(seq 1 "$rounds"); do
  for shape in ${shapes//,/ }; do
    log "round $round/$rounds: $shape, llama.cpp"
    "$bin/llama-bench" -m "${llama_model[$shape]}" -p "$n_prompt" -n "$n_gen" -t "$threads" -r 1 -o json \
      >"$out/llama-$shape-$round.json" 2>"$out/llama-$shape-$round.log"
    log "round $round/$rounds: $shape, tern"
    "$tern" bench -m "${tern_model[$shape]}" -p "$n_prompt" -n "$n_gen" -t "$threads" -r 1 -o json \
      >"$out/tern-$shape-$round.json" 2>"$out/tern-$shape-$round.log"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
python3 "$repo/benches/peer/aggregate.py" "$out" --shapes "$shapes" | tee "$out/table.md"
echo "(raw results: $out)" >&2
