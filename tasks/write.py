"""Write: each shard's rows joined to their results, and the rows that could not be enriched.

Every input row lands in exactly one place — the enriched table or the rejected rows — and the
write fails, naming ids, rather than drop one.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
from prefect import task

from schemas.params import EnrichParams, Kind
from schemas.refs import CollectRef, PlanRef, WriteRef
from schemas.tables import PARTITION_COLUMN, REJECTED
from tasks import storage
from tasks.plan import BUCKET, REJECT, TEXT_KEY

_INTERNAL = (TEXT_KEY, REJECT, BUCKET)


def partition_dir(output: str, partition: str, *, rejected: bool = False) -> str:
    base = storage.join(output, "_rejected") if rejected else output
    return storage.join(base, f"{PARTITION_COLUMN}={partition}")


def merge_attempts(collected: list[CollectRef]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Results of every attempt, and each failed text's last failure with its attempt count."""
    results = [storage.read_parquet(c.results_uri) for c in collected]
    failures = [
        storage.read_parquet(c.failures_uri).with_columns(pl.lit(c.attempt).alias("_attempt"))
        for c in collected
    ]
    ok = pl.concat(results, how="diagonal_relaxed") if results else pl.DataFrame()
    failed = pl.concat(failures, how="diagonal_relaxed") if failures else pl.DataFrame()
    if failed.height:
        attempts = failed.group_by(TEXT_KEY).agg(pl.len().cast(pl.Int32).alias("attempts"))
        failed = failed.sort("_attempt").group_by(TEXT_KEY).last().join(attempts, on=TEXT_KEY)
        if ok.height:
            failed = failed.join(ok.select(TEXT_KEY), on=TEXT_KEY, how="anti")
    return ok, failed


def enrich_rows(
    rows: pl.DataFrame,
    results: pl.DataFrame,
    failed: pl.DataFrame,
    params: EnrichParams,
    enriched_at: datetime,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(enriched rows, rejected rows) for one shard; together exactly the shard's rows."""
    input_columns = [c for c in rows.columns if c not in _INTERNAL]
    sendable = rows.filter(pl.col(REJECT).is_null())
    enriched = pl.DataFrame()
    if results.height:
        enriched = sendable.join(results, on=TEXT_KEY, how="inner")
        if params.kind is Kind.embeddings:
            width = enriched["embedding"].list.len().max()
            assert isinstance(width, int)
            enriched = enriched.with_columns(
                pl.col("embedding").list.to_array(width).alias("embedding")
            )
        result_columns = [c for c in results.columns if c not in (TEXT_KEY, "batch_job_id")]
        enriched = enriched.select(
            *input_columns,
            *result_columns,
            pl.lit(enriched_at).cast(pl.Datetime("us", "UTC")).alias("enriched_at"),
            pl.lit(params.model).alias("model"),
            "batch_job_id",
        )
    before_send = rows.filter(pl.col(REJECT).is_not_null()).select(
        *input_columns,
        pl.col(REJECT).alias("reject_reason"),
        pl.lit(None, pl.String).alias("reject_message"),
        pl.lit(None, pl.Int64).alias("status_code"),
        pl.lit(0, pl.Int32).alias("attempts"),
        pl.lit(None, pl.String).alias("batch_job_id"),
    )
    after_send = pl.DataFrame()
    if failed.height:
        after_send = sendable.join(failed, on=TEXT_KEY, how="inner").select(
            *input_columns,
            pl.col("reason").alias("reject_reason"),
            pl.col("message").alias("reject_message"),
            "status_code",
            "attempts",
            "batch_job_id",
        )
    rejected = pl.concat([before_send, after_send], how="diagonal_relaxed").cast(
        REJECTED  # type: ignore[arg-type]
    )
    if enriched.height + rejected.height != rows.height:
        placed = [f.select(params.id_column) for f in (enriched, rejected) if f.height]
        placed_ids = pl.concat(placed or [rows.clear().select(params.id_column)])
        lost = rows.join(placed_ids, on=params.id_column, how="anti")[params.id_column].head(5)
        raise RuntimeError(
            f"{rows.height - enriched.height - rejected.height} row(s) have neither a result nor "
            f"a recorded failure (e.g. ids {lost.to_list()}); nothing was written for this shard"
        )
    return enriched, rejected


def write_shard(
    plan: PlanRef,
    params: EnrichParams,
    shard: int,
    collected: list[CollectRef],
    enriched_at: datetime,
) -> WriteRef:
    if not storage.exists(plan.rows_uri(shard)):  # no row hashed into this shard
        return WriteRef(
            shard=shard, enriched_uri=None, rejected_uri=None, enriched_rows=0, rejected_rows=0
        )
    rows = storage.scan_parquet(plan.rows_uri(shard)).collect()
    results, failed = merge_attempts(collected)
    enriched, rejected = enrich_rows(rows, results, failed, params, enriched_at)
    name = f"part-{shard:05d}.parquet"
    enriched_uri = rejected_uri = None
    if enriched.height:
        enriched_uri = storage.join(partition_dir(params.output, plan.partition), name)
        storage.write_parquet(enriched.to_arrow(), enriched_uri)
    if rejected.height:
        rejected_uri = storage.join(
            partition_dir(params.output, plan.partition, rejected=True), name
        )
        storage.write_parquet(rejected.to_arrow(), rejected_uri)
    by_reason = (
        dict(rejected["reject_reason"].value_counts().iter_rows()) if rejected.height else {}
    )
    return WriteRef(
        shard=shard,
        enriched_uri=enriched_uri,
        rejected_uri=rejected_uri,
        enriched_rows=enriched.height,
        rejected_rows=rejected.height,
        rejected_by_reason=by_reason,
    )


@task(name="clear-partition")
def clear_partition(params: EnrichParams, partition: str) -> None:
    """A rerun of a partition replaces it: old parts (possibly more shards) are removed first."""
    storage.remove(partition_dir(params.output, partition))
    storage.remove(partition_dir(params.output, partition, rejected=True))


@task(name="write")
def write_shard_task(
    plan: PlanRef,
    params: EnrichParams,
    shard: int,
    collected: list[CollectRef],
    enriched_at: datetime,
) -> WriteRef:
    return write_shard(plan, params, shard, collected, enriched_at)
