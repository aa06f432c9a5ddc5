#!/usr/bin/env bash
# The prepared GPU check (about 5-8 minutes on one H100/H200; no network, random or built-in weights only):
#   1. mixed precision: 10 AdamW steps at lr 1e-6 move >= 99% of the weights (fp32 masters, bf16 compute)
#   2. sampler-vs-learner log-prob difference per token in fp32 and bf16 (what algo.old_logprobs=auto decides on)
#   3. update MFU of a Qwen2.5-1.5B-shaped model (sdar's packed learner path vs a plain HF forward/backward)
#   4. rollout tokens/s at batch 256: model.generate vs sdar's HFGenerator (and vLLM when it is installed, with the
#      time of one weight push of the 1.5B model into the engine: goal <= 2 s)
#     bash bench/gpu_check.sh          # on the GPU machine
#     bash bench/gpu_check.sh --cpu    # every path with tiny shapes on the CPU (CI runs this)
# Record the printed numbers, with the card, in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ "${1:-}" == "--cpu" ]]; then
  DEV=(--device cpu); TINY=(--tiny --repeats 1 --no-vllm); LP=(--model tiny-random --max-new-tokens 8)
else
  DEV=(); TINY=(); LP=(--model tiny-random)
fi
$PY -c "import torch, platform; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU ' + platform.processor())"
echo "== 1. mixed precision moves the weights"
$PY bench/precision_check.py "${DEV[@]}"
echo "== 2. sampler vs learner log-probs"
$PY bench/logprob_diff.py "${LP[@]}" --precisions fp32 mixed_bf16
echo "== 3-4. update MFU and rollout tokens/s"
$PY bench/gpu_throughput.py "${DEV[@]}" "${TINY[@]}"
echo "gpu_check: done"
