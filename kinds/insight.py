"""What a kind's ``insight`` returns, and the lazy counts several kinds share.

An insight is a small titled table about a published partition's results (value counts, rates,
quantiles, a sample), with an optional chart, computed without loading the partition whole: the
rows come through ``PublishedRows``, lazily or a few thousand at a time. Rendering them (markdown,
a PNG) is the pipeline's business; a kind only says what is worth looking at.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import polars as pl

TOP_VALUES = 10  # values listed per column; the rest share one row
NULL_VALUE = "(null)"
HISTOGRAM_BINS = 20


class PublishedRows(Protocol):
    """A published partition, read without loading it whole."""

    def scan(self) -> pl.LazyFrame:
        """Every column, lazily: select the columns you need, collect with the streaming
        engine."""
        ...

    def batches(self, columns: list[str], limit: int) -> Iterator[pl.DataFrame]:
        """``columns`` of the partition's first ``limit`` rows, in order, a few thousand rows at
        a time."""
        ...


@dataclass(frozen=True)
class Chart:
    """A picture of one insight: a bar per label, or a histogram when ``edges`` (one more than
    ``counts``) bound its bins."""

    title: str
    x_label: str
    counts: tuple[int, ...]
    labels: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()


@dataclass(frozen=True)
class Insight:
    """One titled table about a partition's results; ``note`` says what it covers when that is
    not plain (a sample, a cap on the rows read)."""

    title: str
    table: pl.DataFrame
    note: str = ""
    chart: Chart | None = None


def value_counts(
    frame: pl.LazyFrame, column: str, *, explode: bool = False, known: tuple[str, ...] = ()
) -> pl.DataFrame:
    """``value`` (as text; nulls as ``(null)``), ``rows`` and ``share`` (% of the counted
    values) of ``column``'s most common values, most common first, then one row for every other
    value together. ``explode`` counts a list column's items; ``known`` values never seen are
    listed with 0. Streams the one column; the result has at most ``TOP_VALUES`` + 1 rows beyond
    ``known``."""
    values = frame.select(pl.col(column))
    if explode:
        values = values.explode(column)
    counts = (
        values.group_by(column)
        .agg(pl.len().cast(pl.Int64).alias("rows"))
        .select(pl.col(column).cast(pl.String).fill_null(NULL_VALUE).alias("value"), "rows")
        .collect(engine="streaming")
    )
    missing = [v for v in known if v not in set(counts["value"])]
    counts = pl.concat(
        [counts, pl.DataFrame({"value": missing, "rows": [0] * len(missing)}, schema=counts.schema)]
    ).sort(["rows", "value"], descending=[True, False])
    top = max(TOP_VALUES, len(known))
    head, rest = counts.head(top), counts.slice(top)
    if rest.height:
        other = f"(other {rest.height:,} values)"
        head = pl.concat([head, pl.DataFrame({"value": [other], "rows": [rest["rows"].sum()]})])
    total = counts["rows"].sum()
    return head.with_columns(
        (100 * pl.col("rows") / total if total else pl.lit(0.0)).round(1).alias("share")
    )


def bars(title: str, counts: pl.DataFrame) -> Chart:
    """A bar per row of ``value_counts``."""
    return Chart(
        title=title,
        x_label="value",
        counts=tuple(counts["rows"].to_list()),
        labels=tuple(counts["value"].to_list()),
    )


def histogram(
    frame: pl.LazyFrame,
    value: pl.Expr,
    bounds: tuple[float, float],
    title: str,
    x_label: str,
) -> Chart:
    """How many of ``value``'s non-null values fall in each of ``HISTOGRAM_BINS`` equal bins
    between ``bounds`` (values outside go to the first or last bin), counted lazily."""
    low, high = bounds
    if not high > low:  # every value alike: a narrow range around it
        low, high = low - 1e-6, low + 1e-6
    width = (high - low) / HISTOGRAM_BINS
    index = ((value - low) / width).floor().clip(0, HISTOGRAM_BINS - 1).cast(pl.Int64)
    found = (
        frame.select(index.alias("bin"))
        .drop_nulls()
        .group_by("bin")
        .agg(pl.len().alias("rows"))
        .collect(engine="streaming")
    )
    counts = [0] * HISTOGRAM_BINS
    for bin_, rows in found.iter_rows():
        counts[bin_] = rows
    edges = tuple(low + i * width for i in range(HISTOGRAM_BINS + 1))
    return Chart(title=title, x_label=x_label, counts=tuple(counts), edges=edges)
