#!/usr/bin/env bash
# Builds the firmware around a tiny ternary model, runs it under qemu-system-arm, and checks that the token ids
# it prints equal what the host runtime generates for the same model and prompt; prints code size, static
# memory and instruction counts. Needs: rustup target thumbv7em-none-eabihf, qemu-system-arm (.ci/run installs
# both). Run from anywhere; scripts/test.sh runs it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

model="$work/model.tern"
cargo run -q -p tern-runtime --example firmware_model -- write "$model"

# The firmware's own .cargo/config.toml (target, linker script, QEMU runner) applies only from its directory.
(
  cd examples/cortex-m
  TERN_FIRMWARE_MODEL="$model" cargo build -q --release --target-dir "$root/target/cortex-m"
  TERN_FIRMWARE_MODEL="$model" timeout 600 cargo run -q --release --target-dir "$root/target/cortex-m"
) > "$work/firmware.txt"
cat "$work/firmware.txt"

read -r context batch n_generate < <(sed -n 's/^session: context \([0-9]*\) batch \([0-9]*\) generate \([0-9]*\)$/\1 \2 \3/p' "$work/firmware.txt")
read -r -a prompt < <(sed -n 's/^prompt: //p' "$work/firmware.txt")
[ -n "${context:-}" ] && [ "${#prompt[@]}" -gt 0 ] || { echo "the firmware did not print its session and prompt" >&2; exit 1; }
host="$(cargo run -q -p tern-runtime --example firmware_model -- greedy "$model" "$context" "$batch" "$n_generate" "${prompt[@]}")"
device="$(grep '^generated:' "$work/firmware.txt")"
echo "host     $host"
echo "firmware $device"
if [ "$host" != "$device" ]; then
  echo "the firmware's tokens differ from the host runtime's" >&2
  exit 1
fi
elf="$root/target/cortex-m/thumbv7em-none-eabihf/release/tern-cortex-m"
size -A "$elf" | awk -v model="$(stat -c %s "$model")" '
  $1 == ".text" || $1 == ".vector_table" { code += $2 }
  $1 == ".rodata" { rodata = $2 }
  $1 == ".data" || $1 == ".bss" { ram += $2 }
  END { printf "size: code %d bytes, read-only data %d bytes (%d of them the model), .data + .bss %d bytes\n", code, rodata, model, ram }'
echo "Cortex-M firmware output equals the host runtime's"
