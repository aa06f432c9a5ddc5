#!/usr/bin/env bash
# The testbed study (docs/results/testbed.md): every method from the same warm start with 5 seeds, and the
# teacher-reliability sweep (a fraction p of the teacher's plan hints replaced by a plausible wrong one).
# Two lanes run side by side, one CPU thread each, with about the same number of runs. Every part is
# `sdar compare`, so a stopped study resumes where it stopped when this script is run again; the last block only
# reads the finished runs back and writes one table per hint-noise level.
#   bash scripts/testbed_study.sh            (OUT=runs/study SEEDS="0 1 2 3 4" STEPS=40 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SDAR=${SDAR:-.venv/bin/sdar}
OUT=${OUT:-runs/study}
SEEDS=${SEEDS:-"0 1 2 3 4"}
STEPS=${STEPS:-40}
PRESET=${PRESET:-configs/testbed/rl.yaml}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
part() {  # part P METHODS... : those methods at hint noise P, every seed
  local p=$1; shift
  $SDAR compare --config "$PRESET" --methods "$@" --seeds $SEEDS --out "$OUT/p$p" --total_steps "$STEPS" \
    --teacher.hint_noise "$p" >> "$OUT/p$p.log" 2>&1
}
# The sweep asks whether the gate protects against a teacher that is sometimes wrong. GRPO never reads the teacher and
# GRPO+OPSD reads it only through a detached constant (beta = 0: the gate is 0.5), so their p = 0 runs are their runs
# at every p; the sweep trains the methods whose update reads the teacher's values, SDAR and OPSD.
lane_a() { part 0 grpo sdar grpo_opsd skill_sd; part 0.3 sdar; }
lane_b() { part 0 opsd rlsd; part 0.3 opsd; part 0.6 sdar opsd; }
start=$(date +%s)
lane_a & a=$!
lane_b & b=$!
wait $a; wait $b
echo "runs finished in $(( ($(date +%s) - start) / 60 )) min"
part 0 grpo sdar grpo_opsd opsd skill_sd rlsd
for p in 0.3 0.6; do part "$p" sdar opsd --baseline sdar; done
.venv/bin/python scripts/study_sweep_table.py "$OUT" > "$OUT/sweep.md"
echo "study finished in $(( ($(date +%s) - start) / 60 )) min; tables: $OUT/p0/table.md $OUT/p0.3/table.md $OUT/p0.6/table.md $OUT/sweep.md"
