"""Failpoints: named places where a run can be made to die at once, for crash tests.

``ENRICH_FAILPOINT=<name>`` (or ``<name>:<n>``, the n-th time the point is reached, from 1)
makes the process SIGKILL itself there: no ``finally``, no hook, no flush — the way a host dies.
Unset (always, outside tests), a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

# In pipeline order; `benchmarks/chaos.py` kills a run at each.
POINTS = (
    "plan",  # rows bucketed to staging, before the cache lookup
    "upload",  # request file uploaded, before the job is created
    "create",  # job created, before its id is recorded anywhere
    "poll",  # jobs submitted and recorded, while waiting
    "download",  # a job's output downloaded, before its results are staged
    "write",  # a shard's enriched rows staged, before its rejected rows
    "validate",  # the gate passed, before anything is published
    "publish",  # the data file moved into place, before the manifest
    "promote",  # published, before the cache promotion
)


class FailpointSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENRICH_", extra="ignore")

    failpoint: str | None = None


@lru_cache(maxsize=1)
def _armed() -> tuple[str, int] | None:
    spec = FailpointSettings().failpoint
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"ENRICH_FAILPOINT={spec!r}: unknown point; choose from {POINTS}")
    return name, int(nth or 1)


_hits: dict[str, int] = {}
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Die here (SIGKILL) when ``ENRICH_FAILPOINT`` names this point and hit."""
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == armed[1]:
            os.kill(os.getpid(), signal.SIGKILL)
