#!/usr/bin/env python3
"""Independent check of `tern export-gguf`: reads a GGUF with the `gguf` PyPI package (gguf-py, llama.cpp's
own Python reader), dequantizes every tensor with gguf-py's numpy code, and compares with the expected f32
values a test wrote as `<name>.f32` files (little-endian, row-major) into a directory.

usage: check_gguf_export.py MODEL.gguf EXPECTED_DIR
Prints one line per tensor and exits non-zero on any mismatch.
"""
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main() -> int:
    path, expected_dir = sys.argv[1], sys.argv[2]
    reader = GGUFReader(path)
    failures = 0
    checked = 0
    for t in reader.tensors:
        exp_path = os.path.join(expected_dir, t.name + ".f32")
        if not os.path.exists(exp_path):
            continue
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        want = np.fromfile(exp_path, dtype="<f4")
        ok = got.shape == want.shape and np.array_equal(got, want)
        checked += 1
        print(f"{t.name}: {t.tensor_type.name} {list(t.shape)} {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures += 1
            if got.shape == want.shape:
                i = int(np.argmax(got != want))
                print(f"  first difference at {i}: gguf-py {got[i]} expected {want[i]}")
            else:
                print(f"  shape {got.shape} vs {want.shape}")
    if checked == 0:
        print("no tensors checked")
        return 1
    print(f"{checked} tensors checked, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
