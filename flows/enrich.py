"""The enrich flow: plan → requests → submit → wait → collect (→ retry) → write (staging) →
validate → publish or quarantine → summary."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow, unmapped

from schemas.params import EnrichParams
from schemas.refs import CollectRef, JobRef, PlanRef, RunSummary, ShardRef
from tasks.batch import check_credentials, collect_job, submit_shard, wait_for_jobs
from tasks.plan import plan_input
from tasks.publish import publish_partition, quarantine_run
from tasks.requests import build_requests, build_retry_requests
from tasks.summary import publish_summary, summarize
from tasks.validate import validate_run
from tasks.write import write_shard_task


def _run_jobs(
    shards: list[ShardRef], plan: PlanRef, params: EnrichParams
) -> tuple[list[JobRef], list[CollectRef]]:
    """Submit every shard, wait for all jobs together, collect each."""
    jobs = submit_shard.map(shards, unmapped(plan), unmapped(params)).result()
    outcomes = wait_for_jobs(jobs, params)
    collected = collect_job.map(outcomes, shards, unmapped(plan), unmapped(params)).result()
    return jobs, collected


@flow(name="enrich", log_prints=False)
def enrich(params: EnrichParams) -> RunSummary:
    """Enrich a Parquet dataset through Mistral batch jobs; see the README for the contract."""
    started = time.monotonic()
    enriched_at = datetime.now(UTC)
    check_credentials()
    plan = plan_input(params, params.partition_value(enriched_at))
    shards = [
        s
        for s in build_requests.map(unmapped(plan), unmapped(params), range(plan.shards)).result()
        if s is not None
    ]
    jobs, collected = _run_jobs(shards, plan, params) if shards else ([], [])
    all_jobs, all_collected, requests = list(jobs), list(collected), sum(s.requests for s in shards)

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
            if s is not None
        ]
        jobs, collected = _run_jobs(retry_shards, plan, params) if retry_shards else ([], [])
        all_jobs += jobs
        all_collected += collected
        requests += sum(s.requests for s in retry_shards)

    written = write_shard_task.map(
        unmapped(plan),
        unmapped(params),
        range(plan.shards),
        [[c for c in all_collected if c.shard == shard] for shard in range(plan.shards)],
        unmapped(enriched_at),
    ).result()
    verdict = validate_run(plan, params, written)
    summary = summarize(
        plan, params.output, all_jobs, all_collected, written, requests, time.monotonic() - started
    )
    publish_summary(summary, all_collected, verdict)
    if not verdict.success:
        quarantine_run(plan, params, verdict)  # raises: the run fails, nothing is published
    publish_partition(plan, params, written, verdict, summary.jobs)
    return summary
