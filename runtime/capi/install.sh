#!/usr/bin/env bash
# Installs the C library built by `cargo build --release -p tern-capi`:
#   PREFIX/lib/libtern.a, PREFIX/lib/libtern.so, PREFIX/include/tern.h,
#   PREFIX/lib/pkgconfig/tern.pc (shared library) and tern-static.pc (static library and its system libraries).
# Usage: runtime/capi/install.sh [--prefix DIR (default /usr/local)] [--profile release|debug (default release)]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
prefix=/usr/local
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done
libdir="${CARGO_TARGET_DIR:-$root/target}/$profile"
for f in libtern.a libtern.so; do
  [ -f "$libdir/$f" ] || { echo "$libdir/$f is missing: run cargo build --$profile -p tern-capi first" >&2; exit 1; }
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 644 "$libdir/libtern.a" "$prefix/lib/libtern.a"
install -m 755 "$libdir/libtern.so" "$prefix/lib/libtern.so"
install -m 644 "$root/include/tern.h" "$prefix/include/tern.h"
# The system libraries a Rust static library needs on Linux/glibc (`rustc --print native-static-libs`).
system_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
cat > "$prefix/lib/pkgconfig/tern.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: tern
Description: Ternary (1.58-bit) LLM inference runtime, shared library
Version: $version
Libs: -L\${libdir} -ltern
Libs.private: $system_libs
Cflags: -I\${includedir}
PC
cat > "$prefix/lib/pkgconfig/tern-static.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: tern-static
Description: Ternary (1.58-bit) LLM inference runtime, static library
Version: $version
Libs: \${libdir}/libtern.a $system_libs
Cflags: -I\${includedir}
PC
echo "installed tern $version ($profile) into $prefix"
