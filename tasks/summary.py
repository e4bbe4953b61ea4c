"""The run summary: one markdown artifact per run, and the same facts as a small model."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from schemas.refs import CollectRef, GateRef, JobRef, PlanRef, RunSummary, WriteRef
from schemas.tables import REJECT_REASONS


def summarize(
    plan: PlanRef,
    output: str,
    jobs: list[JobRef],
    collected: list[CollectRef],
    written: list[WriteRef],
    requests: int,
    duration_seconds: float,
) -> RunSummary:
    by_reason: dict[str, int] = {}
    for ref in written:
        for reason, count in ref.rejected_by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    return RunSummary(
        run_key=plan.run_key,
        output=output,
        partition=plan.partition,
        rows_in=plan.rows,
        enriched_rows=sum(w.enriched_rows for w in written),
        rejected_rows=sum(w.rejected_rows for w in written),
        rejected_by_reason=by_reason,
        requests=requests,
        jobs={c.job_id: c.job_status for c in collected},
        reattached_jobs=sum(j.reattached for j in jobs),
        retried_texts=sum(
            c.succeeded_texts + c.transient_failures + c.terminal_failures
            for c in collected
            if c.attempt > 0
        ),
        prompt_tokens=sum(c.prompt_tokens for c in collected),
        completion_tokens=sum(c.completion_tokens for c in collected),
        duplicate_lines=sum(c.duplicate_lines for c in collected),
        duration_seconds=round(duration_seconds, 1),
    )


def to_markdown(summary: RunSummary, collected: list[CollectRef], verdict: GateRef) -> str:
    lines = [
        f"# Enrichment run `{summary.run_key}`",
        "",
        "| | |",
        "|---|---|",
        f"| output | `{summary.output}` (partition `{summary.partition}`) |",
        f"| rows in | {summary.rows_in:,} |",
        f"| enriched | {summary.enriched_rows:,} |",
        f"| rejected | {summary.rejected_rows:,} |",
        f"| requests | {summary.requests:,} |",
        f"| jobs | {len(summary.jobs)} ({summary.reattached_jobs} reattached) |",
        f"| texts retried | {summary.retried_texts:,} |",
        f"| tokens | {summary.prompt_tokens:,} prompt, {summary.completion_tokens:,} completion |",
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
def publish_summary(
    summary: RunSummary, collected: list[CollectRef], verdict: GateRef
) -> RunSummary:
    create_markdown_artifact(
        markdown=to_markdown(summary, collected, verdict),
        key=f"enrich-{summary.run_key}",
        description=f"Enrichment run summary for {summary.output}",
    )
    return summary
