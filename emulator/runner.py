"""The batch-job lifecycle, run by one background thread.

``QUEUED`` (``total_requests`` 0 while the input is "validated") → ``RUNNING`` (counters rise chunk
by chunk, at ``requests_per_second`` when set) → ``SUCCESS`` / ``FAILED`` / ``TIMEOUT_EXCEEDED``, or
``CANCELLATION_REQUESTED`` → ``CANCELLED``. Output and error files appear only at the terminal
state;
lines processed before a failure, timeout or cancel are kept in them. Progress is persisted after
every chunk, so a restarted emulator resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from emulator.content import seed_of
from emulator.endpoints import Engine
from emulator.faults import FaultInjector
from emulator.store import ACTIVE_STATUSES, JobRecord, Store

logger = logging.getLogger("emulator.runner")

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


@dataclass(frozen=True)
class Timing:
    """How fast emulated time passes."""

    queue_seconds: float = 0.5  # time a job stays QUEUED
    requests_per_second: float = 0.0  # 0: as fast as the machine allows
    hour_seconds: float = 3600.0  # real seconds per hour of ``timeout_hours``
    chunk_lines: int = 256  # lines processed between two progress updates


class JobRunner:
    def __init__(
        self, store: Store, engine: Engine, injector: FaultInjector, timing: Timing
    ) -> None:
        self.store = store
        self.engine = engine
        self.injector = injector
        self.timing = timing
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._last_step: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="emulator-jobs", daemon=True)

    def start(self) -> None:
        self._resume_partials()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def poke(self) -> None:
        """Wake the loop: a job was created or cancelled."""
        self._wake.set()

    def _resume_partials(self) -> None:
        # A crash between appending to a partial file and saving progress leaves extra bytes.
        for job in list(self.store.jobs.values()):
            if job.status == "RUNNING":
                for kind, size in (
                    ("out", job.progress.out_bytes),
                    ("err", job.progress.err_bytes),
                ):
                    path = self.store.partial(job.id, kind)  # type: ignore[arg-type]
                    if path.exists() and path.stat().st_size > size:
                        with path.open("r+b") as handle:
                            handle.truncate(size)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self.store.lock:
                active = sorted(
                    (j for j in self.store.jobs.values() if j.status in ACTIVE_STATUSES),
                    key=lambda j: j.created_at_precise,
                )
            busy = False
            for job in active:
                try:
                    busy |= self._step(job.id)
                except Exception:  # one broken job must not stop the others
                    logger.exception("job %s: processing failed", job.id)
                    self._finish(job.id, "FAILED", "Internal error while processing the job")
            if not busy:
                self._wake.wait(0.02)
                self._wake.clear()

    def _step(self, job_id: str) -> bool:
        with self.store.lock:
            job = self.store.jobs.get(job_id)
            if job is None or job.status not in ACTIVE_STATUSES:
                return False
            job = job.model_copy(deep=True)
        now = time.time()
        if job.status == "CANCELLATION_REQUESTED":
            self._finish(job.id, "CANCELLED")
            return True
        if now >= job.created_at_precise + job.timeout_hours * self.timing.hour_seconds:
            self._finish(job.id, "TIMEOUT_EXCEEDED", "The batch job exceeded its timeout")
            return True
        if job.status == "QUEUED":
            if now - job.created_at_precise < self.timing.queue_seconds:
                return False
            self._start(job)
            return True
        return self._process_chunk(job, now)

    def _inputs(self, job: JobRecord) -> list[Path]:
        if job.inline:
            return [self.store.partial(job.id, "inline")]
        return [self.store.file_data(file_id) for file_id in job.input_files]

    def _start(self, job: JobRecord) -> None:
        missing = [p for p in self._inputs(job) if not p.exists()]
        if missing:
            self._finish(job.id, "FAILED", f"Input file {missing[0].stem} no longer exists")
            return
        total = 0
        for path in self._inputs(job):
            with path.open("rb") as handle:
                total += sum(1 for line in handle if line.strip())
        if total == 0:
            self._finish(job.id, "FAILED", "The input contains no requests")
            return
        with self.store.lock:
            job.progress.faults = self.injector.job_faults(job.metadata)
            self.store.save_fault_state()
        job.status = "RUNNING"
        job.total_requests = total
        job.started_at = int(time.time())
        self._save_unless_cancelled(job)

    def _budget(self, job: JobRecord, now: float) -> int:
        """How many lines this step may process, honouring the job's rate and fault thresholds."""
        rate = float(
            job.progress.faults.get("requests_per_second") or self.timing.requests_per_second
        )
        budget = self.timing.chunk_lines
        if rate > 0:
            elapsed = now - self._last_step.get(job.id, now)
            credit = min(job.progress.rate_credit + rate * elapsed, float(budget))
            job.progress.rate_credit = credit - int(credit)
            budget = int(credit)
        self._last_step[job.id] = now
        for ending in ("fail", "timeout"):
            spec = job.progress.faults.get(ending)
            if isinstance(spec, dict):
                stop_at = math.floor(float(spec["after_fraction"]) * job.total_requests)
                budget = min(budget, stop_at - job.completed_requests)
        return budget

    def _process_chunk(self, job: JobRecord, now: float) -> bool:
        budget = self._budget(job, now)
        for ending, status in (("fail", "FAILED"), ("timeout", "TIMEOUT_EXCEEDED")):
            spec = job.progress.faults.get(ending)
            if (
                isinstance(spec, dict)
                and budget <= 0
                and job.completed_requests < job.total_requests
            ):
                self._finish(job.id, status, str(spec["message"]))
                return True
        if budget <= 0:
            return False
        out_lines: list[bytes] = []
        err_lines: list[bytes] = []
        inputs = self._inputs(job)
        progress = job.progress
        while budget > 0 and progress.file_index < len(inputs):
            with inputs[progress.file_index].open("rb") as handle:
                handle.seek(progress.byte_offset)
                while budget > 0:
                    raw = handle.readline()
                    if not raw:
                        progress.file_index += 1
                        progress.byte_offset = 0
                        break
                    progress.byte_offset += len(raw)
                    if not raw.strip():
                        continue
                    progress.line_number += 1
                    budget -= 1
                    ok, line = self._answer(job, raw, progress.line_number)
                    (out_lines if ok else err_lines).append(line)
        # Output order is not input order on the real service either.
        random.Random(seed_of(job.id, str(progress.line_number))).shuffle(out_lines)
        for kind, lines in (("out", out_lines), ("err", err_lines)):
            if lines:
                with self.store.partial(job.id, kind).open("ab") as handle:  # type: ignore[arg-type]
                    handle.write(b"".join(lines))
        progress.out_bytes += sum(map(len, out_lines))
        progress.err_bytes += sum(map(len, err_lines))
        job.succeeded_requests += len(out_lines)
        job.failed_requests += len(err_lines)
        job.completed_requests = job.succeeded_requests + job.failed_requests
        if self.injector.plan.lines is not None:
            self.store.save_fault_state()
        self._save_unless_cancelled(job)
        if progress.file_index >= len(inputs):
            self._finish(job.id, "SUCCESS")
        return True

    def _answer(self, job: JobRecord, raw: bytes, number: int) -> tuple[bool, bytes]:
        custom_id: Any = None
        try:
            request = orjson.loads(raw)
            if not isinstance(request, dict) or not isinstance(request.get("body"), dict):
                raise ValueError("a request line needs a JSON object 'body'")
            custom_id = request.get("custom_id")
            with self.store.lock:
                fault = self.injector.line_fault(
                    str(custom_id if custom_id is not None else number)
                )
            error: str | None = None
            if fault is not None:
                status = fault.status
                message = fault.message or (
                    "Rate limit exceeded" if status == 429 else "Internal server error"
                )
                body: Any = {
                    "object": "error",
                    "message": message,
                    "type": "rate_limited" if status == 429 else "internal_error",
                    "param": None,
                    "code": None,
                }
                if fault.style == "string":
                    body, error = None, message
            else:
                status, body = self.engine.call(job.endpoint, request["body"], job.model)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            status, error = 400, None
            body = {
                "object": "error",
                "message": f"Invalid request line {number}: {exc}",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        line = {
            "id": f"batch-{job.id[:8]}-{number}-{uuid.uuid4()}",
            "custom_id": custom_id,
            "response": {"status_code": status, "body": body},
            "error": error,
        }
        return status < 400 and error is None, orjson.dumps(line, option=_DUMP_OPTIONS)

    def _save_unless_cancelled(self, job: JobRecord) -> None:
        """Save progress, keeping a cancel or delete that arrived while the chunk ran."""
        with self.store.lock:
            current = self.store.jobs.get(job.id)
            if current is None:
                return
            if current.status == "CANCELLATION_REQUESTED":
                job.status = "CANCELLATION_REQUESTED"
            self.store.save_job(job)

    def _finish(self, job_id: str, status: str, message: str | None = None) -> None:
        with self.store.lock:
            job = self.store.jobs.get(job_id)
            if job is None:
                return
            job = job.model_copy(deep=True)
            for kind, sample_type in (("out", "batch_result"), ("err", "batch_error")):
                partial = self.store.partial(job.id, kind)  # type: ignore[arg-type]
                if partial.exists() and partial.stat().st_size > 0:
                    file_id = self.store.new_file_id()
                    partial.replace(self.store.file_data(file_id))
                    name = "output" if kind == "out" else "error"
                    self.store.register_file(
                        file_id,
                        f"batch-{job.id}-{name}.jsonl",
                        purpose="batch",
                        sample_type=sample_type,
                        source="mistral",
                    )
                    if kind == "out":
                        job.output_file = file_id
                    else:
                        job.error_file = file_id
            job.status = status  # type: ignore[assignment]
            job.completed_at = int(time.time())
            if message:
                job.errors.append({"message": message, "count": 1})
            self.store.save_job(job)
            self._last_step.pop(job.id, None)
        logger.info("job %s: %s", job.id, status)
