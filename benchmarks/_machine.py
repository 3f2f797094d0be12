"""What a benchmark's timings belong to: one line naming the machine, shared by the scripts."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    """CPU model, cores and torch threads: what the timings belong to."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with {threads} threads"
