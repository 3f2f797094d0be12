"""The Prefect flows against a real (temporary) Prefect API: the machine's GPU limit
``uit-gpu-<host>`` lets one training at a time through, whichever flow run asks. DVC is replaced
by a stand-in that records when each command ran, so this takes seconds, not a pipeline run."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from uit.app.flows import pipeline

pytestmark = pytest.mark.slow

Span = tuple[str, str, float, float]  # (project, dvc command, start, end)


def run_two_trainings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Span]:
    """Two ``train`` flow runs at once, each in its own clone, two benchmarks each, asking for
    the GPU limit together; every DVC command takes 0.4 s. Returns when each command ran."""
    spans: list[Span] = []
    lock = threading.Lock()

    def dvc(args: Sequence[str], project: str) -> str:
        start = time.monotonic()
        time.sleep(0.4)
        with lock:
            spans.append((project, " ".join(args), start, time.monotonic()))
        return ""

    both_ready = threading.Barrier(2, timeout=120)
    ensure = pipeline.ensure_gpu_limit

    def ensure_gpu_limit() -> str:  # then both runs ask for the limit at the same moment
        name = ensure()
        both_ready.wait()
        return name

    monkeypatch.setattr(pipeline, "dvc", dvc)
    monkeypatch.setattr(pipeline, "ensure_gpu_limit", ensure_gpu_limit)
    monkeypatch.setattr(pipeline, "publish_metrics", lambda project, name: [])
    clones = [str(tmp_path / f"clone-{i}") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(pipeline.train, ["rstpreid", "cuhk-pedes"], c) for c in clones]
        for run in runs:
            run.result()
    assert len(spans) == 8  # train and evaluate, two benchmarks, two flow runs
    return spans


def held(spans: list[Span]) -> list[tuple[str, float, float]]:
    """Per flow run and benchmark, from its train command's start to its evaluate's end: the
    stretch the flow holds the GPU limit for."""
    by_key: dict[tuple[str, str], list[float]] = {}
    for project, command, start, end in spans:
        key = (project, command.split("@")[1])
        by_key.setdefault(key, []).extend([start, end])
    return [(project, min(times), max(times)) for (project, _), times in by_key.items()]


def overlaps(spans: list[Span]) -> list[tuple[str, str]]:
    stretches = held(spans)
    return [(a[0], b[0]) for i, a in enumerate(stretches) for b in stretches[i + 1 :]
            if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]  # fmt: skip


def test_the_gpu_limit_serialises_training_across_flow_runs(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spans = run_two_trainings(monkeypatch, tmp_path)
    assert overlaps(spans) == [], sorted(spans, key=lambda span: span[2])
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(pipeline.gpu_limit_name())
    assert limit.limit == 1 and limit.active_slots == 0  # one slot, released at the end


def test_without_the_limit_the_same_runs_overlap(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The control: the check above can fail. Without the limit the two runs train at once."""

    @contextlib.contextmanager
    def no_slot(project: str) -> Iterator[None]:
        pipeline.ensure_gpu_limit()  # the runs meet as they would for the slot, and take none
        yield

    monkeypatch.setattr(pipeline, "gpu_slot", no_slot)
    assert overlaps(run_two_trainings(monkeypatch, tmp_path)) != []


def test_runs_that_create_the_gpu_limit_at_the_same_moment_all_get_it(prefect_api: str) -> None:
    """Creating the limit races: Prefect's upsert reads, finds nothing, and creates, so of two
    runs starting together one met a unique-name error and its flow failed (seen in CI)."""
    name = pipeline.gpu_limit_name()
    for _ in range(5):
        with get_client(sync_client=True) as client, contextlib.suppress(Exception):
            client.delete_global_concurrency_limit_by_name(name)
        together = threading.Barrier(6, timeout=60)

        def ensure(together: threading.Barrier = together) -> str:
            together.wait()
            return pipeline.ensure_gpu_limit()

        with ThreadPoolExecutor(6) as pool:
            names = [f.result() for f in [pool.submit(ensure) for _ in range(6)]]
        assert names == [name] * 6
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1
