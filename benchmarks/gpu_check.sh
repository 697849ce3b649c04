#!/usr/bin/env bash
# The GPU checks in one run (how benchmarks/README.md's GPU figures were made): the batching
# and sampling tests in fp32 on CUDA with a random-weight SmolLM2-shaped model, then
# benchmarks/gpu.py in bf16, then benchmarks/gpu_serve.py (16 and 64 streams through
# `muse serve` with the client's event loop busy; needs aiohttp and python-dotenv, in .whl/). Expects the SmolLM2 tokenizer files in $TOKENIZER (default
# .gpu/tokenizer) and writes logs to $OUT (default out/). Wheels in .whl/ (the versions this
# repository pins, for a machine without internet) are put first on the path when present.
set -uo pipefail
TOKENIZER=${TOKENIZER:-.gpu/tokenizer}
OUT=${OUT:-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__, torch.cuda.get_device_name(0))"
MUSE_TEST_MODEL=random:smollm2-135m MUSE_TEST_DEVICE=cuda MUSE_TEST_TOKENIZER=$TOKENIZER \
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 200 python3 -m pytest -q -p pytest_asyncio.plugin \
    -p pytest_timeout -p no:cacheprovider tests/generation/engine/test_batching.py \
    tests/generation/engine/test_sampling.py 2>&1 | tee "$OUT/pytest.log" | tail -25
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/gpu.py --tokenizer "$TOKENIZER" "$@" 2>&1 \
    | tee "$OUT/gpu.log"
timeout "${SERVE_TIMEOUT:-300}" python3 benchmarks/gpu_serve.py --tokenizer "$TOKENIZER" 2>&1 \
    | tee "$OUT/gpu_serve.log"
