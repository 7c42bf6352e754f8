#!/usr/bin/env bash
# The one prepared GPU benchmark (issue: acceleration). On a machine with CUDA and PyTorch it
# prints one table in under eight minutes: the paper's CIFAR-10 network at batch 1..256 in fp32,
# bf16 and compiled bf16 with the share of the chip's measured bf16 matmul peak, beside the same
# network exported to ONNX on ONNX Runtime's CUDA provider (a column of the same alternation);
# 50-step DDIM images/s; and `ddpm serve` images/s at 64 concurrent clients.
#
#   bench/gpu.sh                 # results also in $OUT/gpu.json when OUT is set
#
# Dependencies other than torch (numpy, safetensors, fastapi, uvicorn, httpx, ...) are taken
# from wheels in .whl/ when that folder exists (a machine without an index), else must be
# installed; without the server's packages the server row says "skipped", and without
# onnxruntime-gpu, onnx and onnxscript (with onnx-ir) the ONNX Runtime column says "skipped".
# The plain CPU onnxruntime wheel must not sit beside onnxruntime-gpu: both install the same
# module, and the CPU one has no CUDA provider.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ddpm-site .whl/*.whl
    export PYTHONPATH="/tmp/ddpm-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 480 python3 -m bench.gpu ${OUT:+--out "$OUT/gpu.json"} "$@"
