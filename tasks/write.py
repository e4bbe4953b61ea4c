"""Write (to staging): each shard's rows joined to their results, the rows that could not be
enriched, and the narrow frames the validation gate checks.

Every input row lands in exactly one place — the enriched rows or the rejected rows — and the
write fails, naming ids, rather than drop one. Nothing here is visible to analysts: publishing
happens after validation (``tasks.publish``).
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
from prefect import task

from schemas.params import EnrichParams
from schemas.refs import CollectRef, PlanRef, WriteRef
from schemas.tables import REJECTED
from tasks import storage
from tasks.plan import BUCKET, REJECT, TEXT_KEY
from tasks.validate import derive

_INTERNAL = (TEXT_KEY, REJECT, BUCKET)


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
        # Vectors stay variable-length lists until the gate has checked their length;
        # publishing turns them into FixedSizeList(float32, dim).
        enriched = sendable.join(results, on=TEXT_KEY, how="inner")
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


def staged(plan: PlanRef, folder: str, shard: int) -> str:
    return storage.join(plan.staging, folder, f"part-{shard:05d}.parquet")


def write_shard(
    plan: PlanRef,
    params: EnrichParams,
    shard: int,
    collected: list[CollectRef],
    enriched_at: datetime,
) -> WriteRef:
    """Stage a shard's enriched and rejected rows, its checks frame and its row ids."""
    if not storage.exists(plan.rows_uri(shard)):  # no row hashed into this shard
        return WriteRef(shard=shard, enriched_rows=0, rejected_rows=0)
    rows = storage.scan_parquet(plan.rows_uri(shard)).collect()
    results, failed = merge_attempts(collected)
    enriched, rejected = enrich_rows(rows, results, failed, params, enriched_at)
    enriched_uri = checks_uri = rejected_uri = None
    if enriched.height:
        enriched_uri = staged(plan, "enriched", shard)
        storage.write_parquet(enriched.to_arrow(), enriched_uri)
        checks_uri = staged(plan, "checks", shard)
        checks = derive(params.kind, enriched, params.id_column)
        storage.write_parquet(checks.to_arrow(), checks_uri)
    if rejected.height:
        rejected_uri = staged(plan, "rejected", shard)
        storage.write_parquet(rejected.to_arrow(), rejected_uri)
    ids = pl.concat(
        [
            frame.select(pl.col(params.id_column).alias("id"), pl.lit(flag).alias("_rejected"))
            for frame, flag in ((enriched, False), (rejected, True))
            if frame.height
        ],
        how="diagonal_relaxed",
    )
    ids_uri = staged(plan, "ids", shard)
    storage.write_parquet(ids.to_arrow(), ids_uri)
    by_reason = (
        dict(rejected["reject_reason"].value_counts().iter_rows()) if rejected.height else {}
    )
    return WriteRef(
        shard=shard,
        enriched_uri=enriched_uri,
        rejected_uri=rejected_uri,
        checks_uri=checks_uri,
        ids_uri=ids_uri,
        enriched_rows=enriched.height,
        rejected_rows=rejected.height,
        rejected_by_reason=by_reason,
    )


@task(name="write")
def write_shard_task(
    plan: PlanRef,
    params: EnrichParams,
    shard: int,
    collected: list[CollectRef],
    enriched_at: datetime,
) -> WriteRef:
    return write_shard(plan, params, shard, collected, enriched_at)
