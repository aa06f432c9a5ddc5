#!/usr/bin/env bash
# GRPO and SDAR on the real SmolLM2-135M-Instruct (docs/results/smollm2_testbed.md): 3 seeds each from the warm start
# of `sdar sft --config configs/sft/smollm2_testbed.yaml`. Two lanes, one CPU thread each; each lane alternates the
# methods so that a study stopped early still has both on the same seeds. Every part is `sdar compare`, so running
# the script again resumes; the last line only reads the finished runs back and writes the table.
#   bash scripts/smollm2_study.sh            (OUT=runs/smollm2_study by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SDAR=${SDAR:-.venv/bin/sdar}
OUT=${OUT:-runs/smollm2_study}
PRESET=${PRESET:-configs/testbed/smollm2_rl.yaml}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
part() {  # part METHOD SEED
  $SDAR compare --config "$PRESET" --methods "$1" --seeds "$2" --out "$OUT" >> "$OUT.log" 2>&1
}
start=$(date +%s)
( part grpo 0; part sdar 1; part grpo 2 ) & a=$!
( part sdar 0; part grpo 1; part sdar 2 ) & b=$!
wait $a; wait $b
echo "runs finished in $(( ($(date +%s) - start) / 60 )) min"
$SDAR compare --config "$PRESET" --methods grpo sdar --seeds 0 1 2 --out "$OUT"
