"""Training on several processes with ``torch.distributed``: the one place that knows about ranks.

``torchrun`` starts one process per GPU (or per CPU share, with gloo) and tells each its rank in
the environment; ``session`` joins the process group (nccl on CUDA, gloo on the CPU) and leaves it.
Each rank trains on its slice of the global batch (``IdentityBatchSampler``); ``gather_batch``
puts the slices back together, in the single-process order, with gradients flowing to every
rank's own slice, so that batch-wide losses see the global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from uit.core.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``size`` processes, this one ``rank`` (``local_rank``
    on its machine). The default is a single process."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_world(env: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in the environment (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``); a single process when not launched by torchrun."""
    if "WORLD_SIZE" not in env:
        return World()
    return World(int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"])), int(env["WORLD_SIZE"]))


def current_world() -> World:
    """The world of the process group this process has joined; a single process otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), launched_world().local_rank, dist.get_world_size())


def process_device(world: World, device: torch.device) -> torch.device:
    """The device this rank trains on: its own GPU (``cuda:LOCAL_RANK``) on CUDA."""
    if device.type != "cuda" or not world.distributed:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"torchrun started more processes on this machine ({world.local_rank + 1} or more) "
            f"than it has GPUs ({torch.cuda.device_count()}); set --nproc-per-node (or "
            "train.nproc_per_node) to at most the GPU count"
        )
    return torch.device("cuda", world.local_rank)


@contextmanager
def session(device: torch.device) -> Iterator[World]:
    """Join torchrun's process group for the duration (nccl on CUDA, gloo on the CPU) and
    leave it after; a single process, not launched by torchrun, joins nothing."""
    world = launched_world()
    if not world.distributed or dist.is_initialized():
        yield current_world()
        return
    device = process_device(world, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield world
    finally:
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along the batch dimension; backward sums, over ranks, the gradient each rank's
    loss gives a slice and hands every rank the sum for its own slice."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # reduced in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_batch(tensor: Tensor) -> Tensor:
    """(B / world, ...) on each rank -> (B, ...): the ranks' slices in rank order, which is the
    single-process order of the global batch (the sampler hands rank r the r-th slice).

    Gradients reach each rank's own slice summed over all ranks' losses. Every rank computes the
    same global loss, so the sum is ``world`` times its gradient, and DDP's average over ranks
    brings it back to the single-process gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    return _all_gather(tensor)


def _all_gather(tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: Tensor, world: World) -> Tensor:
    """The mean of ``values`` over the ranks (a NaN on any rank makes it NaN on every rank)."""
    if not world.distributed:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total / world.size


def share_from_main(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wait_for_all(world: World) -> None:
    if world.distributed:
        dist.barrier()


def torchrun_command(module: str, argv: Sequence[str], nproc_per_node: int) -> list[str]:
    """The command that runs ``python -m module argv`` on ``nproc_per_node`` processes of this
    machine (torchrun's standalone rendezvous on a free local port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc_per_node}", "-m", module, *argv]  # fmt: skip


def should_launch(nproc_per_node: int, env: Mapping[str, str] = os.environ) -> bool:
    """Whether a front door must start torchrun itself: more than one process asked for, and
    this process is not one that torchrun started."""
    return nproc_per_node > 1 and "WORLD_SIZE" not in env


def launch(module: str, argv: Sequence[str], nproc_per_node: int) -> None:
    """Run ``module`` under torchrun on ``nproc_per_node`` local processes; a failed process
    ends the whole job (torchrun stops the others) with one error line here."""
    command = torchrun_command(module, argv, nproc_per_node)
    log.info("launching %d training processes: %s", nproc_per_node, " ".join(command))
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise TrainingError(
            f"a training process of the {nproc_per_node} that torchrun started failed (exit code "
            f"{code}); torchrun stopped the others. Its own message is above; checkpoints written "
            "so far are intact, and running the same command again resumes from the last one"
        )
