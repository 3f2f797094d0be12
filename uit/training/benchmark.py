"""Train on a prepared benchmark folder: what ``uit train`` and the train stage call.

This does the file I/O around ``uit.training.train.fit`` (parsed words, the run-folder policy),
so the two front doors share one code path.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uit.core.config import Config
from uit.core.device import resolve_device
from uit.core.errors import DataError, TrainingError
from uit.core.io import folder_lock
from uit.text.augment import build_augment
from uit.text.parsed import TaggedWords, read_attribute_words, read_tagged_words
from uit.training.distributed import session, wait_for_all
from uit.training.train import clear_run, decide_run, fit

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from uit.training.train import FitResult, Reporter


def train_benchmark(
    cfg: Config,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    parsed_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    restart: bool = False,
) -> FitResult:
    """Fit on a prepared benchmark; attribute words (for the augmentation) and tagged words (for
    the token masking) come from ``parsed_dir`` when ``augment.keep_attributes_p`` is above 0 or
    ``augment.mask_tokens`` is on.

    ``restart``: start afresh unless ``out_dir`` holds an interrupted run of this configuration
    (what a pipeline stage wants: its output folder persists so that a killed run resumes, but a
    finished run or one of another configuration is replaced, never continued).

    Under torchrun, every process calls this: it joins the process group for the run, all ranks
    read the run folder before rank 0 alone clears it.
    """

    parsed = read_parsed_inputs(cfg, parsed_dir)
    with session(resolve_device(cfg.train.device)) as world, _writer(out_dir, world.is_main):
        decision = decide_run(out_dir, cfg, replace=restart)  # the one run-folder policy
        wait_for_all(world)
        if decision == "replace" and world.is_main:
            log.info("%s holds a finished run or another configuration: starting afresh", out_dir)
        if restart and decision != "resume" and world.is_main:
            clear_run(out_dir)
        wait_for_all(world)
        return fit(cfg, prepared_dir, out_dir, attribute_words=parsed.attribute_words,
                   augment=parsed.augment, tagged_words=parsed.tagged_words,
                   reporter=reporter)  # fmt: skip


@dataclass(frozen=True)
class ParsedInputs:
    """What training reads from the parsed captions: attribute words and the augmentation that
    keeps them, and tagged words for the token masking; None where the config does not use it."""

    attribute_words: Mapping[int, Sequence[str]] | None = None
    augment: Callable[[str, Sequence[str], random.Random], str] | None = None
    tagged_words: Mapping[int, TaggedWords] | None = None


def read_parsed_inputs(cfg: Config, parsed_dir: str | Path | None) -> ParsedInputs:
    """Only what ``augment.keep_attributes_p > 0`` and ``augment.mask_tokens`` switch on; an
    error naming them when they are on and ``parsed_dir`` is not given."""
    augmenting, masking = cfg.augment.keep_attributes_p > 0, cfg.augment.mask_tokens
    if parsed_dir is None:
        if augmenting or masking:
            keys = [key for key, on in (("augment.keep_attributes_p > 0", augmenting),
                                        ("augment.mask_tokens", masking)) if on]  # fmt: skip
            raise DataError(
                f"{' and '.join(keys)} needs the parsed captions: pass the folder written by "
                "`uit data parse` (or set augment.keep_attributes_p=0 and "
                "augment.mask_tokens=false)"
            )
        return ParsedInputs()
    return ParsedInputs(
        attribute_words=read_attribute_words(parsed_dir) if augmenting else None,
        augment=build_augment(cfg.augment) if augmenting else None,
        tagged_words=read_tagged_words(parsed_dir) if masking else None,
    )


def _writer(out_dir: str | Path, main: bool) -> AbstractContextManager[None]:
    """The run folder's one writer: rank 0 holds its lock for the whole run, so a second run
    into the same folder is refused at once instead of mixing its checkpoints with this one's."""
    if not main:
        return nullcontext()
    busy = (
        f"{out_dir} is being written by another training run (uit train, uit pretrain or a "
        "pipeline stage); wait for it to finish, or give this run another output folder"
    )
    return folder_lock(out_dir, busy, TrainingError)
