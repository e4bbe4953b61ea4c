"""One view over several kinds enriched from the same input: embeddings, moderation and
classification of the same comments side by side, a row per comment and partition."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import polars as pl
import pyarrow as pa
from pydantic import ValidationError

import kinds
from enrich.tables import (
    LINEAGE,
    AnalystError,
    PublishedTable,
    TableMetadataError,
    with_storage_credentials,
)
from schemas.params import KindOptions
from schemas.tables import PARTITION_COLUMN
from tasks.core.layout import is_remote
from tasks.edges.settings import StorageSettings, storage_settings

JoinHow = Literal["left", "inner", "full"]


@dataclass(frozen=True)
class _Table:
    """One table of the view: where its files are, its columns (the union over its
    partitions, in order), its id column and its input columns (those before its results)."""

    name: str
    published: PublishedTable
    schema: pa.Schema
    id_column: str
    inputs: tuple[str, ...] | None  # None: its kind is not known here (an older manifest)


def read(
    tables: Mapping[str, str],
    *,
    partitions: Iterable[str] | None = None,
    how: JoinHow = "left",
    id: str | None = None,
    work: Mapping[str, str] | None = None,
    storage_credentials: str | None = None,
) -> pl.LazyFrame:
    """A lazy view joining the published tables ``tables`` (``{name: URI}``, all enriched from
    one input) on their id column and ``partition``: a row's values all come from the same
    partition of each table.

    Columns: the input columns once (from the first table), ``partition``, then each table's
    result columns under their own names — prefixed ``<name>_`` where two tables (or an input
    column) share a name — and each table's lineage columns (``model``, ``model_version``,
    ``enriched_at``, ``batch_job_id``, ``result_source``) prefixed ``<name>_``.

    ``how`` joins the other tables to the first one (``left``: every row of the first table,
    nulls where another table has no such row; ``inner``: rows every table has; ``full``: rows
    any table has, with input columns null for rows the first table lacks).
    ``partitions`` restricts every table to those partitions (each must have them); ``id``
    names the id column when the manifests do not (partitions published before they recorded
    it); ``work`` maps a name to its table's work root when it is not the default;
    ``storage_credentials`` names a prefect-aws ``AwsCredentials`` block for ``s3://`` tables
    (default: the ``AWS_*`` variables)."""
    if not tables:
        raise AnalystError("give at least one table: read({'embeddings': 'out/comments', ...})")
    if how not in get_args(JoinHow):
        raise AnalystError(f"how={how!r}: use one of {', '.join(get_args(JoinHow))}")
    chosen = None if partitions is None else list(partitions)
    roots = work or {}

    def view() -> pl.LazyFrame:
        opened = [_open(name, uri, chosen, roots.get(name), id) for name, uri in tables.items()]
        options = _storage_options(storage_credentials)
        inputs = _input_columns(opened)
        names = _result_names(opened, inputs)
        first, *others = opened
        key = first.id_column
        frame = _scan(first, options).select(
            *inputs,
            PARTITION_COLUMN,
            *(pl.col(c).alias(names[first.name, c]) for c in _results(first, inputs)),
            *_lineage(first),
        )
        for table in others:
            right = _scan(table, options).select(
                pl.col(table.id_column).alias(key),
                PARTITION_COLUMN,
                *(pl.col(c).alias(names[table.name, c]) for c in _results(table, inputs)),
                *_lineage(table),
            )
            frame = frame.join(right, on=[key, PARTITION_COLUMN], how=how, coalesce=True)
        return frame

    return with_storage_credentials(storage_credentials, view)


def _open(
    name: str, uri: str, partitions: list[str] | None, work: str | None, id_column: str | None
) -> _Table:
    published = PublishedTable.open(uri, partitions=partitions, work=work)
    if not published.with_data:
        raise AnalystError(f"{uri} ({name}) has no published rows")
    fields: dict[str, pa.Field] = {}
    for partition in published.with_data:
        schema = partition.schema()
        assert schema is not None
        for field in schema:
            fields.setdefault(field.name, field)
    schema = pa.schema(list(fields.values()))
    ids = published.id_column(id_column)
    return _Table(name, published, schema, ids, _leading_inputs(published, schema.names))


def _leading_inputs(published: PublishedTable, names: list[str]) -> tuple[str, ...] | None:
    """The input columns: as the manifests record them (``input_columns``); for partitions
    published before they did, the columns before the first one the table's kind calls its own
    (``Kind.describe_columns``, as the publisher describes them) or a lineage column (the
    publisher writes inputs, results, lineage in that order). None when neither can tell."""
    recorded = [c for p in published.partitions for c in (p.get("input_columns") or [])]
    if recorded:
        return tuple(c for c in dict.fromkeys(recorded) if c in names)
    kind_name = published.kind()
    if kind_name not in kinds.REGISTRY:
        return None
    kind = kinds.get(kind_name)
    given = published.agreed("options", required=False) or {}
    try:
        options = KindOptions.model_validate(
            {k: v for k, v in given.items() if k in KindOptions.model_fields}
        )
    except ValidationError:  # options of an older form: the kind cannot say which are its own
        return None
    results = kind.describe_columns(names, options).keys() | set(kind.output_names(options))
    stop = results | set(LINEAGE) | ({kind.vector_column} if kind.vector_column else set())
    inputs = []
    for name in names:
        if name in stop:
            break
        inputs.append(name)
    return tuple(inputs)


def _input_columns(tables: list[_Table]) -> list[str]:
    """The view's input columns: the first table's, as its kind tells them; for a table of an
    unknown kind, the leading columns every table has in the same place with the same type.
    Every table's id column must be among them."""
    first = tables[0]
    if first.inputs is not None:
        inputs = list(first.inputs)
    else:
        inputs = []
        for place, field in enumerate(first.schema):
            same = all(
                place < len(t.schema) and t.schema.field(place).equals(field) for t in tables[1:]
            )
            if not same or field.name in LINEAGE:
                break
            inputs.append(field.name)
    outside = [t for t in tables if t.id_column not in inputs]
    if outside:
        raise TableMetadataError(
            f"the id column of {', '.join(f'{t.name} ({t.id_column!r})' for t in outside)} is "
            f"not among the input columns of {first.name} ({', '.join(inputs) or 'none'}): "
            "were the tables enriched from the same input?"
        )
    return inputs


def _results(table: _Table, inputs: list[str]) -> list[str]:
    """The table's result columns: neither input (its own, else the view's) nor lineage."""
    own = set(table.inputs if table.inputs is not None else inputs)
    return [n for n in table.schema.names if n not in own and n not in LINEAGE]


def _result_names(tables: list[_Table], inputs: list[str]) -> dict[tuple[str, str], str]:
    """Each (table, result column)'s name in the view: its own, or ``<table>_<column>`` when
    another table's result, an input column or a prefixed lineage column has that name."""
    counts = Counter(c for t in tables for c in _results(t, inputs))
    taken = {*inputs, PARTITION_COLUMN, *(f"{t.name}_{c}" for t in tables for c in LINEAGE)}
    return {
        (t.name, c): f"{t.name}_{c}" if counts[c] > 1 or c in taken else c
        for t in tables
        for c in _results(t, inputs)
    }


def _lineage(table: _Table) -> list[pl.Expr]:
    return [pl.col(c).alias(f"{table.name}_{c}") for c in LINEAGE if c in table.schema.names]


def _scan(table: _Table, storage_options: dict[str, str] | None) -> pl.LazyFrame:
    """The table's data files, lazily: hive ``partition`` as text, columns a partition lacks
    as nulls."""
    files = [p.data for p in table.published.with_data if p.data]
    empty = pl.from_arrow(table.schema.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return pl.scan_parquet(
        files,
        schema=empty.schema,
        missing_columns="insert",
        hive_partitioning=True,
        hive_schema={PARTITION_COLUMN: pl.String},
        storage_options=storage_options if files and is_remote(files[0]) else None,
    )


def _storage_options(block: str | None) -> dict[str, str]:
    """polars' object store options for ``s3://``: the block's settings, else the ``AWS_*``
    variables (``tasks.edges.settings``, as the storage layer reads them)."""
    settings: StorageSettings = storage_settings(block or "")
    secrets = {
        "aws_access_key_id": settings.access_key_id,
        "aws_secret_access_key": settings.secret_access_key,
        "aws_session_token": settings.session_token,
    }
    options = {name: value.get_secret_value() for name, value in secrets.items() if value}
    region = settings.region or settings.default_region
    if region:
        options["aws_region"] = region
    if settings.endpoint_url:
        options["aws_endpoint_url"] = settings.endpoint_url
        if settings.endpoint_url.startswith("http://"):
            options["aws_allow_http"] = "true"
    return options
