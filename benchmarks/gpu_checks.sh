#!/usr/bin/env bash
# The GPU checks of the training issue, as one script for a machine with a CUDA GPU and a
# PyTorch install (no network needed): training-step throughput of ViT-B-16 at 384x128, batch
# 128, full UIT, fp32 vs bf16 autocast; then the data loader's images/s per worker count on a
# synthetic CUHK-PEDES-style set. Python packages missing there can come as wheels in .whl/.
# Output tables go to $OUT (default gpu-out/).
set -euo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/gpu.txt"
python3 benchmarks/train_step.py --steps 10 --warmup 3 --compile | tee "$OUT/train_step.txt"
python3 - <<'PY'
from uit.config import SynthConfig
from uit.data.prepare import prepare_benchmark
from uit.data.synth import synthesize

synthesize("/tmp/gpu-data/raw", SynthConfig(size="small"), ("cuhk-pedes",), workers=16)
prepare_benchmark("cuhk-pedes", "/tmp/gpu-data/raw", "/tmp/gpu-data/prepared/cuhk-pedes")
PY
python3 benchmarks/loader.py /tmp/gpu-data/prepared/cuhk-pedes --workers 0 1 4 8 16 \
  --batch-size 128 --batches 30 | tee "$OUT/loader.txt"
