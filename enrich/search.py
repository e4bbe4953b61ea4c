"""Similarity search over a published embeddings table: the k rows whose vectors are nearest
(cosine) to a query text's vector or to a row's own vector.

The table is scanned one row group at a time (the publisher writes one per staged shard), each
in batches of ``BATCH_ROWS`` rows, and only the id, the vectors and the columns ``where`` needs
are read: the vectors are a zero-copy (rows x dimension) float32 view of the Arrow buffer, scored
with one matrix product per batch, and a running top k (``np.argpartition``) is all that stays
between batches. Memory is bounded by one row group, whatever the table's size (batches, rather
than ``read_row_group``, because pyarrow holds a whole group's vectors four times over while it
assembles them). The ``columns`` asked for are read at the end, for the k winners only.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import kinds
from enrich.tables import (
    AnalystError,
    PublishedTable,
    open_parquet,
    with_storage_credentials,
)
from schemas.tables import PARTITION_COLUMN

SCORE = "score"
BATCH_ROWS = 4_096  # vectors scored at a time: 16 MB of 1024-dimension float32
# Options of a manifest that are not request fields of the query call.
_IDENTITY = ("kind", "model")


class NotEmbeddingsError(AnalystError):
    """The table's kind publishes no vectors."""


class UnknownIdError(AnalystError):
    """The query id is in none of the partitions searched."""


class BadQueryError(AnalystError):
    """The question is malformed: text and id, a bad ``where``, an unknown column, k < 1."""


class ModelVersionWarning(UserWarning):
    """The query vector and the table's vectors come from different model versions."""


@dataclass(frozen=True)
class Source:
    """One partition's data file, open (its footer read)."""

    partition: str
    file: pq.ParquetFile


def similar(
    table: str,
    *,
    text: str | None = None,
    id: Any = None,
    k: int = 10,
    where: str | None = None,
    columns: Sequence[str] = (),
    partitions: Iterable[str] | None = None,
    storage_credentials: str | None = None,
    id_column: str | None = None,
    work: str | None = None,
) -> pl.DataFrame:
    """The ``k`` rows of the embeddings table at ``table`` nearest to the query, by cosine
    similarity: the table's id column, ``score`` (cosine, 1 is the same direction),
    ``partition``, then ``columns``, best first (ties in table order).

    The query is ``text`` or ``id``, not both:

    * ``text`` is embedded with the table's own model and options (from its manifests), by one
      direct ``/v1/embeddings`` call whose vector is cached locally (``ENRICH_QUERY_CACHE``):
      the same text again makes no call. If the answer names a model version other than those
      that embedded the table's rows, a ``ModelVersionWarning`` says so (vectors of different
      versions are not comparable).
    * ``id`` takes that row's own vector (no call), from the latest partition holding it. The
      row itself is **not excluded**: it comes first with a score of 1.0 (as does any row with
      the same text); ask ``k + 1`` and drop it if you want neighbours only.

    ``where`` is a SQL condition over the table's columns (``"team = 'billing' AND NOT
    flagged"``, ``partition`` included), applied before scoring. ``partitions`` restricts the
    search (default: every published partition; their vectors must come from one model).
    ``storage_credentials`` names a prefect-aws ``AwsCredentials`` block for ``s3://`` (default:
    the ``AWS_*`` variables); ``id_column`` and ``work`` are needed only for tables whose
    manifests do not record the id column, or live outside the default work root.
    """
    if (text is None) == (id is None):
        raise BadQueryError(
            "give a query text or a row id, not " + ("both" if text is not None else "neither")
        )
    if k < 1:
        raise BadQueryError(f"k must be at least 1 (got {k})")

    def search() -> pl.DataFrame:
        published = PublishedTable.open(table, partitions=partitions, work=work)
        vector_column = _vector_column(published)
        ids = published.id_column(id_column)
        sources = [Source(p.value, open_parquet(p.data)) for p in published.with_data if p.data]
        schema = _schema(sources, published.uri)
        shown = [c for c in dict.fromkeys(columns) if c not in (ids, "score", PARTITION_COLUMN)]
        unknown = [c for c in (ids, vector_column, *shown) if c not in schema]
        if unknown:
            raise BadQueryError(
                f"{published.uri} has no column {', '.join(map(repr, unknown))}; its columns "
                f"are: {', '.join(schema)}"
            )
        condition = Where.parse(where, schema) if where else None
        if text is not None:
            query = _text_vector(published, text)
        else:
            query = vector_of(sources, id, ids, vector_column, schema[ids])
        hits = scan(sources, query, k, ids=ids, vector=vector_column, where=condition)
        return hits.frame(sources, ids, shown)

    return with_storage_credentials(storage_credentials, search)


# The query vector -------------------------------------------------------------------------------


def _vector_column(published: PublishedTable) -> str:
    kind = published.kind()
    vector = kinds.get(kind).vector_column if kind in kinds.REGISTRY else None
    if vector is None:
        with_vectors = sorted(k.name for k in kinds.REGISTRY.values() if k.vector_column)
        what = f"a {kind} table" if kind else "not an enrich table (no manifest names its kind)"
        raise NotEmbeddingsError(
            f"{published.uri} is {what}: similarity search needs a table of vectors "
            f"({', '.join(with_vectors)})."
        )
    return vector


def _text_vector(published: PublishedTable, text: str) -> np.ndarray:
    """The query text's vector from the table's model and options, with a warning when the
    answering version is not the one (or not the only one) that embedded the table."""
    from enrich.query import QuerySettings, embed_query  # the Mistral SDK, for text queries only

    model = str(published.agreed("model"))
    options = published.agreed("options", required=False) or {}
    fields = {name: value for name, value in options.items() if name not in _IDENTITY}
    versions = published.model_versions()
    query = embed_query(text, model, fields, QuerySettings(), versions=set(versions))
    others = sorted(v for v in versions if v != query.answered_by)
    if others:
        warnings.warn(
            f"the query text was embedded by {query.answered_by}, but rows of {published.uri} "
            f"were embedded by {', '.join(others)} ({sum(versions[v] for v in others):,} rows): "
            "vectors of different model versions are not comparable, so their scores mean "
            "little. Re-enrich the table (cache_mode=refresh) to bring it to one version.",
            ModelVersionWarning,
            stacklevel=2,
        )
    return query.vector


def vector_of(
    sources: Sequence[Source], value: Any, id_column: str, vector: str, id_type: pa.DataType
) -> np.ndarray:
    """The vector of the row whose id is ``value``, from the latest partition holding it; read
    a row group at a time (ids first, the vectors of the one group holding it)."""
    try:
        wanted = pa.scalar(value).cast(id_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise UnknownIdError(
            f"{value!r} cannot be an id: the id column {id_column!r} holds {id_type}"
        ) from exc
    for source in reversed(sources):
        for group in range(source.file.num_row_groups):
            found = pc.index(source.file.read_row_group(group, [id_column]).column(0), wanted)
            if found.as_py() >= 0:
                return _vector_at(source, group, found.as_py(), vector, value)
    searched = ", ".join(s.partition for s in sources)
    raise UnknownIdError(f"no row has id {value!r} in partition(s) {searched}")


def _vector_at(source: Source, group: int, row: int, vector: str, value: Any) -> np.ndarray:
    """The vector of row ``row`` of row group ``group``."""
    vectors, valid = matrix(rows_of(source.file, group, np.array([row]), [vector]).column(0))
    if not valid[0]:
        raise UnknownIdError(
            f"the row with id {value!r} in partition {source.partition} has no vector"
        )
    found: np.ndarray = vectors[0].copy()
    return found


def batches(file: pq.ParquetFile, group: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Row group ``group``'s ``columns``, ``BATCH_ROWS`` rows at a time. With the file opened
    unbuffered (``open_parquet``) this holds about one row group's vectors at most; a whole
    ``read_row_group`` holds four times that while it assembles them (356 MB for a 20,000-row
    group of 1024-dimension vectors, against 88 MB)."""
    return iter(file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns))


def rows_of(file: pq.ParquetFile, group: int, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows ``rows`` (numbers within row group ``group``, in that order) of ``columns``, taken
    from the group's batches as they are read."""
    wanted = np.sort(rows)
    pieces = []
    offset = 0
    for batch in batches(file, group, columns):
        inside = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)]
        if len(inside):
            pieces.append(batch.take(pa.array(inside - offset)))
        offset += batch.num_rows
    found = pa.Table.from_batches(
        pieces, schema=file.schema_arrow.empty_table().select(columns).schema
    )
    return found.take(pa.array(np.searchsorted(wanted, rows)))


# The scan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """A SQL condition over the table's columns, evaluated one batch of rows at a time."""

    text: str
    expression: pl.Expr
    columns: tuple[str, ...]  # the file columns it reads (``partition`` is not one)
    types: tuple[pa.DataType, ...]  # theirs: a partition published without one reads nulls

    @classmethod
    def parse(cls, text: str, schema: dict[str, pa.DataType]) -> Where:
        try:
            expression = pl.sql_expr(text)
            names = expression.meta.root_names()
        except pl.exceptions.PolarsError as exc:
            raise BadQueryError(
                f"the where condition {text!r} is not SQL polars reads: {exc}"
            ) from exc
        unknown = [n for n in names if n not in schema and n != PARTITION_COLUMN]
        if unknown:
            raise BadQueryError(
                f"the where condition {text!r} names no column {', '.join(map(repr, unknown))}; "
                f"the columns are: {', '.join([*schema, PARTITION_COLUMN])}"
            )
        read = tuple(dict.fromkeys(n for n in names if n != PARTITION_COLUMN))
        return cls(text, expression, read, tuple(schema[n] for n in read))

    def mask(self, rows: pa.RecordBatch, partition: str) -> np.ndarray:
        """Which of ``rows`` (holding at least ``columns``) meet the condition (a null answer
        does not)."""
        arrays = [
            rows.column(name) if name in rows.schema.names else pa.nulls(rows.num_rows, kind)
            for name, kind in zip(self.columns, self.types, strict=True)
        ]
        read = pl.from_arrow(pa.table(arrays, names=list(self.columns)))
        assert isinstance(read, pl.DataFrame)
        partitions = pl.repeat(partition, rows.num_rows, eager=True).alias(PARTITION_COLUMN)
        frame = read.with_columns(partitions) if read.width else partitions.to_frame()
        try:
            kept = frame.select(self.expression.fill_null(False)).to_series()
        except pl.exceptions.PolarsError as exc:
            raise BadQueryError(f"the where condition {self.text!r} failed: {exc}") from exc
        if kept.dtype != pl.Boolean:
            raise BadQueryError(
                f"the where condition {self.text!r} is not a condition (it gives {kept.dtype} "
                "values): compare, e.g. `team = 'billing'`"
            )
        if kept.len() != rows.num_rows:  # a condition on no column: the same for every row
            return np.full(rows.num_rows, bool(kept[0]))
        return kept.to_numpy()


def matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors as a (rows x dimension) float32 array — a view of the Arrow buffer, no copy,
    when they are float32 already — and which rows hold one (not null)."""
    array = column
    if isinstance(column, pa.ChunkedArray):
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(array, pa.ListArray | pa.LargeListArray):  # not written so; tolerated
        lengths = pc.list_value_length(array).drop_null()
        if len(lengths) and pc.min_max(lengths)["min"] != pc.min_max(lengths)["max"]:
            raise AnalystError("the vectors of one row group have different lengths")
        size = lengths[0].as_py() if len(lengths) else 0
        array = pc.fill_null(array, [0.0] * size).cast(pa.list_(array.type.value_type, size))
    if not isinstance(array, pa.FixedSizeListArray):
        raise NotEmbeddingsError(f"the vector column holds {array.type}, not vectors")
    size = array.type.list_size
    values = array.values.slice(array.offset * size, len(array) * size)
    flat = values.to_numpy(zero_copy_only=False)  # a view: a float buffer without nulls
    vectors = flat.reshape(len(array), size).astype(np.float32, copy=False)
    valid = np.ones(len(array), dtype=bool) if array.null_count == 0 else array.is_valid()
    return vectors, np.asarray(valid, dtype=bool)


@dataclass
class Hits:
    """The best ``k`` rows seen so far: score, where each row is (source, row group, row) and
    its id. Between groups only these stay in memory."""

    k: int
    scores: np.ndarray
    places: np.ndarray  # (n, 3) int64: source, row group, row
    ids: pa.Array

    @classmethod
    def empty(cls, k: int, id_type: pa.DataType) -> Hits:
        places = np.zeros((0, 3), dtype=np.int64)
        return cls(k, np.zeros(0, dtype=np.float32), places, pa.array([], type=id_type))

    def offer(
        self,
        scores: np.ndarray,
        rows: np.ndarray,
        ids: pa.Array,
        source: int,
        group: int,
        offset: int = 0,
    ) -> None:
        """Keep the best ``k`` of those held and ``scores``: the scores of rows ``rows`` of a
        batch whose ids are ``ids`` (the whole batch's), read at row ``offset`` of row group
        ``group`` of source ``source``."""
        if len(scores) > self.k:
            best = np.argpartition(-scores, self.k - 1)[: self.k]
            scores, rows = scores[best], rows[best]
        ids = ids.take(pa.array(rows)).cast(self.ids.type)  # partitions may differ slightly
        places = np.column_stack(
            [np.full(len(rows), source), np.full(len(rows), group), rows + offset]
        ).astype(np.int64)
        self.scores = np.concatenate([self.scores, scores])
        self.places = np.concatenate([self.places, places])
        self.ids = pa.concat_arrays([self.ids, ids])
        if len(self.scores) > self.k:
            best = np.argpartition(-self.scores, self.k - 1)[: self.k]
            self.scores, self.places = self.scores[best], self.places[best]
            self.ids = self.ids.take(best)

    def ranked(self) -> np.ndarray:
        """Positions of the hits held, best first; ties in table order."""
        keys = (self.places[:, 2], self.places[:, 1], self.places[:, 0], -self.scores)
        order: np.ndarray = np.lexsort(keys)
        return order

    def frame(self, sources: Sequence[Source], id_column: str, columns: list[str]) -> pl.DataFrame:
        """The hits, best first: id, score, partition, then ``columns``, read now for the hits
        only (one read of those columns per row group holding a hit)."""
        order = self.ranked()
        places = self.places[order]
        picked = pa.table(
            {
                id_column: self.ids.take(order),
                SCORE: pa.array(self.scores[order].astype(np.float64)),
                PARTITION_COLUMN: pa.array(
                    [sources[s].partition for s in places[:, 0]], pa.string()
                ),
            }
        )
        if columns:
            picked = _with_columns(picked, places, sources, columns)
        frame = pl.from_arrow(picked)
        assert isinstance(frame, pl.DataFrame)
        return frame


def scan(
    sources: Sequence[Source],
    query: np.ndarray,
    k: int,
    *,
    ids: str,
    vector: str,
    where: Where | None = None,
) -> Hits:
    """The ``k`` rows of ``sources`` nearest to ``query`` by cosine similarity, reading one
    row group at a time: the id, the vectors and the columns ``where`` reads."""
    query = np.asarray(query, dtype=np.float32)
    length = float(np.linalg.norm(query))
    if not np.isfinite(length) or length == 0:
        raise BadQueryError("the query vector is zero or not finite: it has no direction")
    unit = query / np.float32(length)
    id_type = _schema(sources, "the table")[ids]
    hits = Hits.empty(k, id_type)
    wanted = list(dict.fromkeys([ids, vector, *(where.columns if where else ())]))
    for number, source in enumerate(sources):
        for group in range(source.file.num_row_groups):
            offset = 0
            for batch in batches(source.file, group, wanted):
                vectors, valid = matrix(batch.column(vector))
                if vectors.shape[1] != len(unit):
                    raise BadQueryError(
                        f"the query vector has {len(unit)} dimensions, the vectors of partition "
                        f"{source.partition} have {vectors.shape[1]}"
                    )
                if where is not None:
                    valid &= where.mask(batch, source.partition)
                rows = np.flatnonzero(valid)
                if len(rows) < len(valid):
                    vectors = vectors[rows]  # the rows that count, copied: at most one batch
                scores = _cosine(vectors, unit)
                finite = np.isfinite(scores)
                if not finite.all():  # zero vectors have no direction: never a hit
                    rows, scores = rows[finite], scores[finite]
                hits.offer(scores, rows, batch.column(ids), number, group, offset)
                offset += batch.num_rows
    return hits


def _cosine(vectors: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Each row's cosine with ``unit``: one matrix product, divided by the rows' norms."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores: np.ndarray = (vectors @ unit) / norms
    return scores


def _schema(sources: Sequence[Source], where: str) -> dict[str, pa.DataType]:
    """Every column of the partitions (the first type seen of each)."""
    if not sources:
        raise AnalystError(f"{where} has no published rows to search")
    schema: dict[str, pa.DataType] = {}
    for source in sources:
        for field in source.file.schema_arrow:
            schema.setdefault(field.name, field.type)
    return schema


def _with_columns(
    picked: pa.Table, places: np.ndarray, sources: Sequence[Source], columns: list[str]
) -> pa.Table:
    """``picked`` with ``columns`` of its rows (``places``), reading each row group holding a
    hit once, those columns only; a column a partition lacks is null there."""
    by_group: dict[tuple[int, int], list[int]] = defaultdict(list)
    for position, (source, group, _) in enumerate(places):
        by_group[int(source), int(group)].append(position)
    pieces, positions = [], []
    for (source, group), held in by_group.items():
        file = sources[source].file
        present = [c for c in columns if c in file.schema_arrow.names]
        if present:
            pieces.append(rows_of(file, group, places[held, 2], present))
        else:
            pieces.append(pa.table({columns[0]: pa.nulls(len(held))}))
        positions += held
    values = pa.concat_tables(pieces, promote_options="permissive")
    values = values.take(pa.array(np.argsort(positions)))
    for name in columns:
        column = values.column(name) if name in values.column_names else pa.nulls(len(picked))
        picked = picked.append_column(name, column)
    return picked
