"""How many shards the memory-heavy steps (collect, write) hold at once in this process.

Every shard is independent, so Prefect's thread pool would otherwise parse and join all of them
at the same time: memory would grow with the data. A semaphore bounds them; the default is drawn
from the memory this machine has (``ENRICH_SHARDS_IN_MEMORY`` overrides it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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


@lru_cache(maxsize=1)
def _semaphore() -> threading.BoundedSemaphore:
    configured = MemorySettings().shards_in_memory
    slots = configured or default_slots(_available_bytes(), os.cpu_count() or 1)
    return threading.BoundedSemaphore(slots)


@contextmanager
def shard_in_memory() -> Iterator[None]:
    """Hold one of the process's shard slots for the block."""
    with _semaphore():
        yield
