"""Batch: submit (or reattach), wait, collect — trigger → handle → wait → fetch.

A job's identity is a key derived from the request file's content and every option that changes
the result. Before creating a job, the run looks for one carrying that key and reattaches to it,
so a rerun after a crash never pays twice. The job id is written to staging the moment it exists.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from schemas.params import EnrichParams
from schemas.refs import CollectRef, JobOutcome, JobRef, PlanRef, ShardRef
from tasks.core import versions
from tasks.core.columns import TEXT_KEY
from tasks.core.errors import TransientError
from tasks.core.keys import artifact_key, job_key
from tasks.core.layout import Layout, Staging
from tasks.core.parsing import parse, too_long_failures
from tasks.edges import events, storage
from tasks.edges.mistral import (
    TERMINAL_STATUSES,
    AmbiguousCreateError,
    ApiError,
    JobStatus,
    MistralGateway,
    NotFoundApiError,
    TransientApiError,
    job_metadata,
)
from tasks.edges.settings import mistral_settings
from tasks.failpoints import failpoint
from tasks.memory import in_shard_slot
from tasks.retry import retry_if_transient

GRACE_SECONDS = 3600.0  # past timeout_hours, Mistral itself ends the job: wait this much longer
CREATE_ATTEMPTS = 3
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class WaitTimeoutError(TransientError, TimeoutError):
    """Jobs still run past the deadline; they are left running for a rerun to reattach.
    A ``TimeoutError`` too, so Prefect shows the wait as timed out."""


def gateway() -> MistralGateway:
    """The Mistral gateway for this process's settings (the task edge reads the environment)."""
    return MistralGateway(mistral_settings())


def _reattach_window(api: MistralGateway, params: EnrichParams) -> datetime:
    """Jobs created before this cannot hold downloadable results any more: listings stop here."""
    hours = params.timeout_hours + api.settings.results_retention_hours + 1
    return datetime.now(UTC) - timedelta(hours=hours)


def usable(api: MistralGateway, job: JobStatus) -> bool:
    """An unfinished job, or a finished one whose output and error files still exist (they
    expire after a while: such a job's rows have to be sent again)."""
    if job.status not in TERMINAL_STATUSES:
        return True
    return all(api.file_exists(f) for f in (job.output_file, job.error_file) if f)


def find_job(
    api: MistralGateway,
    key: str,
    params: EnrichParams,
    settle_until: float | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[JobStatus | None, list[str]]:
    """The newest usable job of this project with ``key`` (and the run's endpoint), and the ids
    of expired ones (``find_jobs`` says how the model is matched). With
    ``settle_until`` (a clock time), a miss is retried until then: a job whose creation was
    ambiguous may show in listings late."""
    while True:
        expired: list[str] = []
        for listed in api.find_jobs(
            {"enrich_key": key},
            created_after=_reattach_window(api, params),
            endpoint=params.endpoint,
            model=params.model,
        ):
            job = JobStatus.of(listed)
            if usable(api, job):
                return job, expired
            expired.append(job.id)
        if settle_until is None or clock() >= settle_until:
            return None, expired
        sleep(min(5.0, max(0.05, settle_until - clock())))


def _recorded_job(api: MistralGateway, record_uri: str, key: str) -> JobStatus | None:
    """The job staging recorded for this attempt, read by id (no listing involved); usable
    while it runs, while its results can be downloaded, or when they were collected whole."""
    if not storage.exists(record_uri):
        return None
    record = storage.read_json(record_uri)
    if record.get("key") != key:
        return None
    try:
        job = api.job(str(record["job_id"]))
    except NotFoundApiError:
        return None
    collected = record_uri.rsplit("/", 1)[0] + "/collected.json"
    staged = staged_collect(collected, job.id)
    if usable(api, job) or (staged is not None and not staged.expired):
        return job
    return None


def _upload(
    api: MistralGateway,
    shard: ShardRef,
    plan: PlanRef,
    intent: dict[str, Any],
    intent_uri: str,
) -> str:
    """The request file's id on Mistral. A killed attempt's upload is reused, never left behind:
    by the id it recorded, or, killed before it could record it, by the file's name (which
    carries the content hash)."""
    name = (
        f"enrich-{plan.run_key}-{shard.shard:05d}-{shard.attempt}-{shard.content_hash[:12]}.jsonl"
    )
    if intent.get("file_id") and api.file_exists(str(intent["file_id"])):
        return str(intent["file_id"])
    if intent.get("file_name") == name:
        found = api.find_uploads(name)
        for extra in found[1:]:
            with suppress(ApiError):
                api.delete_file(extra)
        if found:
            storage.write_json(intent_uri, intent | {"file_id": found[0]})
            return found[0]
    intent |= {"file_name": name, "file_id": None}
    storage.write_json(intent_uri, intent)
    with tempfile.TemporaryDirectory() as tmp:
        local = storage.local_path(shard.requests_uri) or storage.copy_to_local(
            shard.requests_uri, Path(tmp, name)
        )
        file_id = api.upload(local, name)
    failpoint("upload")
    storage.write_json(intent_uri, intent | {"file_id": file_id})
    return file_id


def _create(
    api: MistralGateway,
    key: str,
    file_id: str,
    metadata: dict[str, str],
    params: EnrichParams,
    log: Logger,
    began: Callable[[], None],
) -> JobStatus:
    """Create the job, never twice: after an ambiguous failure, look the key up (allowing for a
    listing that lags) before trying again. ``began`` records each attempt's time first (a run
    killed mid-create waits for the listing from then). A create refused before any ambiguous
    attempt deletes the uploaded file: no job can use it."""
    ambiguous = False
    for _ in range(CREATE_ATTEMPTS):
        began()
        try:
            return JobStatus.of(
                api.create_job(
                    endpoint=params.endpoint,
                    file_id=file_id,
                    model=params.model,
                    metadata=metadata,
                    timeout_hours=params.timeout_hours,
                )
            )
        except AmbiguousCreateError as exc:
            ambiguous = True
            log.warning("%s", exc)
            found, _ = find_job(api, key, params, time.time() + api.settings.listing_lag_seconds)
            if found is not None:
                return found
        except ApiError as exc:
            if not ambiguous:  # else a job created by an earlier attempt may use the file
                try:
                    api.delete_file(file_id)
                except ApiError as gone:
                    log.warning("Could not delete the unused request file %s: %s", file_id, gone)
            step = (
                "run the flow again later"
                if exc.transient
                else "fix the cause and run the flow again"
            )
            raise type(exc)(
                f"{exc} (batch job for key {key}, request file {file_id}"
                f"{'' if ambiguous else ', now deleted'}). Nothing was created for this shard: "
                f"{step}."
            ) from exc
    raise TransientApiError(
        f"creating the batch job for file {file_id} (key {key}) failed {CREATE_ATTEMPTS} times "
        "without an answer, and no job with that key showed in the listing within "
        f"{api.settings.listing_lag_seconds:.0f} s. Run the flow again later: it looks the "
        "job up before creating one."
    )


def submit_job(
    api: MistralGateway,
    shard: ShardRef,
    plan: PlanRef,
    params: EnrichParams,
    flow_run_id: str | None = None,
    log: Logger | None = None,
) -> JobRef:
    """Reattach to the job with this shard's key, or upload the file and create it. The job is
    recorded in staging and under the flow run (for the cancel hook) as soon as it exists.

    Where a job is looked for: the id staging recorded for this attempt; then the listing (a
    killed attempt that had begun a creation waits for a lagging listing first); a finished job
    whose results expired is not reused (its rows are sent again, and paid again)."""
    log = log or logging.getLogger(__name__)
    key = job_key(shard.content_hash, params.result_options())
    folder = Staging(plan.staging).attempt(shard.shard, shard.attempt)
    record_uri = storage.join(folder, "job.json")
    intent_uri = storage.join(folder, "create-intent.json")
    intent: dict[str, Any] = storage.read_json(intent_uri) if storage.exists(intent_uri) else {}
    if intent.get("key") != key:
        intent = {"key": key}
    job, expired = _recorded_job(api, record_uri, key), list[str]()
    if job is None:
        # A killed attempt that had begun a creation: its job may show in the listing late.
        began = intent.get("create_at")
        settle = float(began) + api.settings.listing_lag_seconds if began else None
        job, expired = find_job(api, key, params, settle)
    if expired:
        log.warning(
            "The results of batch job(s) %s (shard %d attempt %d) expired before they were "
            "collected; the shard's texts are sent again in a new job (paid again)",
            ", ".join(expired),
            shard.shard,
            shard.attempt,
        )
    reattached = job is not None
    if job is None:
        file_id = _upload(api, shard, plan, intent, intent_uri)
        metadata = job_metadata(
            key,
            enrich_run=plan.run_key,
            enrich_shard=shard.shard,
            enrich_attempt=shard.attempt,
            enrich_kind=params.kind.value,
            enrich_model=params.model,  # the name asked for; the job's own may name a version
            enrich_input=params.input,
            enrich_output=params.output,
            enrich_partition=plan.partition,
            **({"enrich_flow_run": flow_run_id} if flow_run_id else {}),
        )

        def began() -> None:
            storage.write_json(intent_uri, intent | {"file_id": file_id, "create_at": time.time()})

        job = _create(api, key, file_id, metadata, params, log, began)
        failpoint("create")
    ref = JobRef(
        shard=shard.shard,
        attempt=shard.attempt,
        key=key,
        job_id=job.id,
        requests=shard.requests,
        reattached=reattached,
        texts=shard.texts,
        expired_jobs=expired,
    )
    record = ref.model_dump()
    if flow_run_id:
        storage.write_json(
            storage.join(Layout.of(params).run_jobs(flow_run_id), f"{job.id}.json"), record
        )
    storage.write_json(record_uri, record)
    return ref


def answered_texts(jobs: Sequence[JobRef], latest: dict[str, JobStatus]) -> tuple[int, int]:
    """Texts answered so far and texts in all: each job's requests answered, weighted by the
    texts its requests carry (a request holds many texts; a job that records no text count
    counts its requests)."""
    done = of = 0
    for job in jobs:
        texts = job.texts or job.requests
        of += texts
        status = latest.get(job.job_id)
        if status is not None:
            total = max(1, status.total or job.requests)
            done += texts * min(status.completed, total) // total
    return done, of


def wait_all(
    api: MistralGateway,
    jobs: Sequence[JobRef],
    poll_interval: float,
    deadline: float,
    on_progress: Callable[[int, int], None],
    log: Logger,
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
            failpoint("poll")
        except TransientApiError as exc:
            failures += 1
            if failures == 1:
                log.warning("Polling hit a transient error, backing off: %s", exc)
        on_progress(*answered_texts(jobs, latest))
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


def staged_collect(record_uri: str, job_id: str) -> CollectRef | None:
    """What an earlier attempt collected for this job, if its files are whole (a rerun after a
    kill does not download again: the job's results may have expired meanwhile)."""
    if not storage.exists(record_uri):
        return None
    ref = CollectRef.model_validate(storage.read_json(record_uri))
    if ref.job_id != job_id:
        return None
    if storage.parquet_rows(ref.results_uri) != ref.results_rows:
        return None
    if storage.parquet_rows(ref.failures_uri) != ref.failures_rows:
        return None
    return ref


def collect_results(
    api: MistralGateway, outcome: JobOutcome, shard: ShardRef, plan: PlanRef, params: EnrichParams
) -> CollectRef:
    """Download the job's files (streamed to disk), parse them, write results and failures.

    Output or error files that answer 404 have expired: every text of the job becomes a
    transient failure, so the retry pass sends it again."""
    folder = Staging(plan.staging).attempt(shard.shard, shard.attempt)
    record_uri = storage.join(folder, "collected.json")
    staged = staged_collect(record_uri, outcome.job_id)
    if staged is not None:
        return staged
    manifest = storage.read_parquet(shard.manifest_uri)
    expired = False
    with tempfile.TemporaryDirectory() as tmp:
        output = errors = None
        try:
            if outcome.output_file:
                output = Path(tmp, "output.jsonl")
                api.download(outcome.output_file, output)
            if outcome.error_file:
                errors = Path(tmp, "errors.jsonl")
                api.download(outcome.error_file, errors)
        except NotFoundApiError:
            output = errors = None
            expired = True
        failpoint("download")
        parsed = parse(
            params, manifest, output, errors, outcome.job_id, outcome.status, outcome.model
        )
    failures = parsed.failures
    if expired:
        failures = failures.with_columns(
            pl.lit("results_expired").alias("reason"),
            pl.lit(
                f"the results of batch job {outcome.job_id} expired before they were "
                "downloaded; sent again"
            ).alias("message"),
        )
    if shard.too_long_uri:
        too_long = storage.read_parquet(shard.too_long_uri)
        failures = failures.vstack(too_long_failures(too_long))
    results_uri = storage.join(folder, "results.parquet")
    failures_uri = storage.join(folder, "failures.parquet")
    storage.write_parquet(parsed.results.to_arrow(), results_uri)
    storage.write_parquet(failures.to_arrow(), failures_uri)
    ref = CollectRef(
        shard=shard.shard,
        attempt=shard.attempt,
        job_id=outcome.job_id,
        job_status=outcome.status,
        results_uri=results_uri,
        failures_uri=failures_uri,
        succeeded_texts=parsed.results.height,
        transient_failures=int(failures["transient"].sum()),
        terminal_failures=int((~failures["transient"]).sum()),
        missing_lines=0 if expired else parsed.missing_lines,
        duplicate_lines=parsed.duplicate_lines,
        prompt_tokens=parsed.prompt_tokens,
        completion_tokens=parsed.completion_tokens,
        results_rows=parsed.results.height,
        failures_rows=failures.height,
        expired=expired,
        model_versions=versions.counts(parsed.results),
    )
    storage.write_json(record_uri, ref.model_dump())
    return ref


def record_unsent_shard(shard: ShardRef, plan: PlanRef) -> CollectRef:
    """A shard with nothing to send (every new text over the model's context): no job, no
    quota; its texts are recorded as rejected."""
    too_long = (
        storage.read_parquet(shard.too_long_uri)
        if shard.too_long_uri
        else pl.DataFrame(schema={TEXT_KEY: pl.UInt64, "_tokens": pl.Int64})
    )
    failures = too_long_failures(too_long)
    folder = Staging(plan.staging).attempt(shard.shard, shard.attempt)
    results_uri = storage.join(folder, "results.parquet")
    failures_uri = storage.join(folder, "failures.parquet")
    storage.write_parquet(pl.DataFrame(schema={TEXT_KEY: pl.UInt64}).to_arrow(), results_uri)
    storage.write_parquet(failures.to_arrow(), failures_uri)
    return CollectRef(
        shard=shard.shard,
        attempt=shard.attempt,
        job_id="",
        job_status="NOT_SENT",
        results_uri=results_uri,
        failures_uri=failures_uri,
        succeeded_texts=0,
        transient_failures=0,
        terminal_failures=failures.height,
        missing_lines=0,
        duplicate_lines=0,
        prompt_tokens=0,
        completion_tokens=0,
        failures_rows=failures.height,
    )


# Prefect tasks ------------------------------------------------------------------------------


@task(name="check-credentials")
def check_credentials() -> None:
    """Fail before anything is read or written when no API key (or emulator URL) is set."""
    gateway()


@task(name="submit", task_run_name="submit · shard {shard.shard} · attempt {shard.attempt}")
def submit(shard: ShardRef, plan: PlanRef, params: EnrichParams) -> JobRef:
    storage.use_credentials(params.storage_credentials)  # on a Dask worker: not done yet
    ref = submit_job(gateway(), shard, plan, params, flow_run.get_id(), get_run_logger())
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


@task(name="record-unsent", task_run_name="record-unsent · shard {shard.shard}")
def record_unsent(shard: ShardRef, plan: PlanRef) -> CollectRef:
    ref = record_unsent_shard(shard, plan)
    get_run_logger().info(
        "Shard %d: nothing to send (%d text(s) over the model's context are rejected); "
        "no batch job",
        shard.shard,
        ref.terminal_failures,
    )
    return ref


@task(name="wait")
def wait(jobs: list[JobRef], params: EnrichParams, partition: str) -> list[JobOutcome]:
    logger = get_run_logger()
    texts = sum(j.texts or j.requests for j in jobs)
    artifact: UUID = create_progress_artifact(  # type: ignore[assignment]
        progress=0.0,
        key=artifact_key(params, "progress"),
        description=f"0 of {texts:,} texts answered in {len(jobs)} batch job(s) of "
        f"{params.output} partition {partition}",
    )
    shown = [-1.0]

    def progress(done: int, of: int) -> None:
        value = round(100.0 * done / of, 1) if of else 100.0
        if value != shown[0]:
            update_progress_artifact(
                artifact_id=artifact,
                progress=value,
                description=f"{done:,} of {of:,} texts answered in {len(jobs)} batch job(s) of "
                f"{params.output} partition {partition}",
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
            input_files=list(final[j.job_id].input_files),
            model=final[j.job_id].model,
        )
        for j in jobs
    ]


@task(
    name="collect",
    task_run_name="collect · shard {shard.shard} · attempt {shard.attempt}",
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_condition_fn=retry_if_transient,
)
def collect(
    outcome: JobOutcome, shard: ShardRef, plan: PlanRef, params: EnrichParams
) -> CollectRef:
    """Retried by Prefect on failure: it only downloads and parses, it never pays."""
    storage.use_credentials(params.storage_credentials)
    api = gateway()
    ref = in_shard_slot(collect_results, api, outcome, shard, plan, params)
    for file_id in outcome.input_files:  # the job is over: its request file is no longer needed
        try:
            api.delete_file(file_id)
        except ApiError as exc:
            get_run_logger().warning("Could not delete request file %s: %s", file_id, exc)
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
