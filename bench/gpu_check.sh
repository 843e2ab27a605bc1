#!/usr/bin/env bash
# GPU check of the training path (bf16 + nccl + DeepSpeed ZeRO-3, a few steps on a SmolLM2-shaped LLaMA) for a
# lent GPU machine, whose image has PyTorch and transformers but neither Ray nor DeepSpeed and no network.
# bench/gpu_check.py drives the same cora_ray.train pieces the Ray Train workers use, without Ray.
#
# 1. Here, once (a machine with pip access), put DeepSpeed and what it needs beyond that image into .whl/:
#      echo /.whl/ >> .git/info/exclude
#      .venv/bin/pip wheel --no-deps -w .whl deepspeed==0.19.8          # an sdist: built into a py3 wheel here
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#        hjson pydantic pydantic-core annotated-types typing-inspection
# 2. On the GPU machine (device tool: carry [".whl"]), from the repository root:
#      bash bench/gpu_check.sh            # -> $OUT/gpu_check.json (or bench/results/gpu_check.json)
#
# With several GPUs it runs one process per GPU under torchrun, so ZeRO-3 really partitions the LLM.
# bench/gpu_ml1m.sh is its companion on real data: real ML-1M and the real bundled SmolLM2 (curve, bf16/fp32 parity).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import deepspeed" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  else
    echo "gpu_check: DeepSpeed is not installed and .whl/ holds no wheels (see the header of $0)" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" DS_ACCELERATOR=cuda TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-bench/results}
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "${GPUS:-0}" -gt 1 ]; then
  "$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" bench/gpu_check.py --out "$OUT_DIR" "$@"
else
  "$PY" bench/gpu_check.py --out "$OUT_DIR" "$@"
fi
if [ "$OUT_DIR" != bench/results ] && [ -d bench/results ]; then cp "$OUT_DIR/gpu_check.json" bench/results/ 2>/dev/null || true; fi
