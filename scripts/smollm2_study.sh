#!/usr/bin/env bash
# GRPO and SDAR on the real SmolLM2-135M-Instruct (docs/results/smollm2_testbed.md), from the warm start of
# `sdar sft --config configs/sft/smollm2_testbed.yaml`: GRPO with 3 seeds against the warm start itself (row vanilla:
# the same panel and sampling seeds); SDAR_SEEDS="0" (or "0 1 2") adds SDAR beside it. Three lanes, one CPU thread
# and one seed each (GRPO, then the warm start's evaluation on the same sampling seed, then SDAR when asked): the
# lanes carry equal work and end together, where two lanes left one of them with two runs. On 2 cores the three
# lanes share the cores. Every part is `sdar compare`, so running the script again resumes; the table lines only
# read the finished runs back.
#   bash scripts/smollm2_study.sh            (OUT=runs/smollm2_study by default)
#   STEPS=16 bash scripts/smollm2_study.sh   (the shorter study; a longer one later extends these runs, not redoes them)
#   WARM_START=1 bash scripts/smollm2_study.sh (rebuild the warm start first; it is built anyway when missing)
# EXTRA adds overrides to every part, e.g. EXTRA="--model.gradient_checkpointing true --optim.micro_batch_tokens 2048"
# to extend runs trained with the preset's earlier settings (part of a run's identity; they change no update).
set -euo pipefail
cd "$(dirname "$0")/.."
SDAR=${SDAR:-.venv/bin/sdar}
OUT=${OUT:-runs/smollm2_study}
PRESET=${PRESET:-configs/testbed/smollm2_rl.yaml}
STEPS=${STEPS:-32}
read -r -a EXTRA <<< "${EXTRA:-}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
start=$(date +%s)
WARM=$(sed -n 's/^  name: *//p' "$PRESET" | head -1)  # the preset's model: the warm start's folder
if [ "${WARM_START:-0}" = 1 ] || [ ! -f "$WARM/model.safetensors" ]; then
  $SDAR model prepare smollm2-135m >> "$OUT.log" 2>&1
  timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "warm start: peak RSS %M KiB, %e s")
  "${timer[@]}" $SDAR sft --config configs/sft/smollm2_testbed.yaml --sft.out-dir "$WARM" --overwrite >> "$OUT.log" 2>&1
  echo "warm start finished in $(( ($(date +%s) - start) / 60 )) min"
fi
part() {  # part METHOD SEED; /usr/bin/time records each part's peak resident memory in the log
  local timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "part $1 seed $2: peak RSS %M KiB, %e s")
  "${timer[@]}" $SDAR compare --config "$PRESET" --methods "$1" --seeds "$2" --out "$OUT" --total_steps "$STEPS" \
    "${EXTRA[@]}" >> "$OUT.log" 2>&1
}
study=$(date +%s)
SDAR_SEEDS=${SDAR_SEEDS:-}
sdar_seed() { if [[ " $SDAR_SEEDS " == *" $1 "* ]]; then part sdar "$1"; fi; }
lanes=()
for seed in 0 1 2; do
  ( part grpo "$seed"; part vanilla "$seed"; sdar_seed "$seed" ) & lanes+=($!)
done
for lane in "${lanes[@]}"; do wait "$lane"; done
echo "runs finished in $(( ($(date +%s) - study) / 60 )) min ($(( ($(date +%s) - start) / 60 )) min with the warm start)"
# the tables: GRPO against the warm start (paired by seed), then SDAR beside GRPO on SDAR's seeds
$SDAR compare --config "$PRESET" --methods vanilla grpo --seeds 0 1 2 --out "$OUT" --baseline vanilla \
  --total_steps "$STEPS" "${EXTRA[@]}"
cp "$OUT/table.md" "$OUT.grpo_vs_warm_start.md"
if [ -n "$SDAR_SEEDS" ]; then
  $SDAR compare --config "$PRESET" --methods vanilla grpo sdar --seeds $SDAR_SEEDS --out "$OUT" --baseline grpo \
    --total_steps "$STEPS" "${EXTRA[@]}"
fi
