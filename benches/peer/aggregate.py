#!/usr/bin/env python3
"""Ratio table of a benches/peer/run.sh run: per model and test, llama.cpp's and tern's t/s over the rounds
(mean ± sd), their ratio, tern's weight bytes per token and its fraction of the read bandwidth measured in the
same rounds, plus the machine (CPU, SIMD flags, load before and after).

    aggregate.py RESULTS_DIR --shapes smollm2,bitnet-2b
"""
import argparse
import glob
import json
import os
import re
import statistics

NAMES = {
    "smollm2": ("SmolLM2-135M", "Q4_1 (original)", "ternary 2-bit (`tern convert`)"),
    "bitnet-2b": ("Llama of the BitNet-2B shape", "TQ2_0", "ternary 2-bit (`tern convert`)"),
}


def mean_sd(xs):
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def test_name(row):
    if row.get("n_gen", 0) > 0:
        return f"tg{row['n_gen']}"
    return f"pp{row['n_prompt']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--shapes", default="smollm2,bitnet-2b")
    a = ap.parse_args()
    machine = open(os.path.join(a.dir, "machine.txt")).read().strip()
    print("\n".join("    " + l for l in machine.splitlines()))
    bw = {}
    for log in glob.glob(os.path.join(a.dir, "tern-*.log")):
        for line in open(log):
            m = re.match(r"read bandwidth, (\d+) threads: ([\d.]+) GB/s over (\d+) MB.*?([\d.]+) GB/s over (\d+) MB", line)
            if m:
                bw.setdefault(("dram", m.group(1)), []).append(float(m.group(4)))
    if bw:
        for (kind, t), xs in sorted(bw.items()):
            mu, sd = mean_sd(xs)
            print(f"    read bandwidth ({t} threads, 1 GiB probe, all rounds): {mu:.1f} ± {sd:.1f} GB/s")
    print()
    print("| model | test | llama.cpp | t/s | tern | t/s | tern / llama.cpp | tern weights/token | tern roofline |")
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for shape in a.shapes.split(","):
        llama, tern = {}, {}
        roof = {}
        size = {}
        for f in sorted(glob.glob(os.path.join(a.dir, f"llama-{shape}-*.json"))):
            for row in json.load(open(f)):
                llama.setdefault(test_name(row), []).append(row["avg_ts"])
        for f in sorted(glob.glob(os.path.join(a.dir, f"tern-{shape}-*.json"))):
            for row in json.load(open(f)):
                tern.setdefault(row["test"], []).append(row["avg_ts"])
                size[row["test"]] = row["weight_bytes_per_token"]
                if row.get("roofline_fraction") is not None:
                    roof.setdefault(row["test"], []).append(row["roofline_fraction"])
        title, ltype, ttype = NAMES.get(shape, (shape, "", ""))
        for test in sorted(set(llama) | set(tern), key=lambda t: (t[:2] != "pp", t)):
            lm, ls = mean_sd(llama.get(test, []))
            tm, ts = mean_sd(tern.get(test, []))
            r = f"{tm / lm:.2f}×" if lm == lm and tm == tm and lm > 0 else "—"
            rf = roof.get(test)
            rf_s = f"{100 * statistics.fmean(rf):.0f}%" if rf else "—"
            sz = f"{size[test] / 1e6:.0f} MB" if test in size and test.startswith("tg") else "—"
            print(f"| {title} | {test} | {ltype} | {lm:.1f} ± {ls:.1f} | {ttype} | {tm:.1f} ± {ts:.1f} | {r} | {sz} | {rf_s} |")


if __name__ == "__main__":
    main()
