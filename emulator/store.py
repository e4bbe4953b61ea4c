"""State under ``--data-dir``: files and batch jobs survive a restart of the emulator.

Layout::

    files/<id>.json      file metadata
    files/<id>.data      an uploaded file's content
    files/<id>.parts/    a job output's content: segments, read in name order
    jobs/<id>.json       job record + progress
    jobs/<id>.<n>.out-segment, .err-segment   answered slices of a running job
    jobs/<id>.inline     inline requests of a job created with ``requests=``
    faults.json          fault-injection counters (so faults stay deterministic across restarts),
                         and the mark that the plan's foreign jobs were created

Every JSON record is replaced atomically (write to a temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

JobStatus = Literal[
    "QUEUED",
    "RUNNING",
    "SUCCESS",
    "FAILED",
    "TIMEOUT_EXCEEDED",
    "CANCELLATION_REQUESTED",
    "CANCELLED",
]
ACTIVE_STATUSES = frozenset({"QUEUED", "RUNNING", "CANCELLATION_REQUESTED"})


class FileRecord(BaseModel):
    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sample_type: str
    source: str
    num_lines: int | None = None
    mimetype: str | None = "application/jsonl"
    signature: str | None = None
    expires_at: int | None = None
    visibility: str | None = "workspace"

    def public(self, *, with_deleted: bool = False) -> dict[str, Any]:
        body = self.model_dump()
        if with_deleted:
            body["deleted"] = False
        return body


class Progress(BaseModel):
    """Where processing stands, so a restarted emulator resumes exactly there."""

    file_index: int = 0
    byte_offset: int = 0
    line_number: int = 0
    out_lines: int = 0  # lines in the output segments (a dropped answer is in no file)
    out_segments: list[str] = Field(default_factory=list)  # committed, in order
    err_segments: list[str] = Field(default_factory=list)
    faults: dict[str, Any] = Field(default_factory=dict)


class JobRecord(BaseModel):
    id: str
    object: str = "batch"
    input_files: list[str]
    metadata: dict[str, str] | None = None
    endpoint: str
    model: str | None = None
    agent_id: str | None = None
    output_file: str | None = None
    error_file: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)
    status: JobStatus = "QUEUED"
    created_at: int
    total_requests: int = 0
    completed_requests: int = 0
    succeeded_requests: int = 0
    failed_requests: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    # Not part of the API: kept on disk only.
    timeout_hours: int = 24
    created_at_precise: float = 0.0
    inline: bool = False
    requests: int = 0  # lines in the input at creation: what counts against the pending quota
    progress: Progress = Field(default_factory=Progress)
    content_sha256: str | None = None  # of the request bytes at creation; None: a foreign job
    ended_at_precise: float | None = None  # when it reached a terminal status
    foreign: bool = False  # another team's job (fault plan): the runner only ever cancels it

    _PRIVATE = frozenset(
        {
            "timeout_hours",
            "created_at_precise",
            "inline",
            "requests",
            "progress",
            "content_sha256",
            "ended_at_precise",
            "foreign",
        }
    )

    def pending_requests(self) -> int:
        """Requests not yet answered, while the job is active (0 once it is over)."""
        if self.status not in ACTIVE_STATUSES:
            return 0
        return max(0, (self.total_requests or self.requests) - self.completed_requests)

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude=set(self._PRIVATE))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class Store:
    """Files and jobs, in memory for fast listing and on disk for restarts. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files_dir = root / "files"
        self.jobs_dir = root / "jobs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.files: dict[str, FileRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        for meta in self.files_dir.glob("*.json"):
            record = FileRecord.model_validate_json(meta.read_bytes())
            self.files[record.id] = record
        for meta in self.jobs_dir.glob("*.json"):
            job = JobRecord.model_validate_json(meta.read_bytes())
            self.jobs[job.id] = job
        faults = root / "faults.json"
        self.fault_state: dict[str, int] = (
            orjson.loads(faults.read_bytes()) if faults.exists() else {}
        )

    # files -------------------------------------------------------------------------------
    def file_data(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.data"

    def file_parts(self, file_id: str) -> list[Path]:
        """The paths holding a file's content, in order (empty if it has none)."""
        single = self.file_data(file_id)
        if single.exists():
            return [single]
        return sorted((self.files_dir / f"{file_id}.parts").glob("*"))

    def adopt_segments(self, file_id: str, segments: list[Path]) -> None:
        """Make job segments the content of a new file, without copying bytes."""
        parts = self.files_dir / f"{file_id}.parts"
        parts.mkdir()
        for index, segment in enumerate(segments):
            segment.replace(parts / f"{index:08d}")

    def add_file(self, record: FileRecord) -> None:
        with self.lock:
            _write_atomic(self.files_dir / f"{record.id}.json", record.model_dump_json().encode())
            self.files[record.id] = record

    def new_file_id(self) -> str:
        return str(uuid.uuid4())

    def delete_file(self, file_id: str) -> None:
        with self.lock:
            self.files.pop(file_id)
            (self.files_dir / f"{file_id}.json").unlink()
            self.file_data(file_id).unlink(missing_ok=True)
            shutil.rmtree(self.files_dir / f"{file_id}.parts", ignore_errors=True)

    def register_file(
        self,
        file_id: str,
        filename: str,
        *,
        purpose: str,
        sample_type: str,
        source: str,
        num_lines: int | None = None,
        visibility: str = "workspace",
    ) -> FileRecord:
        """Record a file whose content already sits in ``file_parts(file_id)``."""
        parts = self.file_parts(file_id)
        size = sum(part.stat().st_size for part in parts)
        record = FileRecord(
            id=file_id,
            bytes=size,
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
            sample_type=sample_type,
            source=source,
            num_lines=sum(map(count_lines, parts)) if num_lines is None else num_lines,
            visibility=visibility,
        )
        self.add_file(record)
        return record

    # jobs --------------------------------------------------------------------------------
    def save_job(self, job: JobRecord) -> None:
        with self.lock:
            _write_atomic(self.jobs_dir / f"{job.id}.json", job.model_dump_json().encode())
            self.jobs[job.id] = job

    def delete_job(self, job_id: str) -> None:
        with self.lock:
            self.jobs.pop(job_id)
            for path in self.jobs_dir.glob(f"{job_id}.*"):
                path.unlink(missing_ok=True)

    def inline_input(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.inline"

    def save_fault_state(self) -> None:
        with self.lock:
            _write_atomic(self.root / "faults.json", orjson.dumps(self.fault_state))


def sha256_of(paths: list[Path]) -> str:
    """The sha256 hex digest of the files' concatenated bytes, read in blocks."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def count_lines(path: Path) -> int:
    """Lines, a last one without a newline included, read in blocks (files reach 512 MB)."""
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return lines
