#!/usr/bin/env bash
# Reassembles the model the GPU run brought back: scripts/gpu-reassemble.sh DIR [OUT.tern]
# DIR holds model.tern.part-0.. and results.tar.gz (whose results/model.tern.sha256 is checked).
set -euo pipefail
DIR="${1:?usage: gpu-reassemble.sh DIR [OUT.tern]}"
OUT="${2:-$DIR/model.tern}"
cat "$DIR"/model.tern.part-? > "$OUT"
if [[ -f "$DIR/results.tar.gz" ]]; then
    want=$(tar -xzOf "$DIR/results.tar.gz" results/model.tern.sha256 | awk '{print $1}')
    got=$(sha256sum "$OUT" | awk '{print $1}')
    [[ "$want" == "$got" ]] || { echo "gpu-reassemble: SHA-256 mismatch ($got, expected $want)" >&2; exit 1; }
    echo "gpu-reassemble: $OUT ($(stat -c %s "$OUT") bytes), SHA-256 verified" >&2
else
    echo "gpu-reassemble: $OUT written; no results.tar.gz to verify against" >&2
fi
