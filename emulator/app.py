"""The HTTP surface of the emulator: Mistral's files, batch-jobs and inference routes under ``/v1``.

Responses follow the contract the official SDK validates (required fields always present, JSON as
``application/json``, file content as ``application/octet-stream``). Application errors use the
``{"object": "error", ...}`` shape, bad bodies FastAPI's 422 ``{"detail": [...]}``, a missing or
wrong key ``401 {"detail": "Unauthorized"}``. Outside ``/v1`` and without a key, ``/emulator/*``
serves what no API shows: health, and every job and file as the emulator holds them (for tests).

``create_app`` only assembles: the state, the guard in front of ``/v1``, and one router per area
(``emulator.routes``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI

from emulator.catalog import Catalog
from emulator.endpoints import Engine
from emulator.faults import FaultInjector, FaultPlan, ForeignJobs
from emulator.guard import GuardMiddleware
from emulator.routes import files, inference, inspection, jobs
from emulator.routes.common import Backend
from emulator.runner import JobRunner, Timing
from emulator.store import ACTIVE_STATUSES, JobRecord, Store


@dataclass(frozen=True)
class EmulatorConfig:
    data_dir: Path
    api_key: str | None = field(default=None, repr=False)
    faults: FaultPlan = field(default_factory=FaultPlan)
    catalog: Catalog = field(default_factory=lambda: Catalog.load(None))
    timing: Timing = field(default_factory=Timing)
    # Mistral: "1 M pending requests per workspace"; a job that would go over is refused.
    pending_requests_limit: int = 1_000_000


def create_app(config: EmulatorConfig) -> FastAPI:
    store = Store(config.data_dir)
    injector = FaultInjector(config.faults, store.fault_state)
    _seed_foreign_jobs(store, config.faults.workspace.foreign_jobs)
    runner = JobRunner(store, config.catalog, injector, config.timing)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runner.start()
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(
        title="Mistral API emulator",
        lifespan=lifespan,
        openapi_url="/emulator/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.backend = Backend(
        store=store,
        injector=injector,
        engine=Engine(config.catalog),
        runner=runner,
        faults=config.faults,
        pending_requests_limit=config.pending_requests_limit,
    )
    app.add_middleware(GuardMiddleware, api_key=config.api_key, injector=injector, store=store)
    for area in (inspection, files, jobs, inference):
        app.include_router(area.router)
    return app


def _seed_foreign_jobs(store: Store, specs: tuple[ForeignJobs, ...]) -> None:
    """Create another team's jobs once: at the first start whose plan names them, not again."""
    with store.lock:
        if not specs or store.fault_state.get("workspace:foreign_jobs"):
            return
        now = time.time()
        jobs = [spec for spec in specs for _ in range(spec.count)]
        for index, spec in enumerate(jobs):
            # Slightly apart and older than anything created later, so every listing order is fixed.
            store.save_job(_foreign_job(spec, now - (len(jobs) - index) * 1e-3))
        store.fault_state["workspace:foreign_jobs"] = 1
        store.save_fault_state()


def _foreign_job(spec: ForeignJobs, created: float) -> JobRecord:
    queued = spec.status == "QUEUED"
    ended = None if spec.status in ACTIVE_STATUSES else created
    succeeded = spec.requests if spec.status == "SUCCESS" else 0
    message = {
        "FAILED": "Batch job failed: internal error while processing requests",
        "TIMEOUT_EXCEEDED": "The batch job exceeded its timeout",
    }.get(spec.status)
    return JobRecord(
        id=str(uuid.uuid4()),
        input_files=[],
        metadata=spec.metadata,
        endpoint=spec.endpoint,
        model=spec.model,
        status=spec.status,
        created_at=int(created),
        created_at_precise=created,
        total_requests=0 if queued else spec.requests,
        completed_requests=succeeded,
        succeeded_requests=succeeded,
        started_at=None if queued else int(created),
        completed_at=None if ended is None else int(ended),
        ended_at_precise=ended,
        errors=[] if message is None else [{"message": message, "count": 1}],
        requests=spec.requests,
        foreign=True,
    )


__all__ = ["EmulatorConfig", "create_app"]
