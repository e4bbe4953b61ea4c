"""The enrich flow: plan (cache lookup) → requests → estimate (dry run, budget) → submit → wait →
collect (→ retry → re-send what an older model version answered) → write (staging) → validate →
publish or quarantine → cache update → summary.

The flow only wires tasks together: each step's logic lives in ``tasks`` (and below it in
``tasks.core`` and ``kinds``), the attempts are driven by a ``Sender`` (``flows.sending``), and
what the run has sent so far is kept in a ``RunLedger``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, unmapped
from prefect.logging import get_run_logger

from flows.engine import running_tasks_on
from flows.hooks import cancel_jobs, report_failure
from flows.naming import dry_run_ended, run_name, tag_dry_run
from flows.sending import Sender
from schemas.params import EnrichParams
from schemas.refs import CollectRef, GateRef, PlanRef, RunSummary, WriteRef
from tasks.batch import check_credentials, record_unsent
from tasks.cache import fetch_cached, stage_cache, update_cache
from tasks.core.ledger import RunLedger
from tasks.cost import estimate
from tasks.edges import storage
from tasks.failpoints import failpoint
from tasks.insight import insight
from tasks.lease import Lease, holding_partition
from tasks.plan import check_locations, plan
from tasks.publish import clean_staging, publish, quarantine, repair
from tasks.quota import reserve_quota
from tasks.requests import build_requests
from tasks.summary import StepClock, summarize, summary
from tasks.validate import validate
from tasks.write import write


@flow(
    name="enrich",
    log_prints=False,
    on_cancellation=[cancel_jobs],
    on_crashed=[report_failure],  # jobs keep running: the next run of the input reattaches
    on_failure=[report_failure],
    flow_run_name=run_name,  # "<kind> · <table> · <partition>"
)
def enrich(params: EnrichParams) -> RunSummary:
    """Enrich a Parquet dataset through Mistral batch jobs; see the README for the contract."""
    storage.use_credentials(params.storage_credentials)  # this process's; Dask tasks take theirs
    clock = StepClock()
    enriched_at = datetime.now(UTC)
    partition = params.partition_value(enriched_at)
    check_locations(params)
    if params.dry_run:
        tag_dry_run()
    else:
        check_credentials()
    with holding_partition(params, partition) as lease:  # one writer per table partition
        repair(params, partition)
        clock.lap("lease")
        with running_tasks_on(params.task_runner):
            result = _enrich(params, partition, enriched_at, clock, lease)
    get_run_logger().info("Seconds per step: %s", clock.describe())
    final = result.model_copy(update={"step_seconds": clock.seconds})
    return dry_run_ended(final) if params.dry_run else final


def _enrich(
    params: EnrichParams, partition: str, enriched_at: datetime, clock: StepClock, lease: Lease
) -> RunSummary:
    planned = plan(params, partition)
    clock.lap("plan")
    ledger = _build(planned, params)  # raises when over budget
    clock.lap("build")
    if params.dry_run:
        return summarize(planned, params, ledger, [], clock.total(), dry_run=True)
    fetch_cached.map(unmapped(planned), unmapped(params), range(len(planned.cache_files))).result()
    clock.lap("cache-fetch")
    sender = Sender(planned, params, reserve_quota() if ledger.shards else ("", 0), clock, ledger)
    sender.send(ledger.shards)
    sender.retry()
    sender.settle_versions()
    written = _write_all(planned, params, ledger.collected, enriched_at)
    clock.lap("write")
    verdict = validate(planned, params, written)
    clock.lap("validate")
    result = summarize(planned, params, ledger, written, clock.total())
    summary(result, ledger.collected, verdict, params)
    if not verdict.success:
        quarantine(planned, params, verdict)  # raises: the run fails, nothing is published
    _publish(planned, params, written, verdict, result, clock, lease)
    return result


def _build(planned: PlanRef, params: EnrichParams) -> RunLedger:
    """The first attempt's request files and the run's estimate (a dry run stops after it)."""
    built = build_requests.map(unmapped(planned), unmapped(params), range(planned.shards)).result()
    shards = [s for s in built if s is not None and s.requests]
    ledger = RunLedger(estimate(planned, shards, params))
    ledger.planned(shards)
    ledger.unsent([record_unsent(s, planned) for s in built if s is not None and not s.requests])
    return ledger


def _write_all(
    planned: PlanRef, params: EnrichParams, collected: list[CollectRef], enriched_at: datetime
) -> list[WriteRef]:
    return write.map(
        unmapped(planned),
        unmapped(params),
        range(planned.shards),
        [[c for c in collected if c.shard == shard] for shard in range(planned.shards)],
        unmapped(enriched_at),
    ).result()


def _publish(
    planned: PlanRef,
    params: EnrichParams,
    written: list[WriteRef],
    verdict: GateRef,
    result: RunSummary,
    clock: StepClock,
    lease: Lease,
) -> None:
    """Publish the partition, then update the cache and clean staging while the lease holds,
    then describe the published results (the ``results`` artifact)."""
    pending = stage_cache(planned, params, written)
    clock.lap("cache-stage")
    lease.check()  # never publish over a run that took the partition over
    published = publish(planned, params, written, verdict, result.jobs)
    clock.lap("publish")
    failpoint("promote")
    if pending and lease.held():  # else the next lookup promotes it
        update_cache(pending)
    clock.lap("cache-promote")
    if not params.keep_staging and lease.held():  # else staging may be another run's now
        clean_staging(planned)
    # Best effort: a failed results artifact shows as a failed task; the run stays completed.
    insight(params, planned.partition, published, return_state=True)
    clock.lap("insight")
