#!/usr/bin/env bash
# The prepared GPU check of issue #4: one call on a lent H100/H200, results under $OUT (5–8 min).
#
# Before the call, in the repository root here (onnx2torch is the one dependency the device image lacks):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl onnx2torch==1.5.15
# The call (device tool): run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Elsewhere: OUT=gpu-check bash benchmarks/gpu_check.sh   (the project venv if there is one, else python3; DEVICE=cpu MODELS=digits: a smoke test)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-digits,vgg16,resnet50}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
{ nvidia-smi -L 2>&1; "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/device.txt"

# METHOD §6 oracles (linear, identity, masking, preprocessing and layout invariance) on this device.
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_method.py 2>&1 | tee "$OUT/oracles.log"

# Authors' loop vs ours, fp32 then bf16 autocast; each ends with its RESULT lines.
timeout 240 "$PYTHON" benchmarks/bench_vs_authors.py --device "$DEVICE" --models "$MODELS" --images 4 --repeats 2 --no-stages \
  2>&1 | tee "$OUT/bench_fp32.log"
timeout 150 "$PYTHON" benchmarks/bench_vs_authors.py --device "$DEVICE" --models "${MODELS#digits,}" --images 4 --repeats 1 \
  --no-stages --precision bf16 2>&1 | tee "$OUT/bench_bf16.log"
grep -h '^RESULT' "$OUT"/bench_*.log | tee "$OUT/results.txt"
