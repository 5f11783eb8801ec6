#!/usr/bin/env python3
"""The short table scripts/gpu-run.sh prints last: stage 2's step timings (tern CUDA, tern CPU, PyTorch) and stage
3's quantization run. Usage: gpu_table.py BENCH_DIR [RESULTS_DIR]; reads bench-*.json and summary.json."""
import glob
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return None


def main():
    bench_dir = sys.argv[1]
    results = sys.argv[2] if len(sys.argv) > 2 else None
    rows = []
    for name in ["bench-cuda.json", "bench-cuda-ternary.json", "bench-cpu.json"]:
        r = load(os.path.join(bench_dir, name))
        if r:
            what = "tern " + r["backend"] + (" W1.58/A8 (STE)" if r.get("ternary") else " fp32" + (" tf32-gemm" if r["backend"] == "cuda" else ""))
            rows.append((what, r))
    torch = load(os.path.join(bench_dir, "bench-torch.json")) or []
    for r in torch:
        rows.append((f"pytorch {r['torch']} {r['precision']}", r))
    ref = next((r for w, r in rows if w.startswith("tern cuda fp32")), None)
    if rows:
        b = rows[0][1]
        print(f"training step, SmolLM2-135M shape, batch {b['batch']} x {b['seq_len']} = {b['tokens_per_step']} tokens")
        print(f"{'implementation':<34} {'step s':>9} {'tokens/s':>11} {'loss 0':>10} {'loss last':>10} {'vs tern cuda':>12}")
        for what, r in rows:
            step = r.get("median_step_s")
            tps = r.get("tokens_per_s")
            rel = (ref["median_step_s"] / step) if ref and step and ref.get("median_step_s") else None
            losses = r.get("losses") or [float("nan")]
            print(
                f"{what:<34} {step if step else float('nan'):>9.4f} {tps if tps else float('nan'):>11.0f} "
                f"{losses[0]:>10.5f} {losses[-1]:>10.5f} {('%.2fx' % rel) if rel else '-':>12}"
            )
        if ref and torch:
            t = next((r for r in torch if r["precision"] == "tf32"), None)
            if t:
                d = abs(t["losses"][0] - ref["losses"][0])
                print(f"first-step loss, tern cuda vs pytorch tf32 (same weights and batch): |diff| = {d:.2e}")
    if results:
        s = load(os.path.join(results, "summary.json"))
        if s:
            st = (s.get("stages") or [{}])[-1]
            print(
                f"quantization ({s.get('method')}, {st.get('stage')}): {st.get('steps')} steps, "
                f"{st.get('train_tokens_per_s') or 0:.0f} tokens/s, held-out ppl {s.get('held_out_ppl_start')} -> "
                f"{s.get('held_out_ppl_final')}, {s.get('output_bytes')} bytes, export code mismatches "
                f"{s.get('export_code_mismatches')}"
            )
        sha = glob.glob(os.path.join(results, "model.tern.sha256"))
        if sha:
            print("model.tern sha256:", open(sha[0]).read().split()[0])


if __name__ == "__main__":
    main()
