"""Batch: submit (or reattach), wait, collect — trigger → handle → wait → fetch.

A job's identity is a key derived from the request file's content and every option that changes
the result. Before creating a job, the run looks for one carrying that key and reattaches to it,
so a rerun after a crash never pays twice. The job id is written to staging the moment it exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import UUID

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from schemas.params import EnrichParams
from schemas.refs import CollectRef, JobOutcome, JobRef, PlanRef, ShardRef
from tasks import events, layout, storage
from tasks.mistral import (
    TERMINAL_STATUSES,
    JobStatus,
    MistralGateway,
    TransientApiError,
    job_metadata,
)
from tasks.requests import attempt_dir
from tasks.results import parse, too_long_failures
from tasks.settings import mistral_settings

GRACE_SECONDS = 3600.0  # past timeout_hours, Mistral itself ends the job: wait this much longer


class WaitTimeoutError(TimeoutError):
    """Jobs still run past the deadline; they are left running for a rerun to reattach."""


def gateway() -> MistralGateway:
    """The Mistral gateway for this process's settings (the task edge reads the environment)."""
    return MistralGateway(mistral_settings())


def job_key(content_hash: str, options: dict[str, object]) -> str:
    identity = json.dumps({"content": content_hash, "options": options}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def submit(
    api: MistralGateway,
    shard: ShardRef,
    plan: PlanRef,
    params: EnrichParams,
    flow_run_id: str | None = None,
) -> JobRef:
    """Reattach to the job with this shard's key, or upload the file and create it. The job is
    recorded in staging and under the flow run (for the cancel hook) as soon as it exists."""
    key = job_key(shard.content_hash, params.result_options())
    existing = api.find_jobs({"enrich_key": key})
    if existing:
        job_id, reattached = existing[0].id, True
    else:
        name = f"enrich-{plan.run_key}-{shard.shard:05d}-{shard.attempt}.jsonl"
        with tempfile.TemporaryDirectory() as tmp:
            local = storage.local_path(shard.requests_uri) or storage.copy_to_local(
                shard.requests_uri, Path(tmp, name)
            )
            file_id = api.upload(local, name)
        created = api.create_job(
            endpoint=params.endpoint,
            file_id=file_id,
            model=params.model,
            metadata=job_metadata(
                key,
                enrich_run=plan.run_key,
                enrich_shard=shard.shard,
                enrich_attempt=shard.attempt,
                enrich_kind=params.kind.value,
                enrich_input=params.input,
                enrich_output=params.output,
                enrich_partition=plan.partition,
                **({"enrich_flow_run": flow_run_id} if flow_run_id else {}),
            ),
            timeout_hours=params.timeout_hours,
        )
        job_id, reattached = created.id, False
    ref = JobRef(
        shard=shard.shard,
        attempt=shard.attempt,
        key=key,
        job_id=job_id,
        requests=shard.requests,
        reattached=reattached,
    )
    record = ref.model_dump()
    if flow_run_id:
        record_uri = storage.join(layout.run_jobs(params, flow_run_id), f"{job_id}.json")
        storage.write_json(record_uri, record)
    storage.write_json(
        storage.join(attempt_dir(plan, shard.shard, shard.attempt), "job.json"), record
    )
    return ref


def wait_all(
    api: MistralGateway,
    jobs: Sequence[JobRef],
    poll_interval: float,
    deadline: float,
    on_progress: Callable[[int, int], None],
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    on_ended: Callable[[JobRef, JobStatus], None] = lambda job, status: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, JobStatus]:
    """Poll every job until all are terminal. Transient API errors back off (up to 8 polls'
    worth) and are ridden out; a deadline raises ``WaitTimeoutError`` naming the jobs."""
    final: dict[str, JobStatus] = {}
    seen: dict[str, str] = {}
    latest: dict[str, JobStatus] = {}
    failures = 0
    while True:
        try:
            for job in jobs:
                if job.job_id in final:
                    continue
                status = api.job(job.job_id)
                latest[job.job_id] = status
                if seen.get(job.job_id) != status.status:
                    log.info(
                        "Batch job %s (shard %d, attempt %d): %s, %d/%d requests",
                        job.job_id,
                        job.shard,
                        job.attempt,
                        status.status,
                        status.completed,
                        status.total,
                    )
                    seen[job.job_id] = status.status
                if status.status in TERMINAL_STATUSES:
                    final[job.job_id] = status
                    on_ended(job, status)
            failures = 0
        except TransientApiError as exc:
            failures += 1
            if failures == 1:
                log.warning("Polling hit a transient error, backing off: %s", exc)
        total = sum(s.total or j.requests for j in jobs if (s := latest.get(j.job_id)) is not None)
        done = sum(s.completed for s in latest.values())
        on_progress(done, max(total, sum(j.requests for j in jobs)))
        if len(final) == len(jobs):
            return final
        if clock() >= deadline:
            pending = ", ".join(
                f"{j.job_id} ({seen.get(j.job_id, 'unknown')})"
                for j in jobs
                if j.job_id not in final
            )
            raise WaitTimeoutError(
                f"batch jobs still running at the deadline: {pending}. They keep running on "
                "Mistral; run the flow again with the same parameters to reattach and collect."
            )
        delay = poll_interval * min(2**failures, 8)
        sleep(min(delay, max(0.0, deadline - clock())))


def collect(
    api: MistralGateway, outcome: JobOutcome, shard: ShardRef, plan: PlanRef, params: EnrichParams
) -> CollectRef:
    """Download the job's files (streamed to disk), parse them, write results and failures."""
    folder = attempt_dir(plan, shard.shard, shard.attempt)
    manifest = storage.read_parquet(shard.manifest_uri)
    with tempfile.TemporaryDirectory() as tmp:
        output = errors = None
        if outcome.output_file:
            output = Path(tmp, "output.jsonl")
            api.download(outcome.output_file, output)
        if outcome.error_file:
            errors = Path(tmp, "errors.jsonl")
            api.download(outcome.error_file, errors)
        parsed = parse(params, manifest, output, errors, outcome.job_id, outcome.status)
    failures = parsed.failures
    if shard.too_long_uri:
        too_long = storage.read_parquet(shard.too_long_uri)
        failures = failures.vstack(too_long_failures(too_long))
    results_uri = storage.join(folder, "results.parquet")
    failures_uri = storage.join(folder, "failures.parquet")
    storage.write_parquet(parsed.results.to_arrow(), results_uri)
    storage.write_parquet(failures.to_arrow(), failures_uri)
    return CollectRef(
        shard=shard.shard,
        attempt=shard.attempt,
        job_id=outcome.job_id,
        job_status=outcome.status,
        results_uri=results_uri,
        failures_uri=failures_uri,
        succeeded_texts=parsed.results.height,
        transient_failures=int(failures["transient"].sum()),
        terminal_failures=int((~failures["transient"]).sum()),
        missing_lines=parsed.missing_lines,
        duplicate_lines=parsed.duplicate_lines,
        prompt_tokens=parsed.prompt_tokens,
        completion_tokens=parsed.completion_tokens,
    )


# Prefect tasks ------------------------------------------------------------------------------


@task(name="check-credentials")
def check_credentials() -> None:
    """Fail before anything is read or written when no API key (or emulator URL) is set."""
    gateway()


@task(name="submit")
def submit_shard(shard: ShardRef, plan: PlanRef, params: EnrichParams) -> JobRef:
    ref = submit(gateway(), shard, plan, params, flow_run.get_id())
    verb = "Reattached to" if ref.reattached else "Created"
    get_run_logger().info(
        "%s batch job %s for shard %d attempt %d (%d requests)",
        verb,
        ref.job_id,
        ref.shard,
        ref.attempt,
        ref.requests,
    )
    return ref


@task(name="wait")
def wait_for_jobs(jobs: list[JobRef], params: EnrichParams, partition: str) -> list[JobOutcome]:
    logger = get_run_logger()
    total = sum(j.requests for j in jobs)
    artifact: UUID = create_progress_artifact(  # type: ignore[assignment]
        progress=0.0, description=f"Requests answered of {total} in {len(jobs)} batch job(s)"
    )
    shown = [-1.0]

    def progress(done: int, of: int) -> None:
        value = round(100.0 * done / of, 1) if of else 100.0
        if value != shown[0]:
            update_progress_artifact(
                artifact_id=artifact, progress=value, description=f"{done}/{of} requests answered"
            )
            shown[0] = value

    deadline = time.monotonic() + params.timeout_hours * 3600 + GRACE_SECONDS

    def ended(job: JobRef, status: JobStatus) -> None:
        events.job_ended(
            params,
            partition,
            job.job_id,
            status.status,
            {
                "shard": job.shard,
                "attempt": job.attempt,
                "succeeded": status.succeeded,
                "failed": status.failed,
                "errors": list(status.errors)[:5],
            },
        )

    final = wait_all(gateway(), jobs, params.poll_interval, deadline, progress, logger, ended)
    return [
        JobOutcome(
            shard=j.shard,
            attempt=j.attempt,
            job_id=j.job_id,
            status=final[j.job_id].status,
            output_file=final[j.job_id].output_file,
            error_file=final[j.job_id].error_file,
            succeeded=final[j.job_id].succeeded,
            failed=final[j.job_id].failed,
            errors=list(final[j.job_id].errors),
        )
        for j in jobs
    ]


@task(name="collect", retries=3, retry_delay_seconds=[5, 30, 120])
def collect_job(
    outcome: JobOutcome, shard: ShardRef, plan: PlanRef, params: EnrichParams
) -> CollectRef:
    """Retried by Prefect on failure: it only downloads and parses, it never pays."""
    ref = collect(gateway(), outcome, shard, plan, params)
    get_run_logger().info(
        "Collected job %s (%s): %d texts ok, %d transient and %d terminal failures, "
        "%d lines missing, %d duplicated",
        ref.job_id,
        ref.job_status,
        ref.succeeded_texts,
        ref.transient_failures,
        ref.terminal_failures,
        ref.missing_lines,
        ref.duplicate_lines,
    )
    return ref
