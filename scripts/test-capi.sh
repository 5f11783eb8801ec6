#!/usr/bin/env bash
# The C API end to end (scripts/test.sh runs this): installs the library as runtime/capi/README.md says
# (into a temporary prefix), builds examples/c/generate.c,
# examples/cpp/generate.cpp and runtime/capi/tests/misuse.c with gcc/g++ against the static library through
# pkg-config, runs them on a tiny model, then builds and runs them again under -fsanitize=address,undefined;
# and links generate.c against the shared library once.
#
# Uses the dev profile's library (already built by `cargo test`); PROFILE=release for the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-debug}"

if [ "$profile" = release ]; then cargo build --release -q -p tern-capi; else cargo build -q -p tern-capi; fi
cargo build -q --bin tern
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
runtime/capi/install.sh --prefix "$work/prefix" --profile "$profile" >/dev/null
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
model="$work/tiny.tern"
"target/$profile/tern" quantize --tiny-random 7 --method ptq -o "$model" >/dev/null

cflags="-std=c11 -Wall -Wextra -Werror -O1 -g"
cxxflags="-std=c++17 -Wall -Wextra -Werror -O1 -g -Iexamples/cpp"
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

for variant in plain sanitized; do
  extra=""
  [ "$variant" = sanitized ] && extra="$sanitize"
  echo "== C and C++ against libtern.a ($variant): build"
  # shellcheck disable=SC2046,SC2086 # pkg-config output and flag lists are meant to split
  {
    gcc $cflags $extra $(pkg-config --cflags tern-static) runtime/capi/tests/misuse.c -o "$work/misuse" $(pkg-config --libs tern-static)
    gcc $cflags $extra $(pkg-config --cflags tern-static) examples/c/generate.c -o "$work/generate" $(pkg-config --libs tern-static)
    g++ $cxxflags $extra $(pkg-config --cflags tern-static) examples/cpp/generate.cpp -o "$work/generate_cpp" $(pkg-config --libs tern-static)
  }
  echo "== misuse ($variant)"
  "$work/misuse" "$model" > "$work/misuse.log" || { cat "$work/misuse.log"; exit 1; }
  grep -v '^ok ' "$work/misuse.log"
  # A random model's text is random bytes: kept out of the log, its size is in the speed line.
  echo "== examples/c/generate ($variant)"
  "$work/generate" "$model" "Once upon a time" 48 2 > "$work/generate.txt"
  echo "== examples/cpp/generate ($variant)"
  "$work/generate_cpp" "$model" "Hello" 24 > "$work/generate_cpp.txt"
done

echo "== examples/c/generate against libtern.so"
# shellcheck disable=SC2046,SC2086
gcc $cflags $(pkg-config --cflags tern) examples/c/generate.c -o "$work/generate_shared" $(pkg-config --libs tern) -Wl,-rpath,"$work/prefix/lib"
"$work/generate_shared" "$model" "Shared" 8 1 0 >/dev/null
# grep reads all of ldd's output (not -q): an early exit would SIGPIPE ldd and fail the pipeline under pipefail.
ldd "$work/generate_shared" | grep -F "$work/prefix/lib/libtern.so" >/dev/null
echo "C API checks passed"
