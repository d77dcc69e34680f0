#!/usr/bin/env bash
# The GPU path, measured: the demo's model stages on CUDA, ViT-B/16 bf16 feature extraction end to
# end vs. model-only, and batched face detection on 640x360 and 1920x1080 frames vs. facenet-pytorch's
# MTCNN a frame a call, printed as a markdown table.
#
#   benchmarks/gpu_check.sh [--out FILE]      on a CUDA machine (<= 8 minutes on an H200)
#   benchmarks/gpu_check.sh --page benchmarks/RESULTS.md    the same, and replace the results page's gpu section
#   benchmarks/gpu_check.sh --cpu-smoke       the same code on CPU, tiny sizes (tests/benchmarks/test_gpu_check.py)
#
# Python: $PYTHON, else the project's .venv (make venv), else python3. It needs the pinned
# packages (requirements.txt) and no network. Exit codes: 0 all checks ran; 1 a check failed
# (its row says why); 2 no CUDA device / missing packages (the message says which); 124 timeout.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch: run 'make venv' first, or set PYTHON to a Python with the" \
         "pinned packages of requirements.txt" >&2
    exit 2
fi
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT:-480}" "$PY" -m benchmarks.bench_gpu "$@"
