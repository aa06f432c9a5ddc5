#!/usr/bin/env bash
# GRPO and SDAR on the real SmolLM2-135M-Instruct (docs/results/smollm2_testbed.md), from the warm start of
# `sdar sft --config configs/sft/smollm2_testbed.yaml`: GRPO with 3 seeds against the warm start itself (row vanilla:
# the same panel and sampling seeds), SDAR beside it with seed 0 (SDAR_SEEDS="0 1 2" adds the others). On one thread
# each GRPO run took ~46 min (without activation checkpointing, which the preset now turns on), a warm-start
# evaluation ~7.5 min and an SDAR step ~5.5 min (~95 min a run); lane a ends after ~115 min, lane b (SDAR) after
# ~140. The study in docs/results/smollm2_testbed.md stopped SDAR after 7 steps. Two lanes, one CPU
# thread each. Every part is `sdar compare`, so running the script again resumes; the last line only reads the
# finished runs back and writes the table.
#   bash scripts/smollm2_study.sh            (OUT=runs/smollm2_study by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SDAR=${SDAR:-.venv/bin/sdar}
OUT=${OUT:-runs/smollm2_study}
PRESET=${PRESET:-configs/testbed/smollm2_rl.yaml}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
part() {  # part METHOD SEED; /usr/bin/time records each part's peak resident memory in the log
  local timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "part $1 seed $2: peak RSS %M KiB, %e s")
  "${timer[@]}" $SDAR compare --config "$PRESET" --methods "$1" --seeds "$2" --out "$OUT" >> "$OUT.log" 2>&1
}
start=$(date +%s)
SDAR_SEEDS=${SDAR_SEEDS:-0}
sdar_seed() { if [[ " $SDAR_SEEDS " == *" $1 "* ]]; then part sdar "$1"; fi; }
( part grpo 0; part grpo 1; part vanilla 0; part vanilla 1; part vanilla 2; sdar_seed 1 ) & a=$!
( part grpo 2; sdar_seed 0; sdar_seed 2 ) & b=$!
wait $a; wait $b
echo "runs finished in $(( ($(date +%s) - start) / 60 )) min"
# the tables: GRPO against the warm start (paired by seed), then SDAR beside GRPO on SDAR's seeds
$SDAR compare --config "$PRESET" --methods vanilla grpo --seeds 0 1 2 --out "$OUT" --baseline vanilla
cp "$OUT/table.md" "$OUT.grpo_vs_warm_start.md"
$SDAR compare --config "$PRESET" --methods vanilla grpo sdar --seeds $SDAR_SEEDS --out "$OUT" --baseline grpo
