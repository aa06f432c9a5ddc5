#!/usr/bin/env bash
# Peak resident memory of one training step of a preset (the whole `sdar train` process), as docs/benchmarks.md
# records it:
#   bash bench/peak_memory.sh configs/demo_cpu.yaml                      # SmolLM2 RL preset (needs the model prepared)
#   bash bench/peak_memory.sh configs/testbed/demo.yaml                  # the testbed demo
#   bash bench/peak_memory.sh configs/demo_cpu.yaml --optim.micro-batch-tokens 4096   # any override
set -euo pipefail
cd "$(dirname "$0")/.."
SDAR=${SDAR:-.venv/bin/sdar}
preset=${1:?give a preset, e.g. configs/demo_cpu.yaml}; shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
/usr/bin/time -v "$SDAR" train --config "$preset" --total_steps 1 --out-dir "$out/run" --overwrite \
  --log.sample_every 0 --log.no-progress "$@" > "$out/log" 2>&1 || { grep -v "^	" "$out/log" | tail -20; exit 1; }
kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out/log")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$out/log")
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)
echo "$preset $*: peak RSS $kib KiB ($(awk -v k="$kib" 'BEGIN {printf "%.2f", k / 1048576}') GiB), one step in $wall, CPU $cpu"
