"""``/emulator/*``: outside ``/v1`` and without a key, what no API shows — health, and every job
and file as the emulator holds them (what tests count paid jobs and unused uploads by)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from emulator.routes.common import Emulated

router = APIRouter(prefix="/emulator")


@router.get("/health")
async def health(backend: Emulated) -> dict[str, Any]:
    store = backend.store
    with store.lock:
        jobs = len(store.jobs)
        files = len(store.files)
    return {"status": "ok", "jobs": jobs, "files": files}


@router.get("/jobs")
async def inspect_jobs(backend: Emulated) -> dict[str, Any]:
    """Every job, oldest first, with the digest of its request content (private in the API):
    what tests count paid jobs by."""
    with backend.store.lock:
        jobs = sorted(backend.store.jobs.values(), key=lambda j: j.created_at_precise)
    return {
        "jobs": [
            {
                "id": j.id,
                "status": j.status,
                "metadata": j.metadata,
                "endpoint": j.endpoint,
                "model": j.model,
                "created_at": j.created_at,
                "requests": j.requests,
                "content_sha256": j.content_sha256,
            }
            for j in jobs
        ]
    }


@router.get("/files")
async def inspect_files(backend: Emulated) -> dict[str, Any]:
    """Every file, oldest first, with the jobs that take it as input: uploads no job uses."""
    store = backend.store
    with store.lock:
        files = sorted(store.files.values(), key=lambda f: (f.created_at, f.id))
        users: dict[str, list[str]] = {}
        for job in sorted(store.jobs.values(), key=lambda j: j.created_at_precise):
            for file_id in job.input_files:
                users.setdefault(file_id, []).append(job.id)
    return {
        "files": [
            {
                "id": f.id,
                "purpose": f.purpose,
                "filename": f.filename,
                "bytes": f.bytes,
                "used_by": users.get(f.id, []),
            }
            for f in files
        ]
    }
