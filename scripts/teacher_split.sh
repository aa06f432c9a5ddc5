#!/usr/bin/env bash
# Teacher informativeness on SmolLM2-135M at step 0, for each privileged source, on the built-in game and on ALFWorld
# (docs/results/teacher_split.md): one SDAR step per (environment, source) whose metrics hold
# sdar/gap_action_agree, sdar/gap_action_disagree and sdar/expert_agree_ratio, from the environment's warm start.
#   bash scripts/teacher_split.sh            (OUT=runs/gap by default; the warm starts are made if missing)
# On 2 cores beside other work: ALFWorld games 3 min, each ALFWorld warm start 26+ min, each step 7-19 min.
set -euo pipefail
cd "$(dirname "$0")/.."
SDAR=${SDAR:-.venv/bin/sdar}
OUT=${OUT:-runs/gap}
GAMES=${GAMES:-runs/alfworld_games}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
mkdir -p "$OUT"
timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "%C: peak RSS %M KiB, %e s")
$SDAR model prepare smollm2-135m
# the built-in game: the warm start of docs/results/smollm2_testbed.md, the RL preset of its study
[ -f runs/testbed/sft_smollm2/config.json ] || $SDAR sft --config configs/sft/smollm2_testbed.yaml
for src in expert_plan skills; do
  [ -f "$OUT/toy_$src/metrics.jsonl" ] || "${timer[@]}" $SDAR train --config configs/testbed/smollm2_rl.yaml \
    --algo.method sdar --teacher.source $src --total-steps 1 --out-dir "$OUT/toy_$src" > "$OUT/toy_$src.log" 2>&1
done
# ALFWorld: generated games (pick-and-place, look-at-in-light), the ALFWorld warm start, the miniature preset
if [ ! -d "$GAMES/train" ]; then
  $SDAR envs generate alfworld --n 48 --seed 1 --split train --out "$GAMES" \
    --task-types pick_and_place_simple look_at_obj_in_light
  $SDAR envs generate alfworld --n 24 --seed 2 --split eval --out "$GAMES" \
    --task-types pick_and_place_simple look_at_obj_in_light
fi
[ -f runs/sft_smollm2_alfworld/config.json ] || \
  $SDAR sft --config configs/sft/smollm2_alfworld.yaml --env.data-dir "$GAMES"
for src in expert_plan skills; do
  [ -f "$OUT/alfworld_$src/metrics.jsonl" ] || "${timer[@]}" $SDAR train --config configs/mini/alfworld_cpu.yaml \
    --env.data-dir "$GAMES" --algo.method sdar --teacher.source $src --total-steps 1 --rollout.tasks-per-step 2 \
    --out-dir "$OUT/alfworld_$src" > "$OUT/alfworld_$src.log" 2>&1
done
# the same ALFWorld warm start with half of its turns also shown with the plan (as the built-in game's), then the plan
[ -f runs/sft_smollm2_alfworld_plan/config.json ] || \
  $SDAR sft --config configs/sft/smollm2_alfworld.yaml --env.data-dir "$GAMES" --sft.privileged-fraction 0.5 \
    --teacher.source expert_plan --sft.eval-privileged --sft.eval-tasks 4 --sft.out-dir runs/sft_smollm2_alfworld_plan
[ -f "$OUT/alfworld_plan_warm_expert_plan/metrics.jsonl" ] || "${timer[@]}" $SDAR train \
  --config configs/mini/alfworld_cpu.yaml --model.name runs/sft_smollm2_alfworld_plan --env.data-dir "$GAMES" \
  --algo.method sdar --teacher.source expert_plan --total-steps 1 --rollout.tasks-per-step 2 \
  --out-dir "$OUT/alfworld_plan_warm_expert_plan" > "$OUT/alfworld_plan_warm_expert_plan.log" 2>&1
# the same again with an empty think block (as the built-in game's warm start): the action tokens carry the choice
[ -f runs/sft_smollm2_alfworld_plan_noreason/config.json ] || \
  $SDAR sft --config configs/sft/smollm2_alfworld.yaml --env.data-dir "$GAMES" --sft.privileged-fraction 0.5 \
    --teacher.source expert_plan --sft.eval-privileged --sft.eval-tasks 4 --sft.no-reasoning \
    --sft.out-dir runs/sft_smollm2_alfworld_plan_noreason
[ -f "$OUT/alfworld_plan_noreason_expert_plan/metrics.jsonl" ] || "${timer[@]}" $SDAR train \
  --config configs/mini/alfworld_cpu.yaml --model.name runs/sft_smollm2_alfworld_plan_noreason \
  --env.data-dir "$GAMES" --algo.method sdar --teacher.source expert_plan --total-steps 1 \
  --rollout.tasks-per-step 2 --out-dir "$OUT/alfworld_plan_noreason_expert_plan" \
  > "$OUT/alfworld_plan_noreason_expert_plan.log" 2>&1
