"""``/v1/files``: upload, list, retrieve, signed URL, download (streamed), delete.

A job's output and error files expire ``files.expire_after_seconds`` after the job ends, when the
fault plan sets it: from then on they answer 404 everywhere but in the job that names them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile

from emulator.responses import api_error, json_response, not_found, validation_error
from emulator.routes.common import Backend, Emulated, int_param
from emulator.store import FileRecord

MAX_FILE_BYTES = 512 * 1024 * 1024
_MULTIPART_OVERHEAD = 64 * 1024
_TOO_LARGE = "File too large: the maximum size is 512 MB."
# Listing filters: query parameter, the record field it matches.
_LIST_FILTERS = (
    ("sample_type", "sample_type"),
    ("source", "source"),
    ("purpose", "purpose"),
    ("mimetypes", "mimetype"),
)

router = APIRouter()


@router.post("/v1/files")
async def upload_file(request: Request, backend: Emulated) -> Response:
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_FILE_BYTES + _MULTIPART_OVERHEAD:
        return api_error(413, _TOO_LARGE)
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return validation_error(["body", "file"], "Field required", "missing")
        store = backend.store
        file_id = store.new_file_id()
        target = store.file_data(file_id)
        size = await run_in_threadpool(_copy_limited, upload, target)
        if size > MAX_FILE_BYTES:
            target.unlink()
            return api_error(413, _TOO_LARGE)
        purpose = str(form.get("purpose") or "fine-tune")
        record = await run_in_threadpool(
            store.register_file,
            file_id,
            upload.filename or "file.jsonl",
            purpose=purpose,
            sample_type="batch_request" if purpose == "batch" else "instruct",
            source="upload",
            visibility=str(form.get("visibility") or "workspace"),
        )
        return json_response(record.public())
    finally:
        await form.close()


@router.get("/v1/files")
async def list_files(request: Request, backend: Emulated) -> Response:
    query = request.query_params
    page, page_size = int_param(query, "page", 0), int_param(query, "page_size", 100)
    if page is None or page_size is None:
        return validation_error(["query", "page"], "Input should be a valid integer", "int_parsing")
    with backend.store.lock:
        records = sorted(backend.store.files.values(), key=lambda f: f.created_at, reverse=True)
    records = [r for r in records if not _expired(backend, r.id) and _listed(r, query)]
    window = records[page * page_size : (page + 1) * page_size]
    return json_response(
        {"data": [r.public() for r in window], "object": "list", "total": len(records)}
    )


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, backend: Emulated) -> Response:
    record = backend.store.files.get(file_id)
    if record is None or _expired(backend, file_id):
        return not_found("File", file_id)
    return json_response(record.public(with_deleted=True))


@router.get("/v1/files/{file_id}/url")
async def get_file_url(file_id: str, request: Request, backend: Emulated) -> Response:
    if file_id not in backend.store.files or _expired(backend, file_id):
        return not_found("File", file_id)
    expiry = int_param(request.query_params, "expiry", 24)
    if expiry is None or not 1 <= expiry <= 168:
        return validation_error(
            ["query", "expiry"], "Input should be between 1 and 168", "less_than_equal"
        )
    return json_response({"url": str(request.url_for("download_file", file_id=file_id))})


@router.get("/v1/files/{file_id}/content", name="download_file")
async def download_file(file_id: str, backend: Emulated) -> Response:
    store = backend.store
    record = store.files.get(file_id)
    parts = store.file_parts(file_id)
    if record is None or _expired(backend, file_id):
        return not_found("File", file_id)
    with store.lock:
        cut = backend.injector.download_cut()
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


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, backend: Emulated) -> Response:
    if file_id not in backend.store.files:
        return not_found("File", file_id)
    await run_in_threadpool(backend.store.delete_file, file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def _expired(backend: Backend, file_id: str) -> bool:
    """Whether a job's output or error file has outlived ``files.expire_after_seconds``."""
    ttl = backend.faults.files.expire_after_seconds
    if ttl is None:
        return False
    deadline = time.time() - ttl
    with backend.store.lock:
        return any(
            file_id in (job.output_file, job.error_file)
            and job.ended_at_precise is not None
            and job.ended_at_precise <= deadline
            for job in backend.store.jobs.values()
        )


def _listed(record: FileRecord, query: Any) -> bool:
    """Whether the file passes the listing's filters (each one a list of accepted values)."""
    for key, attr in _LIST_FILTERS:
        wanted = query.getlist(key)
        if wanted and getattr(record, attr) not in wanted:
            return False
    search = query.get("search")
    return not search or search in record.filename or search == record.id


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
