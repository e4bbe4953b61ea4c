"""What every router needs: the emulator's state, handed to routes as a FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from emulator.endpoints import Engine
from emulator.faults import FaultInjector, FaultPlan
from emulator.runner import JobRunner
from emulator.store import Store


@dataclass(frozen=True)
class Backend:
    """The state behind the routes; one per app, kept in ``app.state.backend``."""

    store: Store
    injector: FaultInjector
    engine: Engine
    runner: JobRunner
    faults: FaultPlan
    pending_requests_limit: int


def backend(request: Request) -> Backend:
    found: Backend = request.app.state.backend
    return found


Emulated = Annotated[Backend, Depends(backend)]


def int_param(query: Any, name: str, default: int) -> int | None:
    """A query parameter as an integer: ``default`` when absent, None when not a number."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None
