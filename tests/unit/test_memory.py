"""The shard threads: however many tasks call in, the heavy work runs on ``slots`` threads."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks import memory

RUN = contextvars.ContextVar("run", default="none")


@pytest.fixture
def two_slots(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ENRICH_SHARDS_IN_MEMORY", "2")
    memory._shard_threads.cache_clear()
    yield
    memory._shard_threads().shutdown()
    memory._shard_threads.cache_clear()


def test_twenty_callers_share_two_threads_and_keep_their_context(two_slots: None) -> None:
    lock = threading.Lock()
    running, most, threads = [0], [0], set()
    release = threading.Event()

    def work(shard: int) -> tuple[int, str]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            threads.add(threading.get_ident())
        release.wait(timeout=10)
        with lock:
            running[0] -= 1
        return shard, RUN.get()

    def task(shard: int) -> tuple[int, str]:  # what a Prefect task thread does
        RUN.set(f"run-{shard}")
        return memory.in_shard_slot(work, shard)

    with ThreadPoolExecutor(max_workers=20) as callers:
        futures = [callers.submit(task, shard) for shard in range(20)]
        release.set()
        done = [f.result(timeout=30) for f in futures]
    assert done == [(shard, f"run-{shard}") for shard in range(20)]
    assert most[0] <= 2 and len(threads) == 2


def test_an_error_reaches_the_caller(two_slots: None) -> None:
    def fail() -> None:
        raise ValueError("shard 3 is broken")

    with pytest.raises(ValueError, match="shard 3 is broken"):
        memory.in_shard_slot(fail)
