"""The coarse pass of an exact search: every stored float16 embedding scored against a query,
in whichever arithmetic this CPU does fast.

Cached embeddings are float16 (half the memory). How fast a CPU multiplies float16 varies: some
have kernels for it and scan 100,000 x 512 in a quarter of float32's time, on others torch
converts element by element and float16 is three times slower than float32. So the scan's
method is picked by timing both on this machine, once per process:

- ``float16``: the stored matrix times the query, in float16;
- ``float32``: the stored matrix in blocks of ``BLOCK`` rows, each converted into one reused
  float32 buffer and multiplied there (no float32 copy of the gallery is kept, and each block is
  read once).

``UIT_SCAN=float16`` or ``UIT_SCAN=float32`` fixes the choice (benchmarks compare both). On a
GPU the scan is float16. The results never depend on the method: ``top_k`` scores its shortlist
again exactly in float32.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Literal

import torch

from uit.core.errors import ConfigError

ScanMethod = Literal["float16", "float32"]
METHODS: tuple[ScanMethod, ...] = ("float16", "float32")
ENV = "UIT_SCAN"
BLOCK = 4096  # rows per float32 block (8 MiB at 512-d); smaller blocks were slower
CALIBRATION_ROWS = 16_384  # rows timed per method: enough to read memory, not to wait


def scan_method() -> ScanMethod:
    """The method this process scans float16 galleries with on the CPU: ``UIT_SCAN`` when set,
    else the faster on this machine (timed once, on first use)."""
    chosen = os.environ.get(ENV, "").strip()
    if chosen:
        if chosen not in METHODS:
            raise ConfigError(f"{ENV}={chosen!r}: choose one of {', '.join(METHODS)}, or unset "
                              "it to let uit time both on this CPU")  # fmt: skip
        return chosen
    return _fastest()


@functools.cache
def _fastest() -> ScanMethod:
    timings = calibration()
    return min(METHODS, key=lambda method: timings[method])


@functools.cache
def calibration() -> dict[str, float]:
    """This process's timing of both methods (``calibrate``), made once: what ``scan_method``
    picked by."""
    return calibrate()


def calibrate(rows: int = CALIBRATION_ROWS, dim: int = 512, repeats: int = 7) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per query of each method on a random (rows, dim)
    float16 gallery. The methods take turns, so that a slow start (threads waking, pages
    faulting in) or a busy moment falls on both."""
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(rows, dim, generator=generator).half()
    query = torch.randn(1, dim, generator=generator)
    timings: dict[str, float] = {method: float("inf") for method in METHODS}
    for _ in range(2):  # warm-up: first calls allocate
        for method in METHODS:
            coarse_scores(query, feats, method)
    for _ in range(repeats):
        for method in METHODS:
            start = time.perf_counter()
            coarse_scores(query, feats, method)
            timings[method] = min(timings[method], (time.perf_counter() - start) * 1000)
    return timings


def coarse_scores(
    query_feats: torch.Tensor, feats: torch.Tensor, method: ScanMethod | None = None
) -> torch.Tensor:
    """(Q, D) x float16 (N, D) -> (Q, N) float32 scores, as ``method`` computes them (by default
    ``scan_method()``; on a GPU always float16)."""
    if feats.is_cuda or (method or scan_method()) == "float16":
        return (feats @ query_feats.to(feats.dtype).T).T.float()  # gallery-major is faster
    queries = query_feats.float()
    out = torch.empty(queries.shape[0], feats.shape[0])  # (Q, N)
    block = torch.empty(min(BLOCK, feats.shape[0]), feats.shape[1])
    for start in range(0, feats.shape[0], BLOCK):
        rows = feats[start : start + BLOCK]
        end = start + rows.shape[0]
        converted = block[: rows.shape[0]]
        if queries.shape[0] > 1:  # a matrix product amortises the conversion over the queries
            converted.copy_(rows)
            torch.mm(queries, converted.T, out=out[:, start:end])
            continue
        # one query: multiply and sum in torch's own threads (a BLAS product after a parallel
        # copy made the two thread pools wait on each other, at random five times slower)
        torch.mul(rows, queries[0], out=converted)
        torch.sum(converted, dim=1, out=out[0, start:end])
    return out
