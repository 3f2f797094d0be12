"""An identity sampler: every batch holds ``instances`` images of each of batch/instances ids.

Batches are planned for the global batch size from (seed, epoch) alone, so every process of a
``torch.distributed`` job plans the same ones and takes its own slice of each.

``random_instances`` reproduces the released sampler (``RandomIdnumSampler``): each identity
draws once per epoch how many captions it brings at a time (1 to ``instances``); groups of
batch/instances identities bring their captions into one stream, which is cut into batches. So a
batch holds about 85 identities of 128 early in an epoch and more later (the identities that
bring one caption at a time last longer), about 95 on average; one identity can appear in two
consecutive groups of the same batch.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from uit.data.transforms import sample_seed


class IdentityBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        instances: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        random_instances: bool = False,
    ) -> None:
        if batch_size % (instances * world_size):
            raise ValueError(
                f"train.batch_size ({batch_size}) must be a multiple of train.instances_per_id "
                f"({instances}) times the number of processes ({world_size})"
            )
        self.by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.by_label[label].append(index)
        if len(self.by_label) < batch_size // instances:
            raise ValueError(
                f"train.batch_size {batch_size} needs {batch_size // instances} identities per "
                f"batch but the training split has only {len(self.by_label)}; lower the batch size"
            )
        self.batch_size, self.instances = batch_size, instances
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.random_instances = random_instances
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, rng: random.Random) -> dict[int, list[list[int]]]:
        """Each identity's samples, shuffled and cut into groups of ``instances`` (with
        ``random_instances``: of a size from 1 to ``instances`` drawn per identity)."""
        chunks: dict[int, list[list[int]]] = {}
        for label in sorted(self.by_label):
            size = rng.randint(1, self.instances) if self.random_instances else self.instances
            indices = list(self.by_label[label])
            if len(indices) < size:  # too few: repeat some
                indices += rng.choices(indices, k=size - len(indices))
            rng.shuffle(indices)
            usable = len(indices) - len(indices) % size
            chunks[label] = [indices[i : i + size] for i in range(0, usable, size)]
        return chunks

    def plan(self) -> list[list[int]]:
        """All global batches of this epoch.

        Groups of batch/instances identities bring one chunk each into a stream, cut into batches
        of ``batch_size`` (the last, shorter one dropped). With fixed ``instances`` every group
        is exactly one batch.
        """
        rng = random.Random(sample_seed(self.seed, self.epoch, 99))
        chunks = self._chunks(rng)
        available = sorted(chunks)
        per_group = self.batch_size // self.instances
        stream: list[int] = []
        while len(available) >= per_group:
            for label in rng.sample(available, per_group):
                stream.extend(chunks[label].pop())
                if not chunks[label]:
                    available.remove(label)
        usable = len(stream) - len(stream) % self.batch_size
        return [stream[i : i + self.batch_size] for i in range(0, usable, self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch_size // self.world_size
        for batch in self.plan():
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return len(self.plan())
