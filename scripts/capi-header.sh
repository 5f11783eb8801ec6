#!/usr/bin/env bash
# include/tern.h is generated from runtime/capi by cbindgen (the version below; .ci/run installs it).
#   scripts/capi-header.sh          check that regenerating the header changes nothing (CI)
#   scripts/capi-header.sh --write  regenerate it after changing the C API
set -euo pipefail
cd "$(dirname "$0")/.."

CBINDGEN_VERSION=0.29.4
if ! command -v cbindgen >/dev/null || [ "$(cbindgen --version)" != "cbindgen $CBINDGEN_VERSION" ]; then
  echo "cbindgen $CBINDGEN_VERSION is needed: cargo install cbindgen --version $CBINDGEN_VERSION --locked" >&2
  exit 2
fi
generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
# Parsing the crate's sources directly (not `--crate`) needs no `cargo metadata` and no network.
cbindgen --quiet --config runtime/capi/cbindgen.toml --output "$generated" runtime/capi/src/lib.rs
if [ "${1:-}" = "--write" ]; then
  cp "$generated" include/tern.h
  echo "wrote include/tern.h"
elif ! diff -u include/tern.h "$generated"; then
  echo "include/tern.h is stale: run scripts/capi-header.sh --write and commit it" >&2
  exit 1
else
  echo "include/tern.h is current"
fi
