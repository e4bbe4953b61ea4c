"""The version check between collecting and writing: which texts of a shard were answered by
an older version of the model than the current one, and the requests that send them again."""

from __future__ import annotations

import polars as pl
from prefect import task

from schemas.params import EnrichParams
from schemas.refs import CollectRef, PlanRef, ShardRef
from tasks import cache
from tasks.core import versions
from tasks.core.columns import BUCKET, MODEL_VERSION, TEXT_KEY
from tasks.edges import storage
from tasks.memory import on_shard_slot
from tasks.requests import follow_up


def final_versions(
    plan: PlanRef, params: EnrichParams, shard: int, collected: list[CollectRef]
) -> pl.DataFrame:
    """Each answered text of the shard (``_text_key``) and the version of the answer it will
    be published with: its latest attempt's, or the cache's for a text not sent."""
    fresh = [
        storage.read_parquet(c.results_uri, columns=[TEXT_KEY, MODEL_VERSION])
        for c in sorted(collected, key=lambda c: c.attempt)
        if c.results_rows and c.model_versions
    ]
    answered = (
        pl.concat(fresh).unique(TEXT_KEY, keep="last", maintain_order=True)
        if fresh
        else pl.DataFrame(schema={TEXT_KEY: pl.UInt64, MODEL_VERSION: pl.String})
    )
    if plan.hits_uri:
        from_cache = (  # sorted by bucket: row-group statistics skip the other shards' hits
            storage.scan_parquet(plan.hits_uri)
            .filter(pl.col(BUCKET) == shard)
            .select(TEXT_KEY, pl.col(cache.VERSION).alias(MODEL_VERSION))
            .collect()
        )
        from_cache = from_cache.join(answered, on=TEXT_KEY, how="anti")
        answered = pl.concat([answered, from_cache])
    unnamed = (pl.col(MODEL_VERSION) == cache.UNRECORDED) | pl.col(MODEL_VERSION).is_null()
    return answered.with_columns(
        pl.when(unnamed)
        .then(pl.lit(params.model))
        .otherwise(pl.col(MODEL_VERSION))
        .alias(MODEL_VERSION)
    )


@task(name="count-versions", task_run_name="count-versions · shard {shard}")
def count_versions(
    plan: PlanRef, params: EnrichParams, shard: int, collected: list[CollectRef]
) -> dict[str, int]:
    """Texts of the shard per answering version."""
    storage.use_credentials(params.storage_credentials)
    return versions.counts(final_versions(plan, params, shard, collected))


def resend_shard(
    plan: PlanRef,
    params: EnrichParams,
    shard: int,
    attempt: int,
    target: str,
    collected: list[CollectRef],
) -> ShardRef | None:
    """Requests for the shard's texts answered by another version than ``target`` (cached
    ones included): they are sent again, and their new answers replace the old."""
    storage.use_credentials(params.storage_credentials)
    stale = final_versions(plan, params, shard, collected).filter(pl.col(MODEL_VERSION) != target)
    if stale.height == 0:
        return None
    return follow_up(plan, params, shard, attempt, stale[TEXT_KEY])


build_resend_requests = task(
    name="build-resend-requests",
    task_run_name="build-resend-requests · shard {shard} · attempt {attempt}",
)(on_shard_slot(resend_shard))
