"""Write (to staging): each shard's rows joined to their results, the rows that could not be
enriched, and the narrow frames the validation gate checks.

Every input row lands in exactly one place — the enriched rows or the rejected rows — and the
write fails, naming ids, rather than drop one. Nothing here is visible to analysts: publishing
happens after validation (``tasks.publish``).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

import polars as pl
from prefect import task

from schemas.params import EnrichParams
from schemas.refs import CollectRef, PlanRef, WriteRef
from tasks import cache
from tasks.core import versions
from tasks.core.checks import derive
from tasks.core.columns import BUCKET, TEXT_KEY
from tasks.core.joins import cache_additions, enrich_rows
from tasks.core.layout import Staging
from tasks.edges import storage
from tasks.failpoints import failpoint
from tasks.memory import on_shard_slot


def cached_results(plan: PlanRef, shard: int) -> pl.DataFrame:
    """The shard's results copied out of the content cache (``tasks.cache.fetch``)."""
    if not plan.hits_uri or not storage.exists(Staging(plan.staging).cached(shard)):
        return pl.DataFrame()
    frame = storage.scan_parquet(Staging(plan.staging).cached(shard)).collect()
    return (
        frame.drop(cache.KEY_2, cache.TOKENS, BUCKET, strict=False)
        .rename({cache.KEY: TEXT_KEY})
        .with_columns(pl.lit("cache").alias("result_source"))
    )


def merge_attempts(
    collected: list[CollectRef], enriched_at: datetime
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Results of every attempt (a text answered twice, by a re-send after its model version
    changed, keeps its latest answer), and each failed text's last failure with its attempt
    count."""
    stamp = pl.lit(enriched_at).cast(pl.Datetime("us", "UTC")).alias("enriched_at")
    results = [
        storage.read_parquet(c.results_uri).with_columns(
            stamp, pl.lit("batch").alias("result_source")
        )
        for c in sorted(collected, key=lambda c: c.attempt)
    ]
    failures = [
        storage.read_parquet(c.failures_uri).with_columns(pl.lit(c.attempt).alias("_attempt"))
        for c in collected
    ]
    ok = pl.concat(results, how="diagonal_relaxed") if results else pl.DataFrame()
    if ok.height and ok[TEXT_KEY].is_duplicated().any():  # in attempt order: the last wins
        ok = ok.unique(TEXT_KEY, keep="last", maintain_order=True)
    failed = pl.concat(failures, how="diagonal_relaxed") if failures else pl.DataFrame()
    if failed.height:
        attempts = failed.group_by(TEXT_KEY).agg(pl.len().cast(pl.Int32).alias("attempts"))
        failed = failed.sort("_attempt").group_by(TEXT_KEY).last().join(attempts, on=TEXT_KEY)
        if ok.height:
            failed = failed.join(ok.select(TEXT_KEY), on=TEXT_KEY, how="anti")
    return ok, failed


def _here() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def write_shard(
    plan: PlanRef,
    params: EnrichParams,
    shard: int,
    collected: list[CollectRef],
    enriched_at: datetime,
) -> WriteRef:
    """Stage a shard's enriched and rejected rows, its checks frame and its row ids."""
    storage.use_credentials(params.storage_credentials)  # a task of its own, maybe on Dask
    if not storage.exists(Staging(plan.staging).rows(shard)):  # no row hashed into this shard
        return WriteRef(shard=shard, enriched_rows=0, rejected_rows=0, process=_here())
    rows = storage.scan_parquet(Staging(plan.staging).rows(shard)).collect()
    fresh, failed = merge_attempts(collected, enriched_at)
    cached = cached_results(plan, shard)
    if cached.height and fresh.height:  # a cached text re-sent for its model version
        cached = cached.join(fresh.select(TEXT_KEY), on=TEXT_KEY, how="anti")
    parts = [f for f in (fresh, cached) if f.height]
    results = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
    if cached.height and failed.height:  # a text is never both: the cache answered it
        failed = failed.join(cached.select(TEXT_KEY), on=TEXT_KEY, how="anti")
    enriched, rejected = enrich_rows(rows, results, failed, params, enriched_at)
    cache_add_uri, cache_add_rows = None, 0
    if plan.cache_folder and fresh.height:
        cache_add_uri = Staging(plan.staging).staged("cache-add", shard)
        additions = cache_additions(rows, fresh, params)
        storage.write_parquet(additions.to_arrow(), cache_add_uri)
        cache_add_rows = additions.height
    enriched_uri = checks_uri = rejected_uri = None
    if enriched.height:
        enriched_uri = Staging(plan.staging).staged("enriched", shard)
        storage.write_parquet(enriched.to_arrow(), enriched_uri)
        checks_uri = Staging(plan.staging).staged("checks", shard)
        checks = derive(params, enriched)
        storage.write_parquet(checks.to_arrow(), checks_uri)
        failpoint("write")
    if rejected.height:
        rejected_uri = Staging(plan.staging).staged("rejected", shard)
        storage.write_parquet(rejected.to_arrow(), rejected_uri)
    ids = pl.concat(
        [
            frame.select(pl.col(params.id_column).alias("id"), pl.lit(flag).alias("_rejected"))
            for frame, flag in ((enriched, False), (rejected, True))
            if frame.height
        ],
        how="diagonal_relaxed",
    )
    ids_uri = Staging(plan.staging).staged("ids", shard)
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
        cached_rows=int((enriched["result_source"] == "cache").sum()) if enriched.height else 0,
        model_versions=versions.counts(enriched),
        cache_add_uri=cache_add_uri,
        cache_add_rows=cache_add_rows,
        process=_here(),  # which process wrote it: the flow's, or a Dask worker
    )


write = task(name="write", task_run_name="write · shard {shard}")(on_shard_slot(write_shard))
