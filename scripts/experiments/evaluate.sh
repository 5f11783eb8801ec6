#!/usr/bin/env bash
# Scores the recipe comparison's models (runs/compare/NAME.tern, made by compare.sh) on held-out text that no run
# trained on: perplexity with `tern perplexity --ctx 512` (llama.cpp's method, with its ±), the share of positions
# where the model's greedy next token equals the full-precision teacher's, and a greedy sample. Writes
# OUT/NAME.ppl.txt, OUT/NAME.sample.txt and prints a markdown table (OUT/table.md).
#
#   scripts/experiments/evaluate.sh [NAME...]        (default: every runs/compare/*.tern)
#
# The teacher is SmolLM2 kept at f16 (`tern convert --keep f16`, made here if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${TERN:-./target/release/tern}
M=assets/SmolLM2-135M-Instruct.Q4_1.gguf
TEXT=${TEXT:-assets/lee.txt}
DIR=${DIR:-runs/compare}
OUT=${OUT:-$DIR/eval}
TEACHER=${TEACHER:-runs/teacher-f16.tern}
PROMPT=${PROMPT:-The capital of France is}
mkdir -p "$OUT"
[ -f "$TEACHER" ] || "$T" convert "$M" -o "$TEACHER" --keep f16
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in "$DIR"/*.tern; do names+=("$(basename "$f" .tern)"); done
fi
for name in "${names[@]}"; do
  model="$DIR/$name.tern"
  [ -f "$model" ] || { echo "== $name: no $model" >&2; continue; }
  if [ ! -s "$OUT/$name.ppl.txt" ]; then
    echo "== $name: perplexity" >&2
    "$T" perplexity -m "$model" -f "$TEXT" --ctx 512 --reference "$TEACHER" >"$OUT/$name.ppl.txt" 2>&1
  fi
  if [ ! -s "$OUT/$name.sample.txt" ]; then
    "$T" run -m "$model" -p "$PROMPT" -n 24 --temp 0 >"$OUT/$name.sample.txt" 2>/dev/null
  fi
done
python3 - "$OUT" "${names[@]}" <<'EOF' | tee "$OUT/table.md"
import json, re, sys, os
out, names = sys.argv[1], sys.argv[2:]
def cost(run):
    """Training tokens and CPU seconds of a run directory (its stages' metrics added up), or None."""
    dirs = sorted(d for d in (os.path.join(run, x) for x in os.listdir(run)) if os.path.isdir(d) and
                  os.path.basename(d).startswith("stage-")) if os.path.isdir(run) else []
    dirs = dirs or [run]
    tokens = cpu = 0.0
    found = False
    for d in dirs:
        m = os.path.join(d, "metrics.jsonl")
        if not os.path.exists(m):
            continue
        rows = [json.loads(l) for l in open(m) if l.strip()]
        rows = [r for r in rows if "cpu_s" in r]
        if rows:
            found = True
            tokens += rows[-1].get("tokens", 0)
            cpu += rows[-1]["cpu_s"]
    return (tokens, cpu) if found else None

print("| model | size (bytes) | training tokens | CPU s | held-out PPL | teacher PPL | same next token as teacher | greedy sample |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for n in names:
    p = os.path.join(out, n + ".ppl.txt")
    if not os.path.exists(p):
        continue
    t = open(p).read()
    ppl = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", t)
    ref = re.search(r"Reference: PPL = ([0-9.]+) \+/- ([0-9.]+); same next-token prediction at (\d+) of (\d+)", t)
    size = os.path.getsize(os.path.join(os.path.dirname(out.rstrip("/")), n + ".tern")) if os.path.exists(
        os.path.join(os.path.dirname(out.rstrip("/")), n + ".tern")) else 0
    s = os.path.join(out, n + ".sample.txt")
    sample = open(s).read().strip().replace("\n", " ").replace("|", "\\|")[:120] if os.path.exists(s) else ""
    f = lambda m, i, j: f"{float(m.group(i)):,.2f} ± {float(m.group(j)):,.2f}" if m else "?"
    agree = f"{100 * int(ref.group(3)) / int(ref.group(4)):.1f}%" if ref else "?"
    c = cost(os.path.join(os.path.dirname(out.rstrip("/")), n))
    tok, cpu = (f"{int(c[0]):,}", f"{c[1]:,.0f}") if c else ("0", "0")
    print(f"| {n} | {size:,} | {tok} | {cpu} | {f(ppl, 1, 2)} | {f(ref, 1, 2)} | {agree} | {sample} |")
EOF
