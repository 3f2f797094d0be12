#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA GPU and a PyTorch install (no network
# needed; Python packages missing there can come as wheels in .whl/):
#  1. the paper path: the paper profile (ViT-B-16, 384x128, batch 128, random init) on the
#     synthetic `medium` CUHK-PEDES-style benchmark for 3 epochs: seconds per epoch, peak memory,
#     loss per epoch, test R@1, and whether `uit evaluate` reproduces the selection metrics;
#  2. training-step throughput (benchmarks/train_step.py): seconds per CUHK-PEDES-sized epoch
#     and model FLOPs utilisation.
# Output goes to $OUT (default gpu-out/).
set -euo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
DATA=/tmp/gpu-data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/gpu.txt"
python3 - <<PY 2>&1 | tee "$OUT/data.txt"
import time
from uit.config import SynthConfig
from uit.data.prepare import prepare_benchmark
from uit.data.synth import synthesize

start = time.perf_counter()
synthesize("$DATA/raw", SynthConfig(size="medium"), ("cuhk-pedes",), workers=16)
prepare_benchmark("cuhk-pedes", "$DATA/raw", "$DATA/prepared/cuhk-pedes", check_images="exists")
print(f"medium CUHK-PEDES synthesised and prepared in {time.perf_counter() - start:.0f} s")
PY
# The attribute augmentation and caption masking need spaCy's parse (not installed there): off.
timeout 330 python3 benchmarks/paper_run.py "$DATA/prepared/cuhk-pedes" "$DATA/paper" \
  --set train.epochs=3 --set train.warmup_epochs=1 --set train.num_workers=12 \
  --set augment.keep_attributes_p=0 --set augment.mask_tokens=false 2>&1 | tee "$OUT/paper_run.txt"
cp "$DATA/paper/paper_run.json" "$OUT/" || true
timeout 200 python3 benchmarks/train_step.py --steps 10 --warmup 3 --compile 2>&1 | tee "$OUT/train_step.txt"
