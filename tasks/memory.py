"""How many shards the memory-heavy steps (collect, write) hold at once in this process.

Every shard is independent, so Prefect's thread pool would otherwise parse and join all of them
at the same time: memory would grow with the data. A few dedicated threads run that work
(``in_shard_slot``); their number is drawn from the memory this machine has
(``ENRICH_SHARDS_IN_MEMORY`` overrides it).
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, ParamSpec, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

T = TypeVar("T")

# What one 20,000-row shard of 1024-dim embeddings takes at its peak (parse + join), with room.
BYTES_PER_SHARD = 2 * 1024**3


class MemorySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENRICH_", extra="ignore")

    shards_in_memory: int | None = Field(default=None, ge=1)


def _available_bytes() -> int:
    try:
        for line in open("/proc/meminfo").read().splitlines():  # noqa: PTH123, SIM115
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return BYTES_PER_SHARD


def default_slots(available: int, cores: int) -> int:
    """Half the available memory, a shard budget each, no more than the cores can work on."""
    return max(1, min(cores, available // 2 // BYTES_PER_SHARD))


def slots() -> int:
    configured = MemorySettings().shards_in_memory
    return configured or default_slots(_available_bytes(), os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _shard_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=slots(), thread_name_prefix="enrich-shard")


def in_shard_slot(work: Callable[..., T], *args: Any) -> T:
    """Run ``work(*args)`` on one of the process's shard threads, at most ``slots()`` at once.

    Prefect's thread pool gives every mapped task its own thread (50 shards: 50 threads), and
    the allocators behind polars and pyarrow keep freed memory per thread: memory would grow with
    the number of shards even with few in flight. Here the heavy work of every shard runs on the
    same few threads, in the caller's context (Prefect's run context and logger included); the
    task's own thread only waits.
    """
    context = contextvars.copy_context()
    return _shard_threads().submit(context.run, work, *args).result()


P = ParamSpec("P")


def on_shard_slot(work: Callable[P, T]) -> Callable[P, T]:
    """``work`` with its own signature, run on a shard slot when called: what a task wraps when it
    adds nothing else, so the task does not restate the function's parameters."""

    @functools.wraps(work)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return in_shard_slot(functools.partial(work, *args, **kwargs))

    return run
