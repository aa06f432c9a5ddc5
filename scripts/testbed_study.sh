#!/usr/bin/env bash
# The testbed study (docs/results/testbed.md): every method from the same warm start with 5 seeds, and the
# teacher-reliability sweep (a fraction p of the teacher's plan hints replaced by a plausible wrong one).
# Two lanes run side by side, one CPU thread each. Every part is `sdar compare`, so a stopped study resumes where it
# stopped when this script is run again.
#   bash scripts/testbed_study.sh            (OUT=runs/study SEEDS="0 1 2 3 4" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SDAR=${SDAR:-.venv/bin/sdar}
OUT=${OUT:-runs/study}
SEEDS=${SEEDS:-"0 1 2 3 4"}
PRESET=${PRESET:-configs/testbed/rl.yaml}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
lane_a() {  # all six methods, reliable teacher
  $SDAR compare --config "$PRESET" --methods grpo sdar grpo_opsd opsd skill_sd rlsd --seeds $SEEDS \
    --out "$OUT/p0" > "$OUT/p0.log" 2>&1
}
lane_b() {  # the teacher-following methods with unreliable hints; GRPO never reads the teacher, so its p = 0 runs
           # are its runs at every p and are not repeated; paired differences here are against SDAR
  for p in 0.3 0.6; do
    $SDAR compare --config "$PRESET" --methods sdar grpo_opsd opsd skill_sd --seeds $SEEDS --baseline sdar \
      --out "$OUT/p$p" --teacher.hint-noise "$p" > "$OUT/p$p.log" 2>&1
  done
}
start=$(date +%s)
lane_a & a=$!
lane_b & b=$!
wait $a; wait $b
echo "study finished in $(( ($(date +%s) - start) / 60 )) min; tables: $OUT/p0/table.md $OUT/p0.3/table.md $OUT/p0.6/table.md"
