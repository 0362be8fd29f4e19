#!/usr/bin/env bash
# Device checks for a CUDA machine: the device-sensitive tests with their transformers models on the GPU, then
# bench/speed.py on random-weight ~0.5 B and ~1.1 B Llama models in bfloat16 (nothing is downloaded).
#
#   scripts/gpu_check.sh                 # writes logs and JSON under $OUT (default ./gpu-check)
#   PYTHON=/path/to/python TOKENS=32 scripts/gpu_check.sh
#
# Needs a Python with a CUDA build of torch, transformers and the project's other core dependencies; the sources
# are used from src/ (no install). Exits non-zero at the first failing part, after printing its log's tail.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
TOKENS=${TOKENS:-32}          # new tokens per prompt in the benchmark
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE

"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
print(f"gpu_check: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
PY

run() {  # run NAME CMD...: log to $OUT/NAME.log, show the tail on failure
    local name=$1
    shift
    echo "gpu_check: $name" >&2
    if ! "$@" >"$OUT/$name.log" 2>&1; then
        tail -n 40 "$OUT/$name.log" >&2
        echo "gpu_check: $name FAILED (log: $OUT/$name.log)" >&2
        exit 1
    fi
    tail -n 3 "$OUT/$name.log" >&2
}

# 1. the LM contract, the decoder and the invariance suite with the transformers models on the GPU (float32)
run tests env TQSTAR_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -x -p no:cacheprovider \
    tests/lm/test_contract.py tests/lm/test_hf.py tests/core/test_decoder.py tests/core/test_invariance.py tests/integration/test_speed.py

# 2. speed on random-weight Llama models in bfloat16: ratios to the naive reference, the rollout limit and greedy
for model in random-0.5b random-1b; do
    run "speed-$model" "$PYTHON" bench/speed.py --model "$model" --dtype bfloat16 --device "$DEVICE" \
        --reward vowels --prompts 3 --tokens "$TOKENS" --naive-tokens 4 --ablation-tokens 16 \
        --batch-sizes 1 4 8 --json "$OUT/speed-$model-$DEVICE-bf16.json"
    sed -n '/## ratios/,/^$/p' "$OUT/speed-$model.log"
done
echo "gpu_check: all parts passed; logs and JSON in $OUT" >&2
