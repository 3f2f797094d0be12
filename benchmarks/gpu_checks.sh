#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA GPU, PyTorch and pytest (no network
# needed; Python packages missing there can come as wheels in .whl/). About 8 minutes on an H200
# with 16 CPUs:
#  1. the GPU tests (tests/test_gpu.py, marker `gpu`): bf16 and fused Adam on CUDA, exact resume
#     with CUDA's RNG, the compiled step without graph breaks;
#  2. the paper path: the paper profile (ViT-B-16, 384x128, batch 128, random init) on the
#     synthetic `medium` CUHK-PEDES-style benchmark for 3 epochs: seconds per epoch, peak memory,
#     loss per epoch, test R@1, and whether `uit evaluate` reproduces the selection metrics;
#  3. throughput of the real training step (benchmarks/train_step.py: uit.training.train.train_step,
#     fp32 / bf16 / + fused Adam / + compile): median and spread of seconds per step, compute-only
#     seconds per CUHK-PEDES-sized epoch, model FLOPs utilisation;
#  4. images per second of the data pipeline (benchmarks/loader.py) on the synthetic `small`
#     CUHK-PEDES-style benchmark, from start and steady, by number of workers.
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
timeout 150 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 \
  | tee "$OUT/test_gpu.txt" || true
python3 - <<PY 2>&1 | tee "$OUT/data.txt"
import time
from uit.core.config import SynthConfig
from uit.raw.prepare import prepare_benchmark
from uit.synth import synthesize

start = time.perf_counter()
for size in ("medium", "small"):
    synthesize(f"$DATA/raw-{size}", SynthConfig(size=size), ("cuhk-pedes",), workers=16)
    prepare_benchmark("cuhk-pedes", f"$DATA/raw-{size}", f"$DATA/prepared-{size}/cuhk-pedes",
                      check_images="exists")
    print(f"{size} CUHK-PEDES synthesised and prepared in {time.perf_counter() - start:.0f} s")
PY
# The attribute augmentation and caption masking need spaCy's parse (not installed there): off.
timeout 300 python3 benchmarks/paper_run.py "$DATA/prepared-medium/cuhk-pedes" "$DATA/paper" \
  --set train.epochs=3 --set train.warmup_epochs=1 --set train.num_workers=12 \
  --set augment.keep_attributes_p=0 --set augment.mask_tokens=false 2>&1 | tee "$OUT/paper_run.txt"
cp "$DATA/paper/paper_run.json" "$OUT/" || true
timeout 150 python3 benchmarks/train_step.py --steps 10 --windows 5 --warmup 3 --compile 2>&1 \
  | tee "$OUT/train_step.txt"
timeout 60 python3 benchmarks/loader.py "$DATA/prepared-small/cuhk-pedes" --batch-size 128 \
  --batches 60 --workers 0 4 8 12 16 2>&1 | tee "$OUT/loader.txt"
