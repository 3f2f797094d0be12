"""One rank of an interrupted two-process run, for tests/test_distributed.py (started by torchrun).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_ddp_worker.py PREPARED
OUT PARAMS``: trains one epoch (as if killed after it) and records, per rank, every checkpoint
the rank wrote in ``OUT/writes-RANK.txt``. With a fourth argument ``crash``, rank 1 fails as soon
as it has joined the job, while rank 0 trains (and waits for it in the first collective).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uit.training.train as train
from uit.core.config import load_config
from uit.core.device import resolve_device
from uit.training.distributed import session


def main(prepared: str, out: str, params: str, mode: str = "") -> None:
    cfg = load_config(params)
    save = train.save_checkpoint
    with session(resolve_device(cfg.train.device)) as world:
        if mode == "crash" and world.rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        record = Path(out) / f"writes-{world.rank}.txt"

        def recording_save(path: Path, *args: Any, **kwargs: Any) -> None:
            with record.open("a") as file:
                file.write(f"{path}\n")
            save(path, *args, **kwargs)

        Path(out).mkdir(parents=True, exist_ok=True)
        record.write_text("")
        train.save_checkpoint = recording_save  # type: ignore[assignment]
        train.fit(cfg, prepared, out, stop_after_epochs=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
