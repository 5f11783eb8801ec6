#!/usr/bin/env bash
# Builds, HERE (no GPU needed), everything scripts/gpu-run.sh needs on the GPU machine, into the git-ignored
# folder gpu-carry/, split in two so that each of the two device calls stays under the 64 MiB a call may carry:
#
#   gpu-carry/a/  tern (release, stripped), engine_backends (the parity suite, release test binary, stripped),
#                 wiki.txt, lee.txt, the first part of the SmolLM2 GGUF, its SHA-256      → call 1: stages 1 and 2
#   gpu-carry/b/  the rest of the GGUF                                                     → call 2: stage 3
#
# Why two parts: the full-precision source is the 98,362,432-byte Q4_1 GGUF (93.8 MiB), the most compact lossless
# form of SmolLM2's weights (4-bit codes with f16 scale and minimum per 32 weights: ~3.9 bits of entropy per code,
# so zstd/xz gain a few percent at best), and one call carries 64 MiB with the working tree. Stages 1 and 2 (the
# CUDA tests, the timed training step) need no real weights, so call 1 runs them and leaves part a and the
# binaries in /tmp/tern-gpu on the machine, which stays warm for 30 s; call 2, made at once, brings part b and
# trains. Where the machine went cold in between, call 2 says so and stops.
#
# Usage: scripts/gpu-prepare.sh        (then see the two `run` calls it prints)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARRY="$ROOT/gpu-carry"
GGUF="$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
LIMIT=$((64 * 1024 * 1024))
PART_A_MIB="${TERN_GPU_PART_A_MIB:-34}"

[[ -f "$GGUF" ]] || scripts/fetch-assets.sh
grep -qx '/gpu-carry/' .gitignore 2>/dev/null || { echo "gpu-prepare: /gpu-carry/ must be in .gitignore" >&2; exit 1; }

echo "gpu-prepare: building the release binary and the parity-suite test binary" >&2
cargo build --release --bin tern
TEST_BIN="$(cargo test --release -p tern-quantizer --test engine_backends --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "engine_backends" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$TEST_BIN" ]] || { echo "gpu-prepare: engine_backends test binary not found" >&2; exit 1; }

rm -rf "$CARRY"
mkdir -p "$CARRY/a" "$CARRY/b"
strip -o "$CARRY/a/tern" target/release/tern
strip -o "$CARRY/a/engine_backends" "$TEST_BIN"
cp assets/wiki.txt assets/lee.txt "$CARRY/a/"
split -b "${PART_A_MIB}M" -d -a 1 "$GGUF" "$CARRY/smollm2.gguf.part-"
mv "$CARRY/smollm2.gguf.part-0" "$CARRY/a/"
cat "$CARRY"/smollm2.gguf.part-? > "$CARRY/b/smollm2.gguf.part-1"
rm -f "$CARRY"/smollm2.gguf.part-?
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")" | sed 's/ .*/  smollm2.gguf/') > "$CARRY/a/smollm2.gguf.sha256"
git rev-parse HEAD > "$CARRY/a/commit"

# What travels besides the carried folder: tracked and untracked-but-not-ignored files.
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | awk 'END {print $1}')
ok=1
for part in a b; do
    bytes=$(du -cb "$CARRY/$part" | awk 'END {print $1}')
    total=$((bytes + tree_bytes))
    printf 'gpu-prepare: call with gpu-carry/%s: %.1f MiB carried + %.1f MiB working tree = %.1f MiB (limit 64)\n' \
        "$part" "$(echo "$bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" >&2
    (( total < LIMIT )) || ok=0
done
(( ok )) || { echo "gpu-prepare: over the 64 MiB limit: lower TERN_GPU_PART_A_MIB or shrink the binaries" >&2; exit 1; }
ls -la "$CARRY"/a "$CARRY"/b >&2
cat >&2 <<'MSG'

gpu-prepare: ready. On the GPU machine, two calls of the `run` tool, the second right after the first (the machine
stays warm 30 s):
  run(command="bash scripts/gpu-run.sh $OUT 1 2", carry=["gpu-carry/a"], timeout_s=300)
  run(command="bash scripts/gpu-run.sh $OUT 3",   carry=["gpu-carry/b"], timeout_s=540)
then give_back(). Reassemble the model here with scripts/gpu-reassemble.sh DIR (DIR = the second call's files_at).
MSG
