"""embeddings: one vector per text through /v1/embeddings.

Published column ``embedding``: ``FixedSizeList(float32, dim)`` (1024 for mistral-embed). The gate
sees each vector's length, count of non-finite values and L2 norm, computed with numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from kinds.base import Kind, Packing, json_body

if TYPE_CHECKING:
    from schemas.params import EnrichParams, KindOptions

KNOWN_DIMENSIONS = {"mistral-embed": 1024, "codestral-embed": 1536}


class Embeddings(Kind):
    name = "embeddings"
    endpoint = "/v1/embeddings"
    suite = "embeddings"
    default_model = "mistral-embed"
    packing = Packing()
    vector_column = "embedding"

    def check(self, options: KindOptions) -> None:
        pass  # output_dimension is this kind's own option

    def result_options(self, options: KindOptions) -> dict[str, Any]:
        if options.output_dimension is None:
            return {}
        return {"output_dimension": options.output_dimension}

    def output_names(self, options: KindOptions) -> list[str]:
        return ["embedding"]

    def body(self, params: EnrichParams, inputs: pl.Expr) -> pl.Expr:
        fields = [inputs.alias("input")]
        if params.options.output_dimension is not None:
            fields.append(pl.lit(params.options.output_dimension).alias("output_dimension"))
        return json_body(*fields)

    def output_schema(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"data": pl.List(pl.Struct({"embedding": pl.List(pl.Float32), "index": pl.Int64}))}

    def items(self, body: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
        return (
            frame.select("custom_id", body.struct.field("data").alias("item"))
            .explode("item")
            .select(
                "custom_id",
                pl.col("item").struct.field("index").alias("position"),
                pl.col("item").struct.field("embedding").alias("embedding"),
            )
        )

    def results(self, items: pl.DataFrame, options: KindOptions) -> pl.DataFrame:
        return items

    def checks(
        self, enriched: pl.DataFrame, ids: pl.DataFrame, options: KindOptions
    ) -> pl.DataFrame:
        return pl.concat([ids, vector_stats(enriched["embedding"])], how="horizontal")

    def suite_parameters(
        self, params: EnrichParams, columns: list[str], checks: pl.DataFrame
    ) -> dict[str, Any]:
        dimension = self.vector_dimension(params)
        if dimension is None:  # an unknown model: hold every vector to the most common length
            lengths = checks["embedding_length"].drop_nulls().cast(pl.Int64)
            dimension = int(lengths.mode().sort()[0]) if lengths.len() else 0
        return {
            "dimension": dimension,
            "min_norm": 1.0 - params.norm_tolerance,
            "max_norm": 1.0 + params.norm_tolerance,
        }

    def vector_dimension(self, params: EnrichParams) -> int | None:
        if params.options.output_dimension is not None:
            return params.options.output_dimension
        return KNOWN_DIMENSIONS.get(params.model.removesuffix("-latest"))


def vector_stats(column: pl.Series) -> pl.DataFrame:
    """Length, non-finite count and L2 norm of each vector, with numpy on the flat values."""
    if isinstance(column.dtype, pl.List) and column.null_count() == 0 and len(column):
        widths = column.list.len()
        width = widths.min()
        if isinstance(width, int) and width > 0 and width == widths.max():
            # The usual case, every vector as long: a fixed-width view, no float64 copies.
            column = column.list.to_array(width)
    if isinstance(column.dtype, pl.Array):
        lengths, squares, nonfinite = _fixed_width_stats(column)
    else:
        lengths, squares, nonfinite = _ragged_stats(column)
    with np.errstate(invalid="ignore"):
        norms = np.sqrt(squares)
    return pl.DataFrame(
        {
            "embedding_length": pl.Series(lengths, dtype=pl.Float64).fill_nan(None),
            "embedding_nonfinite": nonfinite,
            "embedding_norm": pl.Series(norms, dtype=pl.Float64).fill_nan(None),
        }
    )


def _fixed_width_stats(column: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    assert isinstance(column.dtype, pl.Array)
    width = column.dtype.size
    values = column.to_numpy().reshape(len(column), width)  # a view: no copy of the vectors
    lengths = np.where(column.is_null().to_numpy(), np.nan, width)
    squares = np.einsum("ij,ij->i", values, values, dtype=np.float64)
    # A NaN or inf makes the row's sum of squares non-finite: count values in those rows only.
    nonfinite = np.zeros(len(column), dtype=np.int64)
    suspect = np.flatnonzero(~np.isfinite(squares))
    if suspect.size:
        nonfinite[suspect] = (~np.isfinite(values[suspect])).sum(axis=1)
    return lengths, squares, nonfinite


def _ragged_stats(column: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths_series = column.list.len()
    lengths = lengths_series.cast(pl.Float64).to_numpy()
    counts = lengths_series.fill_null(0).to_numpy().astype(np.int64)
    flat = column.explode().drop_nulls().to_numpy().astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = counts > 0
    squares = np.zeros(len(column))
    nonfinite = np.zeros(len(column), dtype=np.int64)
    if flat.size:
        squares[nonempty] = np.add.reduceat(flat * flat, starts[nonempty])
        bad = (~np.isfinite(flat)).astype(np.int64)
        nonfinite[nonempty] = np.add.reduceat(bad, starts[nonempty])
    return lengths, squares, nonfinite
