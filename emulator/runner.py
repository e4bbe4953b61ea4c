"""The batch-job lifecycle, run by one background thread.

``QUEUED`` (``total_requests`` 0 while the input is "validated") → ``RUNNING`` (counters rise chunk
by chunk, at ``requests_per_second`` when set) → ``SUCCESS`` / ``FAILED`` / ``TIMEOUT_EXCEEDED``, or
``CANCELLATION_REQUESTED`` → ``CANCELLED``. Output and error files appear only at the terminal
state;
lines processed before a failure, timeout or cancel are kept in them. Progress is persisted after
every chunk, so a restarted emulator resumes where it stopped. Another team's jobs (the fault plan's
``workspace.foreign_jobs``) stay as they are until cancelled through the API.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path

from emulator.catalog import Catalog
from emulator.faults import FaultInjector
from emulator.lines import (
    LineFault,
    Slice,
    SliceResult,
    answer_slice,
    custom_id_of,
    init_worker,
)
from emulator.store import ACTIVE_STATUSES, JobRecord, Store

logger = logging.getLogger("emulator.runner")


@dataclass(frozen=True)
class Timing:
    """How fast emulated time passes."""

    queue_seconds: float = 0.5  # time a job stays QUEUED
    requests_per_second: float = 0.0  # 0: as fast as the machine allows
    hour_seconds: float = 3600.0  # real seconds per hour of ``timeout_hours``
    chunk_lines: int = 64  # request lines a worker answers at a time
    workers: int = 0  # processes answering lines; 0: one per core, 1: in the runner's thread


@dataclass
class _Cursor:
    """Where reading stands (ahead of the saved progress while slices are in flight)."""

    file_index: int
    byte_offset: int
    line_number: int


@dataclass
class _InFlight:
    future: Future[SliceResult]
    cursor_after: _Cursor
    lines: int


class JobRunner:
    def __init__(
        self, store: Store, catalog: Catalog, injector: FaultInjector, timing: Timing
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.injector = injector
        self.timing = timing
        self.workers = timing.workers or os.cpu_count() or 1
        self._executor: Executor | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._last_step: dict[str, float] = {}
        self._rate_credit: dict[str, float] = {}  # fractions of a line earned at a set rate
        self._cursors: dict[str, _Cursor] = {}
        self._inflight: dict[str, deque[_InFlight]] = {}
        self._thread = threading.Thread(target=self._loop, name="emulator-jobs", daemon=True)

    def start(self) -> None:
        self._resume_partials()
        self._pool().submit(int)  # spawn workers now, not on the first job: they load tokenizers
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)

    def poke(self) -> None:
        """Wake the loop: a job was created or cancelled."""
        self._wake.set()

    def _pool(self) -> Executor:
        """Worker processes (spawned: the server has threads), or a thread when workers is 1."""
        if self._executor is None:
            if self.workers == 1:
                init_worker(self.catalog)
                self._executor = ThreadPoolExecutor(max_workers=1)
            else:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=init_worker,
                    initargs=(self.catalog,),
                )
        return self._executor

    def _resume_partials(self) -> None:
        # A crash mid-slice leaves segments that no saved progress names: they are redone.
        committed = {
            name
            for job in self.store.jobs.values()
            for name in (*job.progress.out_segments, *job.progress.err_segments)
        }
        for segment in self.store.jobs_dir.glob("*-segment"):
            if segment.name not in committed:
                segment.unlink()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self.store.lock:
                active = sorted(
                    (j for j in self.store.jobs.values() if _runs(j)),
                    key=lambda j: j.created_at_precise,
                )
            busy = False
            for job in active:
                try:
                    busy |= self._step(job.id)
                except Exception:  # one broken job must not stop the others
                    logger.exception("job %s: processing failed", job.id)
                    self._finish(job.id, "FAILED", "Internal error while processing the job")
            if busy:
                continue
            pending = [f.future for queue in self._inflight.values() for f in queue]
            if pending:
                wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            else:
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
        submitted = self._submit(job, now)
        return self._commit(job) or submitted

    def _inputs(self, job: JobRecord) -> list[Path]:
        if job.inline:
            return [self.store.inline_input(job.id)]
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

    def _stop_line(self, job: JobRecord) -> int:
        """The line after which an injected FAILED/TIMEOUT ending strikes (else: all lines)."""
        stop_at = job.total_requests
        for ending in ("fail", "timeout"):
            spec = job.progress.faults.get(ending)
            if isinstance(spec, dict):
                stop_at = min(stop_at, math.floor(float(spec["after_fraction"]) * stop_at))
        return stop_at

    def _budget(self, job: JobRecord, cursor: _Cursor, now: float) -> int:
        """Lines the job may start now: its rate (if any) and its fault threshold permitting."""
        rate = float(
            job.progress.faults.get("requests_per_second") or self.timing.requests_per_second
        )
        budget = self.timing.chunk_lines
        if rate > 0:
            elapsed = now - self._last_step.get(job.id, now)
            credit = min(self._rate_credit.get(job.id, 0.0) + rate * elapsed, float(budget))
            self._rate_credit[job.id] = credit - int(credit)
            budget = int(credit)
        self._last_step[job.id] = now
        return min(budget, self._stop_line(job) - cursor.line_number)

    def _submit(self, job: JobRecord, now: float) -> bool:
        """Start slices until every worker has two queued; False when nothing was started."""
        queue = self._inflight.setdefault(job.id, deque())
        cursor = self._cursors.get(job.id)
        if cursor is None:
            saved = job.progress
            cursor = _Cursor(saved.file_index, saved.byte_offset, saved.line_number)
            self._cursors[job.id] = cursor
        started = False
        while len(queue) < 2 * self.workers:
            budget = self._budget(job, cursor, now)
            lines = self._read_lines(job, cursor, budget) if budget > 0 else []
            if not lines:
                break
            base = self.store.jobs_dir / f"{job.id}.{lines[0][0]}"
            work = Slice(
                job.id,
                job.endpoint,
                job.model,
                lines,
                self._line_faults(lines),
                base.with_name(base.name + ".out-segment"),
                base.with_name(base.name + ".err-segment"),
                self.injector.plan.corrupt,
                self.injector.plan.seed,
            )
            after = _Cursor(cursor.file_index, cursor.byte_offset, cursor.line_number)
            queue.append(_InFlight(self._pool().submit(answer_slice, work), after, len(lines)))
            started = True
        return started

    def _commit(self, job: JobRecord) -> bool:
        """Splice finished slices, in order, into the partial files; save progress; end the job
        when every line is answered or an injected ending is due."""
        queue = self._inflight.get(job.id, deque())
        committed = False
        while queue and queue[0].future.done():
            done = queue.popleft()
            result = done.future.result()
            progress = job.progress
            for path, count, names in (  # files hold the answers written, not the dropped ones
                (result.out_path, result.succeeded, progress.out_segments),
                (result.err_path, result.failed, progress.err_segments),
            ):
                if count:
                    names.append(path.name)
                else:
                    path.unlink()
            progress.file_index = done.cursor_after.file_index
            progress.byte_offset = done.cursor_after.byte_offset
            progress.line_number = done.cursor_after.line_number
            job.succeeded_requests += result.succeeded + result.dropped
            progress.out_lines += result.succeeded
            job.failed_requests += result.failed
            job.completed_requests = job.succeeded_requests + job.failed_requests
            committed = True
        if committed:
            self._save_unless_cancelled(job)
        if queue:
            return committed
        if job.progress.line_number >= job.total_requests:
            self._finish(job.id, "SUCCESS")  # every line read, and every slice committed
            return True
        if job.completed_requests >= self._stop_line(job):
            for ending, status in (("fail", "FAILED"), ("timeout", "TIMEOUT_EXCEEDED")):
                spec = job.progress.faults.get(ending)
                if isinstance(spec, dict):
                    self._finish(job.id, status, str(spec["message"]))
                    return True
        return committed

    def _read_lines(self, job: JobRecord, cursor: _Cursor, budget: int) -> list[tuple[int, bytes]]:
        """The next ``budget`` non-blank lines from ``cursor``, which advances past them."""
        inputs = self._inputs(job)
        lines: list[tuple[int, bytes]] = []
        while len(lines) < budget and cursor.file_index < len(inputs):
            with inputs[cursor.file_index].open("rb") as handle:
                handle.seek(cursor.byte_offset)
                while len(lines) < budget:
                    raw = handle.readline()
                    if not raw:
                        cursor.file_index += 1
                        cursor.byte_offset = 0
                        break
                    cursor.byte_offset += len(raw)
                    if raw.strip():
                        cursor.line_number += 1
                        lines.append((cursor.line_number, raw))
        return lines

    def _line_faults(self, lines: list[tuple[int, bytes]]) -> dict[int, LineFault]:
        rule = self.injector.plan.lines
        if rule is None:
            return {}
        faults = {}
        with self.store.lock:
            for number, raw in lines:
                custom_id = custom_id_of(raw)
                fired = self.injector.line_fault(str(number if custom_id is None else custom_id))
                if fired is not None:
                    default = "Rate limit exceeded" if fired.status == 429 else "Internal error"
                    faults[number] = LineFault(
                        fired.status, fired.message or default, fired.style == "string"
                    )
            self.store.save_fault_state()
        return faults

    def _save_unless_cancelled(self, job: JobRecord) -> None:
        """Save progress, keeping a cancel or delete that arrived while the slice ran."""
        with self.store.lock:
            current = self.store.jobs.get(job.id)
            if current is None:
                return
            if current.status == "CANCELLATION_REQUESTED":
                job.status = "CANCELLATION_REQUESTED"
            self.store.save_job(job)

    def _drain(self, job_id: str) -> None:
        """Forget a job's in-flight slices (waiting for them) and its read cursor."""
        for item in self._inflight.pop(job_id, deque()):
            try:
                result = item.future.result()
            except Exception:  # the job is ending anyway; its slice is discarded
                logger.exception("job %s: a discarded slice failed", job_id)
                continue
            result.out_path.unlink(missing_ok=True)
            result.err_path.unlink(missing_ok=True)
        self._cursors.pop(job_id, None)
        self._last_step.pop(job_id, None)
        self._rate_credit.pop(job_id, None)

    def _finish(self, job_id: str, status: str, message: str | None = None) -> None:
        self._drain(job_id)
        with self.store.lock:
            job = self.store.jobs.get(job_id)
            if job is None:
                return
            job = job.model_copy(deep=True)
            outputs = (
                ("output", "batch_result", job.progress.out_segments, job.progress.out_lines),
                ("error", "batch_error", job.progress.err_segments, job.failed_requests),
            )
            for name, sample_type, segments, lines in outputs:
                if not segments:
                    continue
                file_id = self.store.new_file_id()
                self.store.adopt_segments(file_id, [self.store.jobs_dir / s for s in segments])
                self.store.register_file(
                    file_id,
                    f"batch-{job.id}-{name}.jsonl",
                    purpose="batch",
                    sample_type=sample_type,
                    source="mistral",
                    num_lines=lines,
                )
                if name == "output":
                    job.output_file = file_id
                else:
                    job.error_file = file_id
            job.progress.out_segments, job.progress.err_segments = [], []
            job.status = status  # type: ignore[assignment]
            job.ended_at_precise = time.time()
            job.completed_at = int(job.ended_at_precise)
            if message:
                job.errors.append({"message": message, "count": 1})
            self.store.save_job(job)
        logger.info("job %s: %s", job.id, status)


def _runs(job: JobRecord) -> bool:
    """Whether the runner moves the job on: another team's job only when it is being cancelled."""
    if job.foreign:
        return job.status == "CANCELLATION_REQUESTED"
    return job.status in ACTIVE_STATUSES
