"""The enrich flow: plan (cache lookup) → requests → estimate (dry run, budget) → submit → wait →
collect (→ retry) → write (staging) → validate → publish or quarantine → cache update → summary.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, unmapped
from prefect.logging import get_run_logger

from flows.engine import running_tasks_on
from flows.hooks import cancel_jobs, report_failure
from flows.suspend import suspend_while_running
from schemas.params import EnrichParams, WaitMode
from schemas.refs import CollectRef, JobRef, PlanRef, RunSummary, ShardRef, WriteRef
from tasks import cost
from tasks.batch import (
    check_credentials,
    collect_job,
    collect_unsent_shard,
    submit_shard,
    wait_for_jobs,
)
from tasks.cache import fetch_cached, promote_cache, stage_cache
from tasks.cost import estimate_run
from tasks.failpoints import failpoint
from tasks.lease import Lease, holding_partition
from tasks.plan import check_input_locations, plan_input
from tasks.publish import (
    clean_staging_task,
    publish_partition,
    quarantine_run,
    repair_partition,
)
from tasks.quota import holding, reserve_quota, waves
from tasks.requests import build_requests, build_retry_requests
from tasks.summary import StepClock, publish_summary, summarize
from tasks.validate import validate_run
from tasks.write import write_shard_task


def _run_jobs(
    shards: list[ShardRef],
    plan: PlanRef,
    params: EnrichParams,
    quota: tuple[str, int],
    clock: StepClock,
) -> tuple[list[JobRef], list[CollectRef]]:
    """Submit shards, a quota-sized wave at a time: each wave holds slots of the pending-requests
    limit equal to its requests from before its jobs exist until they are over."""
    name, capacity = quota
    jobs: list[JobRef] = []
    collected: list[CollectRef] = []
    for wave in waves(shards, capacity):
        with holding(name, sum(s.requests for s in wave)):
            submitted = submit_shard.map(wave, unmapped(plan), unmapped(params)).result()
            clock.lap("submit")
            if params.wait is WaitMode.suspend:  # frees the worker until the jobs are over
                suspend_while_running(submitted, params)
            outcomes = wait_for_jobs(submitted, params, plan.partition)
            clock.lap("wait")
        jobs += submitted
        collected += collect_job.map(outcomes, wave, unmapped(plan), unmapped(params)).result()
        clock.lap("collect")
    return jobs, collected


def _budget_after(
    params: EnrichParams, spent: float | None, retry: list[ShardRef]
) -> tuple[bool, float | None]:
    """Whether a retry pass keeps the run's estimate within ``max_cost_usd``, and the estimate
    with it."""
    more = cost.estimate(params, retry, cost.load_prices(params.price_table)).cost_usd
    total = None if spent is None or more is None else spent + more
    if params.max_cost_usd is None or (total is not None and total <= params.max_cost_usd):
        return True, total
    get_run_logger().warning(
        "Not retrying %d text(s): the retry would take the estimate over max_cost_usd=%s; "
        "they are recorded as rejected",
        sum(s.texts for s in retry),
        params.max_cost_usd,
    )
    return False, spent


@flow(
    name="enrich",
    log_prints=False,
    on_cancellation=[cancel_jobs],
    on_crashed=[report_failure],  # jobs keep running: the next run of the input reattaches
    on_failure=[report_failure],
)
def enrich(params: EnrichParams) -> RunSummary:
    """Enrich a Parquet dataset through Mistral batch jobs; see the README for the contract."""
    clock = StepClock()
    enriched_at = datetime.now(UTC)
    partition = params.partition_value(enriched_at)
    check_input_locations(params)
    if not params.dry_run:
        check_credentials()
    with holding_partition(params, partition) as lease:  # one writer per table partition
        repair_partition(params, partition)
        clock.lap("lease")
        with running_tasks_on(params.task_runner):
            summary = _enrich(params, partition, enriched_at, clock, lease)
    get_run_logger().info("Seconds per step: %s", clock.describe())
    return summary.model_copy(update={"step_seconds": clock.seconds})


def _enrich(
    params: EnrichParams, partition: str, enriched_at: datetime, clock: StepClock, lease: Lease
) -> RunSummary:
    plan = plan_input(params, partition)
    clock.lap("plan")
    built = build_requests.map(unmapped(plan), unmapped(params), range(plan.shards)).result()
    shards = [s for s in built if s is not None and s.requests]
    unsent = [collect_unsent_shard(s, plan) for s in built if s is not None and not s.requests]
    estimate = estimate_run(plan, shards, params)  # raises when over budget
    clock.lap("build")
    if params.dry_run:
        return summarize(plan, params, [], [], [], shards, estimate, clock.total(), dry_run=True)

    fetch_cached.map(unmapped(plan), range(len(plan.cache_files))).result()
    clock.lap("cache-fetch")
    quota = reserve_quota() if shards else ("", 0)
    jobs, collected = _run_jobs(shards, plan, params, quota, clock) if shards else ([], [])
    all_jobs, all_collected, all_shards = list(jobs), list(collected) + unsent, list(shards)
    spent: float | None = estimate.cost_usd

    for attempt in range(1, params.max_retries + 1):
        retry = [c for c in collected if c.transient_failures]
        if not retry:
            break
        retry_shards = [
            s
            for s in build_retry_requests.map(
                unmapped(plan),
                unmapped(params),
                [c.shard for c in retry],
                unmapped(attempt),
                [c.failures_uri for c in retry],
            ).result()
            if s is not None and s.requests
        ]
        if not retry_shards:
            break
        affordable, spent = _budget_after(params, spent, retry_shards)
        if not affordable:
            break
        jobs, collected = _run_jobs(retry_shards, plan, params, quota, clock)
        all_jobs += jobs
        all_collected += collected
        all_shards += retry_shards

    written = write_all(plan, params, all_collected, enriched_at)
    clock.lap("write")
    verdict = validate_run(plan, params, written)
    clock.lap("validate")
    summary = summarize(
        plan, params, all_jobs, all_collected, written, all_shards, estimate, clock.total()
    )
    publish_summary(summary, all_collected, verdict)
    if not verdict.success:
        quarantine_run(plan, params, verdict)  # raises: the run fails, nothing is published
    pending = stage_cache(plan, params, written)
    clock.lap("cache-stage")
    lease.check()  # never publish over a run that took the partition over
    publish_partition(plan, params, written, verdict, summary.jobs)
    clock.lap("publish")
    failpoint("promote")
    if pending and lease.held():  # else the next lookup promotes it
        promote_cache(pending)
    clock.lap("cache-promote")
    if not params.keep_staging and lease.held():  # else staging may be another run's now
        clean_staging_task(plan)
    return summary


def write_all(
    plan: PlanRef, params: EnrichParams, collected: list[CollectRef], enriched_at: datetime
) -> list[WriteRef]:
    return write_shard_task.map(
        unmapped(plan),
        unmapped(params),
        range(plan.shards),
        [[c for c in collected if c.shard == shard] for shard in range(plan.shards)],
        unmapped(enriched_at),
    ).result()
