"""embeddings: one vector per text through /v1/embeddings.

Published column ``embedding``: ``FixedSizeList(float32, dim)`` (1024 for mistral-embed). The gate
sees each vector's length, count of non-finite values and L2 norm, computed with numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from kinds.base import Column, Kind, Packing, json_body
from kinds.insight import Insight, histogram

if TYPE_CHECKING:
    from kinds.insight import PublishedRows
    from schemas.params import EnrichParams, KindOptions

KNOWN_DIMENSIONS = {"mistral-embed": 1024, "codestral-embed": 1536}
SCANNED_ROWS = 100_000  # the insight reads at most this many vectors
SAMPLES = 3  # rows whose nearest neighbours the insight shows
NEIGHBOURS = 3
SHOWN_CHARACTERS = 80


class Embeddings(Kind):
    name = "embeddings"
    summary = "a vector per text (/v1/embeddings)"
    options_shown = ("model", "output_dimension")
    endpoint = "/v1/embeddings"
    suite = "embeddings"
    default_model = "mistral-embed"
    packing = Packing()
    vector_column = "embedding"
    columns = (
        Column(
            "embedding",
            "FixedSizeList(float32, dim)",
            "the text's embedding: dim float32 values of L2 norm 1; dim is "
            + ", ".join(f"{n} for {m}" for m, n in KNOWN_DIMENSIONS.items())
            + ", or options.output_dimension",
        ),
    )

    def result_options(self, options: KindOptions) -> dict[str, Any]:
        if options.output_dimension is None:
            return {}
        return {"output_dimension": options.output_dimension}

    def output_names(self, options: KindOptions) -> list[str]:
        return ["embedding"]

    def describe_columns(self, names: list[str], options: KindOptions) -> dict[str, str]:
        if "embedding" not in names:
            return {}
        dimension = self._dimension(options)
        values = "float32 values" if dimension is None else f"{dimension} float32 values"
        return {
            "embedding": f"the text's embedding by {self.model(options)}: {values} of L2 norm 1"
        }

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
        return self._dimension(params.options)

    def _dimension(self, options: KindOptions) -> int | None:
        if options.output_dimension is not None:
            return options.output_dimension
        return KNOWN_DIMENSIONS.get(self.model(options).removesuffix("-latest"))

    def insight(self, rows: PublishedRows, params: EnrichParams) -> list[Insight]:
        columns = [params.id_column, params.text_column, "embedding"]
        shown = self.input.token_text(pl.col(params.text_column))
        search = NeighbourSearch()
        norms = []
        for read in rows.batches(columns, SCANNED_ROWS):
            batch = read.filter(pl.col("embedding").is_not_null())
            if batch.height:
                labels = batch.select(pl.col(params.id_column).cast(pl.String), _shortened(shown))
                norms.append(search.add(_matrix(batch["embedding"]), labels.rows()))
        if not norms:
            return []
        norm = np.concatenate(norms)
        scanned = (
            f"the first {SCANNED_ROWS:,} rows of the partition"
            if len(norm) >= SCANNED_ROWS
            else f"all {len(norm):,} rows"
        )
        summary = pl.DataFrame(
            {
                "rows read": [len(norm)],
                "dimension": [search.dimension],
                "norm min": [round(float(norm.min()), 8)],
                "norm mean": [round(float(norm.mean()), 8)],
                "norm max": [round(float(norm.max()), 8)],
            }
        )
        norm_frame = pl.DataFrame({"norm": norm}).lazy()
        bounds = (float(norm.min()), float(norm.max()))
        chart = histogram(norm_frame, pl.col("norm"), bounds, "L2 norm of each vector", "norm")
        return [
            Insight("Vectors", summary, note=f"over {scanned}", chart=chart),
            Insight(
                f"Nearest neighbours of {SAMPLES} sample rows",
                search.table(),
                note=f"cosine similarity, among {scanned}; the samples are spread over the "
                "first rows read",
            ),
        ]


class NeighbourSearch:
    """The nearest rows of a few sample rows by cosine similarity, one batch of vectors at a
    time: the samples come from the first batch, and only each sample's best ``NEIGHBOURS``
    (similarity, row, id, text) are kept between batches."""

    def __init__(self) -> None:
        self.dimension = 0
        self.rows = 0  # rows seen so far
        self.samples: list[tuple[int, tuple[str, str]]] = []  # (row, (id, text))
        self._sample_vectors: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        self._best: list[list[tuple[float, int, tuple[str, str]]]] = []

    def add(self, vectors: np.ndarray, labels: list[tuple[str, str]]) -> np.ndarray:
        """Take a batch: ``vectors`` (rows x dimension) and each row's (id, text); returns the
        batch's L2 norms."""
        norms: np.ndarray = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            # float32 throughout: a 4-decimal similarity needs no more, and a batch stays small.
            unit = vectors / np.where(norms > 0, norms, np.nan).astype(np.float32)[:, None]
        if not self.samples:
            self.dimension = vectors.shape[1]
            picks = sorted({len(labels) * i // SAMPLES for i in range(SAMPLES)})
            self.samples = [(p, labels[p]) for p in picks]
            self._sample_vectors = unit[picks]
            self._best = [[] for _ in picks]
        similarity = np.nan_to_num(unit @ self._sample_vectors.T, nan=-np.inf)
        for j, (row, _) in enumerate(self.samples):
            column = similarity[:, j]
            if self.rows <= row < self.rows + len(labels):
                column[row - self.rows] = -np.inf  # a row is not its own neighbour
            top = np.argsort(-column, kind="stable")[:NEIGHBOURS]
            found = [(float(column[i]), self.rows + int(i), labels[i]) for i in top]
            best = sorted(self._best[j] + found, key=lambda f: (-f[0], f[1]))
            self._best[j] = [f for f in best if f[0] > -np.inf][:NEIGHBOURS]
        self.rows += len(labels)
        return norms

    def table(self) -> pl.DataFrame:
        """A row per (sample, neighbour): ids, texts, rank and similarity; a sample is named on
        its first neighbour's row only, so the table reads as groups."""
        lines = [
            {
                "sample id": sample_id if rank == 1 else None,
                "sample text": sample_text if rank == 1 else None,
                "rank": rank,
                "neighbour id": neighbour_id,
                "neighbour text": neighbour_text,
                "cosine": round(similarity, 4),
            }
            for (_, (sample_id, sample_text)), best in zip(self.samples, self._best, strict=True)
            for rank, (similarity, _, (neighbour_id, neighbour_text)) in enumerate(best, 1)
        ]
        schema = {
            "sample id": pl.String,
            "sample text": pl.String,
            "rank": pl.Int64,
            "neighbour id": pl.String,
            "neighbour text": pl.String,
            "cosine": pl.Float64,
        }
        return pl.DataFrame(lines, schema=schema)


def _matrix(column: pl.Series) -> np.ndarray:
    """The vectors as a (rows x dimension) array; published vectors all have one length."""
    if isinstance(column.dtype, pl.List):
        width = column.list.len().max()
        column = column.list.to_array(width if isinstance(width, int) else 0)
    return column.to_numpy().reshape(len(column), -1)


def _shortened(text: pl.Expr) -> pl.Expr:
    """The first characters of a text, on one line."""
    flat = text.str.replace_all(r"\s+", " ").str.strip_chars()
    return (
        pl.when(flat.str.len_chars() > SHOWN_CHARACTERS)
        .then(flat.str.slice(0, SHOWN_CHARACTERS - 1) + "…")
        .otherwise(flat)
    )


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
