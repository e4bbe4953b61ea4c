"""The run summary: one markdown artifact per run, and the same facts as a small model."""

from __future__ import annotations

import time

from prefect import task
from prefect.artifacts import create_markdown_artifact

from schemas.params import EnrichParams
from schemas.refs import (
    CollectRef,
    GateRef,
    PlanRef,
    RunSummary,
    WriteRef,
)
from schemas.tables import REJECT_REASONS
from tasks import cost
from tasks.core import keys, pricing, versions
from tasks.core.ledger import RunLedger


class StepClock:
    """Wall seconds per pipeline step: ``lap(step)`` charges the time since the last lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = self._last = time.monotonic()

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = round(self.seconds.get(step, 0.0) + now - self._last, 3)
        self._last = now

    def total(self) -> float:
        return time.monotonic() - self._started

    def describe(self) -> str:
        return ", ".join(f"{step} {seconds:.1f}" for step, seconds in self.seconds.items())


def summarize(
    plan: PlanRef,
    params: EnrichParams,
    ledger: RunLedger,
    written: list[WriteRef],
    duration_seconds: float,
    *,
    dry_run: bool = False,
) -> RunSummary:
    """The run in numbers, from its ledger and what it wrote."""
    jobs, collected, shards = ledger.jobs, ledger.collected, ledger.shards
    by_reason: dict[str, int] = {}
    for ref in written:
        for reason, count in ref.rejected_by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    answer_tokens = cost.completion_tokens_per_text(params)
    prices = cost.load_prices(params.price_table)
    # Cached rows sent again for their model version were not taken from the cache after all.
    cached_rows = plan.cache_hit_rows
    if ledger.resent_texts and written:
        cached_rows = sum(w.cached_rows for w in written)
    used = cached_rows / plan.cache_hit_rows if plan.cache_hit_rows else 1.0
    avoided = pricing.avoided(params, plan, prices, answer_tokens)
    prompt_tokens = sum(c.prompt_tokens for c in collected)
    completion_tokens = sum(c.completion_tokens for c in collected)
    return RunSummary(
        run_key=plan.run_key,
        output=params.output,
        partition=plan.partition,
        rows_in=plan.rows,
        enriched_rows=sum(w.enriched_rows for w in written),
        rejected_rows=sum(w.rejected_rows for w in written),
        rejected_by_reason=by_reason,
        requests=sum(s.requests for s in shards),
        jobs={c.job_id: c.job_status for c in collected if c.job_id},
        reattached_jobs=sum(j.reattached for j in jobs),
        retried_texts=sum(
            c.succeeded_texts + c.transient_failures + c.terminal_failures
            for c in collected
            if c.attempt > 0 and c.attempt not in ledger.resend_attempts
        ),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        duplicate_lines=sum(c.duplicate_lines for c in collected),
        duration_seconds=round(duration_seconds, 1),
        dry_run=dry_run,
        cache_hit_rows=cached_rows,
        cache_hit_texts=plan.cache_hit_texts,
        sent_texts=sum(s.texts for s in shards if s.attempt == 0),
        estimated=ledger.estimate,
        actual_cost_usd=None
        if dry_run
        else prices.cost(params.model, prompt_tokens, completion_tokens),
        cost_avoided_usd=None if avoided is None else avoided * used,
        cache_added=sum(w.cache_add_rows for w in written),
        processes=sorted({w.process for w in written if w.process}),
        expired_jobs=len(
            {i for j in jobs for i in j.expired_jobs} | {c.job_id for c in collected if c.expired}
        ),
        model_versions=versions.add(*(w.model_versions for w in written)),
        resent_texts=ledger.resent_texts,
    )


def _usd(value: float | None) -> str:
    return "unknown" if value is None else pricing.usd(value)


def _versions_line(summary: RunSummary) -> str:
    """Which model versions answered the rows; a mix is said in capitals."""
    named = versions.describe(summary.model_versions, "rows") or "none"
    resent = f"; {summary.resent_texts:,} texts sent again" if summary.resent_texts else ""
    if len(summary.model_versions) > 1:
        return f"| model versions | MIXED: {named}{resent} |"
    return f"| model version | {named}{resent} |"


def to_markdown(
    summary: RunSummary, collected: list[CollectRef], verdict: GateRef, kind: str = ""
) -> str:
    estimated = summary.estimated
    table = keys.table_name(summary.output)
    if verdict.success:
        outcome = f"| enriched | {summary.enriched_rows:,} rows, published |"
    else:
        outcome = (
            f"| quarantined | {summary.enriched_rows:,} rows answered but NOT published: "
            "validation failed (see below) |"
        )
    lines = [
        f"# {' · '.join(filter(None, [kind, table, summary.partition]))}"
        + ("" if verdict.success else ": quarantined"),
        "",
        "| | |",
        "|---|---|",
        f"| output | `{summary.output}` (partition `{summary.partition}`) |",
        f"| run key | `{summary.run_key}` |",
        f"| rows in | {summary.rows_in:,} |",
        outcome,
        f"| rejected | {summary.rejected_rows:,} |",
        f"| from the cache | {summary.cache_hit_rows:,} rows ({summary.cache_hit_texts:,} texts);"
        f" cost avoided {_usd(summary.cost_avoided_usd)} |",
        f"| sent | {summary.sent_texts:,} new texts |",
        f"| requests | {summary.requests:,} |",
        f"| jobs | {len(summary.jobs)} ({summary.reattached_jobs} reattached) |",
        f"| texts retried | {summary.retried_texts:,} |",
        f"| jobs whose results expired (texts paid again) | {summary.expired_jobs:,} |",
        f"| tokens, estimated | {estimated.prompt_tokens:,} prompt, "
        f"{estimated.completion_tokens:,} completion: {_usd(estimated.cost_usd)} |",
        f"| tokens, actual | {summary.prompt_tokens:,} prompt, {summary.completion_tokens:,} "
        f"completion: {_usd(summary.actual_cost_usd)} |",
        _versions_line(summary),
        f"| added to the cache | {summary.cache_added:,} results |",
        f"| duplicated answer lines | {summary.duplicate_lines} |",
        f"| duration | {summary.duration_seconds:,.1f} s |",
        f"| validation | {'passed' if verdict.success else 'FAILED: ' + verdict.message()} "
        f"({verdict.evaluated} expectations) |",
        "",
        "## Jobs",
        "",
        "| shard | attempt | job | status | ok | transient | terminal | missing lines |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(collected, key=lambda c: (c.shard, c.attempt)):
        lines.append(
            f"| {c.shard} | {c.attempt} | `{c.job_id}` | {c.job_status} | {c.succeeded_texts:,} | "
            f"{c.transient_failures:,} | {c.terminal_failures:,} | {c.missing_lines:,} |"
        )
    if summary.rejected_by_reason:
        lines += [
            "",
            "## Rejected rows by reason",
            "",
            "| reason | rows | meaning |",
            "|---|---|---|",
        ]
        for reason, count in sorted(summary.rejected_by_reason.items()):
            lines.append(f"| {reason} | {count:,} | {REJECT_REASONS.get(reason, '')} |")
    return "\n".join(lines) + "\n"


@task(name="summary")
def summary(
    summary: RunSummary, collected: list[CollectRef], verdict: GateRef, params: EnrichParams
) -> RunSummary:
    state = "published" if verdict.success else "quarantined"
    create_markdown_artifact(
        markdown=to_markdown(summary, collected, verdict, params.kind.value),
        key=keys.artifact_key(params, "summary"),
        description=f"{params.kind.value} run of {summary.output} partition "
        f"{summary.partition}: {state}",
    )
    return summary
