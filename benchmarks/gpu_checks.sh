#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA GPU, PyTorch, spaCy and pytest (no
# network needed: the built-in parser needs no spaCy model; Python packages missing there can
# come as wheels in .whl/). About 8 minutes on an H200 with 16 CPUs (a run stopped early still leaves what it wrote):
#  1. the GPU tests (tests/test_gpu.py, marker `gpu`): bf16 and fused Adam on CUDA, exact resume
#     with CUDA's RNG, the compiled step without graph breaks;
#  2. the paper path: the paper profile (ViT-B-16, 384x128, batch 128, random init, the
#     attribute augmentation and the token masking over captions parsed by the built-in parser)
#     on the synthetic `medium` CUHK-PEDES-style benchmark for 3 epochs: seconds per epoch, peak
#     memory, loss per epoch, test R@1, and whether `uit evaluate` reproduces the selection
#     metrics;
#  3. throughput of the real training step of the paper profile (benchmarks/train_step.py:
#     uit.training.train.train_step with profiles/paper.yaml's keys and CUHK-PEDES's 11,003 ID
#     classes; fp32 / bf16 / fused Adam / + compile): median and spread of seconds per step,
#     compute-only seconds per epoch, model FLOPs utilisation;
#  4. images per second of the paper profile's training loader (benchmarks/loader.py: augmentation,
#     token masking, the released sampler, pinned memory) on the synthetic `medium`
#     CUHK-PEDES-style benchmark, from start and steady, by number of workers.
# Every step runs even when an earlier one failed; SKIP='gpu tests,loader' leaves steps out. Output goes to $OUT (default gpu-out/): one
# file per step and steps.txt, each step's exit status; the script exits 1 when any step failed
# (a failing GPU test included), 0 when all passed. Its data goes to $DATA (/tmp/gpu-data).
set -uo pipefail
OUT=${OUT:-gpu-out}
DATA=${DATA:-/tmp/gpu-data}
mkdir -p "$OUT"
: > "$OUT/steps.txt"
FAILED=()

# step NAME LOG COMMAND...: run COMMAND, its output shown and kept in LOG; record its status.
step() {
  local name=$1 log=$2 status=0
  shift 2
  if [[ ",${SKIP:-}," == *",$name,"* ]]; then echo "$name: skipped" >> "$OUT/steps.txt"; return; fi
  "$@" 2>&1 | tee "$log" || status=$?
  echo "$name: exit $status" >> "$OUT/steps.txt"
  if ((status != 0)); then FAILED+=("$name (exit $status)"); fi
}

wheels() {  # wheels, or a tar.xz of unpacked ones (smaller, where wheels exceed what travels)
  mkdir -p /tmp/site
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || return
  fi
  for archive in .whl/*.tar.xz; do [[ -e $archive ]] && tar -xJf "$archive" -C /tmp/site; done
  return 0
}

machine() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    && python3 -c "import torch; print('torch', torch.__version__, 'cpus', __import__('os').cpu_count())"
}

# POST /search end to end with the paper profile's ViT-B-16 (random weights) encoding the text on
# the GPU in bf16, over a 100,000-image gallery (flat scan: no FAISS needed)
search() {
  timeout 120 python3 benchmarks/search.py --params profiles/paper.yaml --gallery 100000 \
    --queries 10 --index-sizes '' --api-gallery 100000 --api-queries 50 --api-kinds flat
}

gpu_tests() {
  timeout 150 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider
}

data() {
  python3 - <<PY
import time
from uit.core.config import ParseConfig, SynthConfig
from uit.parsing.parse import parse_benchmark
from uit.raw.prepare import prepare_benchmark
from uit.synth.generate import synthesize

start = time.perf_counter()
for size in ("medium", "small"):
    synthesize(f"$DATA/raw-{size}", SynthConfig(size=size), ("cuhk-pedes",), workers=16)
    prepare_benchmark("cuhk-pedes", f"$DATA/raw-{size}", f"$DATA/prepared-{size}/cuhk-pedes",
                      check_images="exists")
    print(f"{size} CUHK-PEDES synthesised and prepared in {time.perf_counter() - start:.0f} s")
info = parse_benchmark(f"$DATA/prepared-medium/cuhk-pedes", f"$DATA/parsed-medium/cuhk-pedes",
                       ParseConfig(backend="builtin"))
print(f"medium captions parsed by {info['backend']} in {time.perf_counter() - start:.0f} s")
PY
}

paper() {
  timeout 300 python3 benchmarks/paper_run.py "$DATA/prepared-medium/cuhk-pedes" "$DATA/paper" \
    --parsed "$DATA/parsed-medium/cuhk-pedes" \
    --set train.epochs=${PAPER_EPOCHS:-3} --set train.warmup_epochs=1 --set train.num_workers=12 \
    --set parse.backend=builtin --set augment.keep_attributes_p=0.2 \
    --set augment.mask_tokens=true \
    && cp "$DATA/paper/paper_run.json" "$OUT/"
}

# profiles/paper.yaml's keys as --set options (random weights: nothing is downloaded here)
paper_sets() {
  python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from paper_run import paper_overrides
print(' '.join('--set ' + o for o in paper_overrides()))"
}

train_step() {
  # shellcheck disable=SC2046  # the options are words without spaces, split on purpose
  timeout 150 python3 benchmarks/train_step.py $(paper_sets) --set model.pretrained= \
    --prepared "$DATA/prepared-medium/cuhk-pedes" --classes 11003 \
    --steps 10 --windows 5 --warmup 3 --compile
}

loader() {
  # shellcheck disable=SC2046
  timeout 300 python3 benchmarks/loader.py "$DATA/prepared-medium/cuhk-pedes" \
    --parsed "$DATA/parsed-medium/cuhk-pedes" $(paper_sets) --set parse.backend=builtin \
    --batches 60 --workers 0 4 8 12 16
}

if compgen -G ".whl/*" > /dev/null; then
  step wheels /tmp/wheels.txt wheels
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
step machine "$OUT/steps.txt" machine  # first: its output heads steps.txt
step "gpu tests" "$OUT/test_gpu.txt" gpu_tests
step search "$OUT/search.txt" search
step data "$OUT/data.txt" data
step "paper run" "$OUT/paper_run.txt" paper
step "train step" "$OUT/train_step.txt" train_step
step loader "$OUT/loader.txt" loader

if ((${#FAILED[@]} > 0)); then
  printf 'FAILED: %s\n' "${FAILED[@]}" | tee -a "$OUT/steps.txt"
  exit 1
fi
echo "all steps passed" | tee -a "$OUT/steps.txt"
