"""The HTTP surface of the emulator: Mistral's files, batch-jobs and inference routes under ``/v1``.

Responses follow the contract the official SDK validates (required fields always present, JSON as
``application/json``, file content as ``application/octet-stream``). Application errors use the
``{"object": "error", ...}`` shape, bad bodies FastAPI's 422 ``{"detail": [...]}``, a missing or
wrong key ``401 {"detail": "Unauthorized"}``. Outside ``/v1`` and without a key, ``/emulator/*``
serves what no API shows: health, and every job and file as the emulator holds them (for tests).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.catalog import Catalog
from emulator.endpoints import ENDPOINTS, Engine
from emulator.faults import FaultInjector, FaultPlan, ForeignJobs
from emulator.runner import JobRunner, Timing
from emulator.store import ACTIVE_STATUSES, FileRecord, JobRecord, Store, sha256_of

MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_INLINE_REQUESTS = 10_000
_MULTIPART_OVERHEAD = 64 * 1024

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


@dataclass(frozen=True)
class EmulatorConfig:
    data_dir: Path
    api_key: str | None = field(default=None, repr=False)
    faults: FaultPlan = field(default_factory=FaultPlan)
    catalog: Catalog = field(default_factory=lambda: Catalog.load(None))
    timing: Timing = field(default_factory=Timing)
    # Mistral: "1 M pending requests per workspace"; a job that would go over is refused.
    pending_requests_limit: int = 1_000_000


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def api_error(status: int, message: str, type_: str = "invalid_request_error") -> Response:
    body = {"object": "error", "message": message, "type": type_, "param": None, "code": None}
    return json_response(body, status)


def not_found(kind: str, ident: str) -> Response:
    return api_error(404, f"{kind} {ident} not found", "not_found")


def validation_error(loc: list[Any], msg: str, type_: str, input_: Any = None) -> Response:
    return json_response(
        {"detail": [{"type": type_, "loc": loc, "msg": msg, "input": input_}]}, 422
    )


class GuardMiddleware:
    """Checks the Bearer key and injects HTTP faults around the routes.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``), so streamed downloads pass untouched.
    """

    def __init__(
        self, app: ASGIApp, api_key: str | None, injector: FaultInjector, store: Store
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.injector = injector
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.api_key is not None:
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}"):
                await json_response({"detail": "Unauthorized"}, 401)(scope, receive, send)
                return
        with self.store.lock:
            fault = self.injector.http_fault(scope["method"], scope["path"])
            if fault is not None:
                self.store.save_fault_state()
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.status is None:  # a delay only: the real response, held back
            await self.app(scope, receive, _held(send, fault.delay_seconds or 0.0))
            return
        if fault.after_handling:  # the server acts; the client never hears of it
            await self.app(scope, receive, _discard)
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        await _fault_response(fault.status, fault.retry_after)(scope, receive, send)


def _fault_response(status: int, retry_after: float | None) -> Response:
    if status == 429:
        body = {
            "object": "error",
            "message": "Rate limit exceeded",
            "type": "rate_limited",
            "param": None,
            "code": "1300",
        }
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return json_response(body, status, headers)
    body = {
        "object": "error",
        "message": "Service unavailable",
        "type": "internal_error",
        "param": None,
        "code": None,
    }
    return json_response(body, status)


def _held(send: Send, seconds: float) -> Send:
    """``send``, with the start of the response held back ``seconds`` (the body then streams)."""

    async def held(message: Message) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(seconds)
        await send(message)

    return held


async def _discard(message: Message) -> None:
    """A ``send`` that drops the route's real response (an ``after_handling`` fault replaces it)."""


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


def create_app(config: EmulatorConfig) -> FastAPI:
    store = Store(config.data_dir)
    injector = FaultInjector(config.faults, store.fault_state)
    _seed_foreign_jobs(store, config.faults.workspace.foreign_jobs)
    listing = config.faults.listing
    engine = Engine(config.catalog)
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
    app.state.store = store
    app.state.runner = runner
    app.add_middleware(GuardMiddleware, api_key=config.api_key, injector=injector, store=store)

    @app.get("/emulator/health")
    async def health() -> dict[str, Any]:
        with store.lock:
            jobs = len(store.jobs)
            files = len(store.files)
        return {"status": "ok", "jobs": jobs, "files": files}

    @app.get("/emulator/jobs")
    async def inspect_jobs() -> dict[str, Any]:
        """Every job, oldest first, with the digest of its request content (private in the API):
        what tests count paid jobs by."""
        with store.lock:
            jobs = sorted(store.jobs.values(), key=lambda j: j.created_at_precise)
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

    @app.get("/emulator/files")
    async def inspect_files() -> dict[str, Any]:
        """Every file, oldest first, with the jobs that take it as input: uploads no job uses."""
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

    def expired(file_id: str) -> bool:
        """Whether a job's output or error file has outlived ``files.expire_after_seconds``."""
        ttl = config.faults.files.expire_after_seconds
        if ttl is None:
            return False
        deadline = time.time() - ttl
        with store.lock:
            return any(
                file_id in (job.output_file, job.error_file)
                and job.ended_at_precise is not None
                and job.ended_at_precise <= deadline
                for job in store.jobs.values()
            )

    # files ---------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def upload_file(request: Request) -> Response:
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_FILE_BYTES + _MULTIPART_OVERHEAD:
            return api_error(413, "File too large: the maximum size is 512 MB.")
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return validation_error(["body", "file"], "Field required", "missing")
            purpose = str(form.get("purpose") or "fine-tune")
            file_id = store.new_file_id()
            target = store.file_data(file_id)
            size = await run_in_threadpool(_copy_limited, upload, target)
            if size > MAX_FILE_BYTES:
                target.unlink()
                return api_error(413, "File too large: the maximum size is 512 MB.")
            sample_type = "batch_request" if purpose == "batch" else "instruct"
            record = await run_in_threadpool(
                store.register_file,
                file_id,
                upload.filename or "file.jsonl",
                purpose=purpose,
                sample_type=sample_type,
                source="upload",
                visibility=str(form.get("visibility") or "workspace"),
            )
            return json_response(record.public())
        finally:
            await form.close()

    @app.get("/v1/files")
    async def list_files(request: Request) -> Response:
        query = request.query_params
        page, page_size = _int_param(query, "page", 0), _int_param(query, "page_size", 100)
        if page is None or page_size is None:
            return validation_error(
                ["query", "page"], "Input should be a valid integer", "int_parsing"
            )
        with store.lock:
            records = sorted(store.files.values(), key=lambda f: f.created_at, reverse=True)
        records = [r for r in records if not expired(r.id)]
        for key in ("sample_type", "source", "purpose", "mimetypes"):
            wanted = query.getlist(key)
            attr = "mimetype" if key == "mimetypes" else key
            if wanted:
                records = [r for r in records if getattr(r, attr) in wanted]
        if search := query.get("search"):
            records = [r for r in records if search in r.filename or search == r.id]
        window = records[page * page_size : (page + 1) * page_size]
        return json_response(
            {"data": [r.public() for r in window], "object": "list", "total": len(records)}
        )

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> Response:
        record = store.files.get(file_id)
        if record is None or expired(file_id):
            return not_found("File", file_id)
        return json_response(record.public(with_deleted=True))

    @app.get("/v1/files/{file_id}/url")
    async def get_file_url(file_id: str, request: Request) -> Response:
        if file_id not in store.files or expired(file_id):
            return not_found("File", file_id)
        expiry = _int_param(request.query_params, "expiry", 24)
        if expiry is None or not 1 <= expiry <= 168:
            return validation_error(
                ["query", "expiry"], "Input should be between 1 and 168", "less_than_equal"
            )
        return json_response({"url": str(request.url_for("download_file", file_id=file_id))})

    @app.get("/v1/files/{file_id}/content", name="download_file")
    async def download_file(file_id: str) -> Response:
        record = store.files.get(file_id)
        parts = store.file_parts(file_id)
        if record is None or expired(file_id):
            return not_found("File", file_id)
        with store.lock:
            cut = injector.download_cut()
            if cut is not None:
                store.save_fault_state()
        # A cut download declares the full length, then stops short: a broken transfer.
        limit = record.bytes if cut is None else int(record.bytes * cut.after_fraction)
        return StreamingResponse(
            _read_parts(parts, limit),
            media_type="application/octet-stream",
            headers={
                "Content-Length": str(record.bytes),
                "Content-Disposition": f'attachment; filename="{record.filename}"',
            },
        )

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        if file_id not in store.files:
            return not_found("File", file_id)
        await run_in_threadpool(store.delete_file, file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    # batch jobs ----------------------------------------------------------------------------
    @app.post("/v1/batch/jobs")
    async def create_job(spec: CreateBatchJob) -> Response:
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
        requested = (
            len(spec.requests)
            if spec.requests
            else sum(store.files[f].num_lines or 0 for f in spec.input_files or [])
        )
        with store.lock:
            pending = sum(job.pending_requests() for job in store.jobs.values())
        if pending + requested > config.pending_requests_limit:
            return api_error(
                400,
                f"Too many pending requests in this workspace: {pending:,} pending and "
                f"{requested:,} in this job exceed the limit of "
                f"{config.pending_requests_limit:,}. Wait for running jobs to finish.",
            )
        job_id = str(uuid.uuid4())
        if spec.requests:
            lines = b"".join(
                orjson.dumps(r.model_dump(), option=orjson.OPT_APPEND_NEWLINE)
                for r in spec.requests
            )
            await run_in_threadpool(store.inline_input(job_id).write_bytes, lines)
            inputs = [store.inline_input(job_id)]
        else:
            inputs = [part for f in spec.input_files or [] for part in store.file_parts(f)]
        digest = await run_in_threadpool(sha256_of, inputs)
        now = time.time()
        job = JobRecord(
            id=job_id,
            input_files=list(spec.input_files or []),
            metadata=spec.metadata,
            endpoint=spec.endpoint,
            model=spec.model,
            agent_id=spec.agent_id,
            created_at=int(now),
            created_at_precise=now,
            timeout_hours=spec.timeout_hours,
            inline=bool(spec.requests),
            requests=requested,
            content_sha256=digest,
        )
        store.save_job(job)
        runner.poke()
        return json_response(job.public())

    @app.get("/v1/batch/jobs")
    async def list_jobs(request: Request) -> Response:
        query = request.query_params
        page, page_size = _int_param(query, "page", 0), _int_param(query, "page_size", 100)
        if page is None or page_size is None or page < 0 or page_size < 1:
            return validation_error(
                ["query", "page"], "page and page_size must be non-negative integers", "int_parsing"
            )
        metadata: dict[str, str] = {k: v for k, v in query.items() if k not in _LIST_PARAMS}
        if raw_metadata := query.get("metadata"):
            try:
                metadata.update({str(k): str(v) for k, v in orjson.loads(raw_metadata).items()})
            except (ValueError, AttributeError):
                return validation_error(
                    ["query", "metadata"],
                    "metadata must be a JSON object",
                    "json_invalid",
                    raw_metadata,
                )
        created_after: float | None = None
        if raw_after := query.get("created_after"):
            try:
                when = datetime.fromisoformat(raw_after)
            except ValueError:
                return validation_error(
                    ["query", "created_after"],
                    "Input should be a valid datetime",
                    "datetime_from_date_parsing",
                    raw_after,
                )
            created_after = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        statuses = set(query.getlist("status"))
        listed_before = time.time() - listing.lag_seconds
        with store.lock:
            jobs = [j for j in store.jobs.values() if j.created_at_precise <= listed_before]
        selected = [
            j
            for j in jobs
            if listing.ignore_filters
            or (
                (not statuses or j.status in statuses)
                and (query.get("model") is None or j.model == query.get("model"))
                and (query.get("agent_id") is None or j.agent_id == query.get("agent_id"))
                and (created_after is None or j.created_at_precise > created_after)
                and all((j.metadata or {}).get(k) == v for k, v in metadata.items())
            )
        ]
        selected.sort(
            key=lambda j: j.created_at_precise,
            reverse=query.get("order_by", "-created") != "created",
        )
        page_size = min(page_size, listing.page_size_cap or page_size)
        window = selected[page * page_size : (page + 1) * page_size]
        return json_response(
            {"data": [j.public() for j in window], "object": "list", "total": len(selected)}
        )

    @app.get("/v1/batch/jobs/{job_id}")
    async def get_job(job_id: str, inline: bool = False) -> Response:
        job = store.jobs.get(job_id)
        if job is None:
            return not_found("Batch job", job_id)
        body = job.public()
        if inline:
            outputs: list[Any] = []
            for file_id in (job.output_file, job.error_file):
                for part in store.file_parts(file_id) if file_id else []:
                    with part.open("rb") as handle:
                        outputs.extend(orjson.loads(line) for line in handle if line.strip())
            body["outputs"] = outputs
        return json_response(body)

    @app.post("/v1/batch/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> Response:
        with store.lock:
            job = store.jobs.get(job_id)
            if job is None:
                return not_found("Batch job", job_id)
            if job.status in ACTIVE_STATUSES and job.status != "CANCELLATION_REQUESTED":
                job = job.model_copy(update={"status": "CANCELLATION_REQUESTED"})
                store.save_job(job)
        runner.poke()
        return json_response(job.public())

    @app.delete("/v1/batch/jobs/{job_id}")
    async def delete_job(job_id: str) -> Response:
        if job_id not in store.jobs:
            return not_found("Batch job", job_id)
        await run_in_threadpool(store.delete_job, job_id)
        return json_response({"id": job_id, "object": "batch", "deleted": True})

    # inference -----------------------------------------------------------------------------
    def inference_route(endpoint: str) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            raw = await request.body()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                return json_response(
                    {
                        "detail": [
                            {
                                "type": "json_invalid",
                                "loc": ["body", exc.pos],
                                "msg": "JSON decode error",
                                "input": {},
                                "ctx": {"error": exc.msg},
                            }
                        ]
                    },
                    422,
                )
            status, answer = await run_in_threadpool(engine.call, endpoint, body)
            return json_response(answer, status)

        return route

    for endpoint in ENDPOINTS:
        app.add_api_route(endpoint, inference_route(endpoint), methods=["POST"], name=endpoint)

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


def _int_param(query: Any, name: str, default: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


def _copy_limited(upload: UploadFile, target: Path) -> int:
    """Copy the spooled upload to ``target``; stops counting past the size limit."""
    size = 0
    upload.file.seek(0)
    with target.open("wb") as out:
        while block := upload.file.read(1 << 20):
            size += len(block)
            if size > MAX_FILE_BYTES:
                break
            out.write(block)
    return size


async def _read_parts(parts: list[Path], limit: int) -> AsyncIterator[bytes]:
    """The first ``limit`` bytes of the concatenated parts, in 1 MiB blocks read off-loop."""
    remaining = limit
    for part in parts:
        with part.open("rb") as handle:
            while remaining > 0:
                block = await run_in_threadpool(handle.read, min(1 << 20, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block


__all__ = ["EmulatorConfig", "FileRecord", "create_app"]
