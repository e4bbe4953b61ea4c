"""The enrich flow: plan (cache lookup) → requests → estimate (dry run, budget) → submit → wait →
collect (→ retry) → write (staging) → validate → publish or quarantine → cache update → summary.

The flow only wires tasks together: each step's logic lives in ``tasks`` (and below it in
``tasks.core`` and ``kinds``), and what the run has sent so far is kept in a ``RunLedger``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, unmapped
from prefect.logging import get_run_logger

from flows.engine import running_tasks_on
from flows.hooks import cancel_jobs, report_failure
from flows.naming import dry_run_ended, run_name, tag_dry_run
from flows.suspend import suspend_while_running
from schemas.params import EnrichParams, MixedVersions, WaitMode
from schemas.refs import CollectRef, GateRef, PlanRef, RunSummary, ShardRef, WriteRef
from tasks import cost
from tasks.batch import check_credentials, collect, record_unsent, submit, wait
from tasks.cache import fetch_cached, stage_cache, update_cache
from tasks.core import pricing, versions
from tasks.core.ledger import RunLedger
from tasks.core.quota import waves
from tasks.cost import estimate
from tasks.edges import storage
from tasks.failpoints import failpoint
from tasks.insight import insight
from tasks.lease import Lease, holding_partition
from tasks.plan import check_locations, plan
from tasks.publish import clean_staging, publish, quarantine, repair
from tasks.quota import holding, reserve_quota
from tasks.requests import build_requests, build_retry_requests
from tasks.summary import StepClock, summarize, summary
from tasks.validate import validate
from tasks.versions import build_resend_requests, count_versions
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
    quota = reserve_quota() if ledger.shards else ("", 0)
    _send(ledger.shards, planned, params, quota, clock, ledger)
    _retry(planned, params, quota, clock, ledger)
    _settle_versions(planned, params, quota, clock, ledger)
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


def _send(
    shards: list[ShardRef],
    planned: PlanRef,
    params: EnrichParams,
    quota: tuple[str, int],
    clock: StepClock,
    ledger: RunLedger,
) -> None:
    """Submit shards, a quota-sized wave at a time: each wave holds slots of the pending-requests
    limit equal to its requests from before its jobs exist until they are over."""
    name, capacity = quota
    for wave in waves(shards, capacity):
        with holding(name, sum(s.requests for s in wave)):
            jobs = submit.map(wave, unmapped(planned), unmapped(params)).result()
            clock.lap("submit")
            if params.wait is WaitMode.suspend:  # frees the worker until the jobs are over
                suspend_while_running(jobs, params)
            outcomes = wait(jobs, params, planned.partition)
            clock.lap("wait")
        collected = collect.map(outcomes, wave, unmapped(planned), unmapped(params)).result()
        ledger.sent(jobs, collected)
        clock.lap("collect")


def _retry(
    planned: PlanRef,
    params: EnrichParams,
    quota: tuple[str, int],
    clock: StepClock,
    ledger: RunLedger,
) -> None:
    """Up to ``max_retries`` follow-up attempts for the texts that failed transiently."""
    for _ in range(params.max_retries):
        retry = _retry_shards(planned, params, ledger, ledger.next_attempt())
        if not retry:
            return
        _send(retry, planned, params, quota, clock, ledger)


def _settle_versions(
    planned: PlanRef,
    params: EnrichParams,
    quota: tuple[str, int],
    clock: StepClock,
    ledger: RunLedger,
) -> None:
    """When the service says the partition's answers came from several versions of the model:
    send the texts of older versions again (``resend``), or refuse (``refuse``) before
    anything is written; ``accept`` publishes them, versions listed in the manifest."""
    target = versions.current(ledger.collected)
    seen = {v for c in ledger.collected for v in c.model_versions}
    seen |= {planned.cache_version or params.model} if planned.cache_hit_texts else set()
    if params.on_mixed_versions is MixedVersions.accept or target is None or len(seen) < 2:
        return
    per_shard = [[c for c in ledger.collected if c.shard == s] for s in range(planned.shards)]
    texts = versions.add(
        *count_versions.map(
            unmapped(planned), unmapped(params), range(planned.shards), per_shard
        ).result()
    )
    if len(texts) < 2:
        return
    if params.on_mixed_versions is MixedVersions.refuse:
        raise versions.MixedVersionsError(
            versions.refusal(params, planned.partition, texts, target)
        )
    attempt = ledger.next_attempt()
    built = build_resend_requests.map(
        unmapped(planned),
        unmapped(params),
        range(planned.shards),
        unmapped(attempt),
        unmapped(target),
        per_shard,
    ).result()
    shards = [s for s in built if s is not None and s.requests]
    if not _affordable(planned, params, ledger, shards, "send again"):
        return
    stale = sum(s.texts for s in shards)
    get_run_logger().warning(
        "The model now answers as %s; this partition's answers came from %s. Sending the %d "
        "text(s) answered by older versions again (on_mixed_versions=resend)",
        target,
        versions.describe(texts),
        stale,
    )
    ledger.planned(shards)
    ledger.resent_texts += stale
    _send(shards, planned, params, quota, clock, ledger)
    _retry(planned, params, quota, clock, ledger)


def _affordable(
    planned: PlanRef, params: EnrichParams, ledger: RunLedger, shards: list[ShardRef], what: str
) -> bool:
    """Whether sending ``shards`` keeps the run's estimate within ``max_cost_usd``; if so the
    spend is counted, else the texts are left as they are (a warning says so)."""
    prices, answer = cost.load_prices(params.price_table), cost.completion_tokens_per_text(params)
    more = pricing.estimate(params, shards, prices, answer).cost_usd
    if shards and not ledger.affords(more, params.max_cost_usd):
        get_run_logger().warning(
            "Not going to %s %d text(s): that would take the estimate over max_cost_usd=%s",
            what,
            sum(s.texts for s in shards),
            params.max_cost_usd,
        )
        return False
    return bool(shards)


def _retry_shards(
    planned: PlanRef, params: EnrichParams, ledger: RunLedger, attempt: int
) -> list[ShardRef]:
    """A follow-up attempt's shards for the texts that failed transiently, if the budget allows."""
    failed = ledger.to_retry()
    if not failed:
        return []
    built = build_retry_requests.map(
        unmapped(planned),
        unmapped(params),
        [c.shard for c in failed],
        unmapped(attempt),
        [c.failures_uri for c in failed],
    ).result()
    shards = [s for s in built if s is not None and s.requests]
    if not _affordable(planned, params, ledger, shards, "retry (they are recorded as rejected)"):
        return []
    ledger.planned(shards)
    return shards


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
