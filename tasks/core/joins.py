"""Joins: a shard's rows with their results and failures. Every input row lands in exactly one
place, the enriched rows or the rejected rows, or the join fails naming ids."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from schemas.params import EnrichParams
from schemas.tables import REJECTED
from tasks.core.columns import (
    BUCKET,
    CACHE_KEY,
    CACHE_KEY_2,
    CACHE_TOKENS,
    MODEL_VERSION,
    REJECT,
    TEXT_KEY,
    TEXT_KEY_2,
)
from tasks.core.errors import TerminalError


class LostRowsError(TerminalError):
    """A shard's rows do not add up: a bug, never retried; nothing is written for the shard."""


_INTERNAL = (TEXT_KEY, TEXT_KEY_2, REJECT, BUCKET)


_LINEAGE = (TEXT_KEY, "batch_job_id", "enriched_at", "result_source", "_tokens", MODEL_VERSION)


def answering_version(results: pl.DataFrame, params: EnrichParams) -> pl.Expr:
    """The version that answered each result; results from before versions were recorded
    (older cache entries) count as answered by the model the run asked for."""
    if MODEL_VERSION not in results.columns:
        return pl.lit(params.model).alias(MODEL_VERSION)
    return pl.col(MODEL_VERSION).fill_null(params.model).alias(MODEL_VERSION)


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
        result_columns = [c for c in results.columns if c not in _LINEAGE]
        enriched = enriched.select(
            *input_columns,
            *result_columns,
            pl.col("enriched_at").cast(pl.Datetime("us", "UTC")),
            pl.lit(params.model).alias("model"),
            answering_version(results, params),
            "batch_job_id",
            "result_source",
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
        raise LostRowsError(
            f"{rows.height - enriched.height - rejected.height} row(s) have neither a result nor "
            f"a recorded failure (e.g. ids {lost.to_list()}); nothing was written for this shard"
        )
    return enriched, rejected


def cache_additions(rows: pl.DataFrame, fresh: pl.DataFrame, params: EnrichParams) -> pl.DataFrame:
    """New results in the cache's shape: both keys, prompt tokens, results, lineage (the
    answering version included: the cache keys results by it)."""
    keys = rows.select(TEXT_KEY, TEXT_KEY_2).unique(TEXT_KEY)
    results = fresh.unique(TEXT_KEY, keep="first").join(keys, on=TEXT_KEY, how="inner")
    result_columns = [c for c in fresh.columns if c not in _LINEAGE]
    return results.select(
        pl.col(TEXT_KEY).alias(CACHE_KEY),
        pl.col(TEXT_KEY_2).alias(CACHE_KEY_2),
        pl.col("_tokens").cast(pl.Int64).alias(CACHE_TOKENS)
        if "_tokens" in fresh.columns
        else pl.lit(None, pl.Int64).alias(CACHE_TOKENS),
        *result_columns,
        "batch_job_id",
        pl.col("enriched_at").cast(pl.Datetime("us", "UTC")),
        answering_version(results, params),
    ).sort(CACHE_KEY)
