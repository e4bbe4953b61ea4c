"""``/v1/batch/jobs``: create (from input files or inline requests), list, get, cancel, delete.

A created job is only recorded here; the ``JobRunner`` moves it through its lifecycle. Listings
follow the fault plan's ``listing`` block (filters ignored, pages capped, new jobs listed late).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from emulator.endpoints import ENDPOINTS
from emulator.responses import api_error, json_response, not_found, validation_error
from emulator.routes.common import Backend, Emulated, int_param
from emulator.store import ACTIVE_STATUSES, JobRecord, Store, sha256_of

MAX_INLINE_REQUESTS = 10_000
BATCH_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/fim/completions",
    "/v1/moderations",
    "/v1/chat/moderations",
    "/v1/ocr",
    "/v1/classifications",
    "/v1/chat/classifications",
    "/v1/conversations",
    "/v1/audio/transcriptions",
)
# Query parameters of the listing that are not metadata filters.
_LIST_PARAMS = frozenset(
    {
        "page",
        "page_size",
        "model",
        "agent_id",
        "metadata",
        "created_after",
        "created_by_me",
        "status",
        "order_by",
    }
)

router = APIRouter()


class BatchRequest(BaseModel):
    custom_id: str | None = None
    body: dict[str, Any]


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=32)]
MetadataValue = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class CreateBatchJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: Literal[BATCH_ENDPOINTS]  # type: ignore[valid-type]
    input_files: list[str] | None = None
    requests: list[BatchRequest] | None = Field(default=None, max_length=MAX_INLINE_REQUESTS)
    model: str | None = None
    agent_id: str | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = None
    timeout_hours: int = Field(default=24, ge=1, le=168)

    @model_validator(mode="after")
    def one_input(self) -> CreateBatchJob:
        if bool(self.input_files) == bool(self.requests):
            raise ValueError("give exactly one of input_files or requests")
        return self


@router.post("/v1/batch/jobs")
async def create_job(spec: CreateBatchJob, backend: Emulated) -> Response:
    store = backend.store
    refusal = _unusable_input(spec, store)
    if refusal is not None:
        return refusal
    requested = (
        len(spec.requests)
        if spec.requests
        else sum(store.files[f].num_lines or 0 for f in spec.input_files or [])
    )
    refusal = _over_quota(backend, requested)
    if refusal is not None:
        return refusal
    job_id = str(uuid.uuid4())
    inputs = await run_in_threadpool(_request_lines, store, job_id, spec)
    digest = await run_in_threadpool(sha256_of, inputs)
    now = time.time()
    job = JobRecord(
        id=job_id,
        input_files=list(spec.input_files or []),
        metadata=spec.metadata,
        endpoint=spec.endpoint,
        model=backend.engine.catalog.job_named(spec.model),
        agent_id=spec.agent_id,
        created_at=int(now),
        created_at_precise=now,
        timeout_hours=spec.timeout_hours,
        inline=bool(spec.requests),
        requests=requested,
        content_sha256=digest,
    )
    store.save_job(job)
    backend.runner.poke()
    return json_response(job.public())


@router.get("/v1/batch/jobs")
async def list_jobs(request: Request, backend: Emulated) -> Response:
    query = request.query_params
    page, page_size = int_param(query, "page", 0), int_param(query, "page_size", 100)
    if page is None or page_size is None or page < 0 or page_size < 1:
        return validation_error(
            ["query", "page"], "page and page_size must be non-negative integers", "int_parsing"
        )
    try:
        wanted = JobFilter.parse(query)
    except QueryError as exc:
        return exc.response
    listing = backend.faults.listing
    listed_before = time.time() - listing.lag_seconds
    with backend.store.lock:
        jobs = [j for j in backend.store.jobs.values() if j.created_at_precise <= listed_before]
    selected = [j for j in jobs if listing.ignore_filters or wanted.matches(j)]
    selected.sort(
        key=lambda j: j.created_at_precise,
        reverse=query.get("order_by", "-created") != "created",
    )
    page_size = min(page_size, listing.page_size_cap or page_size)
    window = selected[page * page_size : (page + 1) * page_size]
    return json_response(
        {"data": [j.public() for j in window], "object": "list", "total": len(selected)}
    )


@router.get("/v1/batch/jobs/{job_id}")
async def get_job(job_id: str, backend: Emulated, inline: bool = False) -> Response:
    job = backend.store.jobs.get(job_id)
    if job is None:
        return not_found("Batch job", job_id)
    body = job.public()
    if inline:
        body["outputs"] = _outputs(backend.store, job)
    return json_response(body)


@router.post("/v1/batch/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, backend: Emulated) -> Response:
    store = backend.store
    with store.lock:
        job = store.jobs.get(job_id)
        if job is None:
            return not_found("Batch job", job_id)
        if job.status in ACTIVE_STATUSES and job.status != "CANCELLATION_REQUESTED":
            job = job.model_copy(update={"status": "CANCELLATION_REQUESTED"})
            store.save_job(job)
    backend.runner.poke()
    return json_response(job.public())


@router.delete("/v1/batch/jobs/{job_id}")
async def delete_job(job_id: str, backend: Emulated) -> Response:
    if job_id not in backend.store.jobs:
        return not_found("Batch job", job_id)
    await run_in_threadpool(backend.store.delete_job, job_id)
    return json_response({"id": job_id, "object": "batch", "deleted": True})


class QueryError(ValueError):
    """A listing parameter that does not parse; ``response`` is FastAPI's 422 for it."""

    def __init__(self, name: str, message: str, type_: str, given: str) -> None:
        super().__init__(message)
        self.response = validation_error(["query", name], message, type_, given)


@dataclass(frozen=True)
class JobFilter:
    """The filters of a job listing; a job must pass every one that is set."""

    statuses: frozenset[str]
    model: str | None
    agent_id: str | None
    created_after: float | None
    metadata: dict[str, str]

    @classmethod
    def parse(cls, query: Any) -> JobFilter:
        """Read the filters from the query; raises ``QueryError`` for one that does not parse.

        Metadata filters come as a JSON object in ``metadata`` and as plain ``key=value`` pairs.
        """
        metadata: dict[str, str] = {k: v for k, v in query.items() if k not in _LIST_PARAMS}
        if raw := query.get("metadata"):
            try:
                metadata.update({str(k): str(v) for k, v in orjson.loads(raw).items()})
            except (ValueError, AttributeError) as exc:
                raise QueryError(
                    "metadata", "metadata must be a JSON object", "json_invalid", raw
                ) from exc
        return cls(
            statuses=frozenset(query.getlist("status")),
            model=query.get("model"),
            agent_id=query.get("agent_id"),
            created_after=_timestamp(query.get("created_after")),
            metadata=metadata,
        )

    def matches(self, job: JobRecord) -> bool:
        return (
            (not self.statuses or job.status in self.statuses)
            and (self.model is None or job.model == self.model)
            and (self.agent_id is None or job.agent_id == self.agent_id)
            and (self.created_after is None or job.created_at_precise > self.created_after)
            and all((job.metadata or {}).get(k) == v for k, v in self.metadata.items())
        )


def _timestamp(raw: str | None) -> float | None:
    """``created_after`` as epoch seconds; a datetime without a zone is taken as UTC."""
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise QueryError(
            "created_after", "Input should be a valid datetime", "datetime_from_date_parsing", raw
        ) from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _unusable_input(spec: CreateBatchJob, store: Store) -> Response | None:
    """The error for a job the emulator cannot run: an endpoint it lacks, an unusable file."""
    if spec.endpoint not in ENDPOINTS:
        return api_error(
            400,
            f"Endpoint {spec.endpoint} is not supported by the emulator; "
            f"supported: {', '.join(ENDPOINTS)}",
        )
    for file_id in spec.input_files or []:
        record = store.files.get(file_id)
        if record is None:
            return not_found("File", file_id)
        if record.purpose != "batch":
            return api_error(
                400,
                f"File {file_id} has purpose {record.purpose!r}; "
                "batch input files need purpose 'batch'",
            )
    return None


def _over_quota(backend: Backend, requested: int) -> Response | None:
    """The error for a job whose requests would take the workspace over its pending limit."""
    with backend.store.lock:
        pending = sum(job.pending_requests() for job in backend.store.jobs.values())
    limit = backend.pending_requests_limit
    if pending + requested <= limit:
        return None
    return api_error(
        400,
        f"Too many pending requests in this workspace: {pending:,} pending and "
        f"{requested:,} in this job exceed the limit of {limit:,}. "
        "Wait for running jobs to finish.",
    )


def _request_lines(store: Store, job_id: str, spec: CreateBatchJob) -> list[Path]:
    """The files holding the job's request lines; inline requests are written out first."""
    if not spec.requests:
        return [part for f in spec.input_files or [] for part in store.file_parts(f)]
    lines = b"".join(
        orjson.dumps(r.model_dump(), option=orjson.OPT_APPEND_NEWLINE) for r in spec.requests
    )
    store.inline_input(job_id).write_bytes(lines)
    return [store.inline_input(job_id)]


def _outputs(store: Store, job: JobRecord) -> list[Any]:
    """Every line of the job's output and error files, parsed (``?inline=true``)."""
    outputs: list[Any] = []
    for file_id in (job.output_file, job.error_file):
        for part in store.file_parts(file_id) if file_id else []:
            with part.open("rb") as handle:
                outputs.extend(orjson.loads(line) for line in handle if line.strip())
    return outputs
