"""The benchmarks' input: unique, comment-like texts, written as one Parquet file."""

from __future__ import annotations

from pathlib import Path

import polars as pl

WORDS = ["parcel", "late", "great", "support", "refund", "broken", "fast", "order", "app"]


def make_input(work: Path, rows: int) -> pl.DataFrame:
    """``rows`` comments with an ``id``, a unique ``text`` and a ``segment``, at
    ``work/input.parquet``; returns the frame."""
    words = pl.lit(pl.Series(WORDS))
    frame = pl.DataFrame({"id": pl.int_range(rows, eager=True)}).with_columns(
        pl.format(
            "comment {} : the {} was {} and {}",
            pl.col("id"),
            words.get(pl.col("id") % 9),
            words.get((pl.col("id") // 9) % 9),
            words.get((pl.col("id") // 81) % 9),
        ).alias("text"),
        (pl.col("id") % 7).alias("segment"),
    )
    frame.write_parquet(work / "input.parquet")
    return frame
