"""Checks on the input that need no I/O: its columns, its ids, and which rows cannot be sent."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

import kinds
from schemas.params import EnrichParams
from tasks.core.columns import REJECT
from tasks.core.errors import TerminalError

_EXAMPLES = 5


# A text over this many UTF-8 bytes is rejected before it is tokenized: no Mistral model takes
# that much (1 MiB is ~250k tokens), and tokenizing megabytes only to refuse them is waste.
MAX_TEXT_BYTES = 1 << 20


class InputError(TerminalError):
    """The input cannot be enriched as asked; raised before any file is uploaded."""

    expected = True


def check_columns(schema: pa.Schema, params: EnrichParams, source: str) -> None:
    available = schema.names
    for role, column in (("id", params.id_column), ("text", params.text_column)):
        if column not in available:
            raise InputError(
                f"{role} column {column!r} is not in {source}; available columns: "
                f"{', '.join(available)}"
            )
    kind = kinds.kind_of(params)
    text_type = schema.field(params.text_column).type
    if not kind.input.arrow_ok(text_type):
        raise InputError(
            f"text column {params.text_column!r} in {source} has type {text_type}; "
            f"kind {kind.name!r} needs {kind.input.wanted}"
        )
    clashes = [c for c in kind.output_names(params.options) if c in available]
    if clashes:
        raise InputError(
            f"{source} already has column(s) {', '.join(map(repr, clashes))}, which kind "
            f"{kind.name!r} adds to the table; rename them in the input (or the properties "
            "asked for)"
        )


def check_ids(frame: pl.LazyFrame, id_column: str, source: str) -> None:
    """Ids must be non-null and unique; the error gives the count and examples."""
    ids = pl.col(id_column)
    nulls = frame.select(ids.is_null().sum()).collect().item()
    if nulls:
        raise InputError(
            f"id column {id_column!r} in {source} has {nulls} null value(s); "
            "every row needs an id to be joined back to its result"
        )
    duplicates = (
        frame.group_by(ids)
        .len()
        .filter(pl.col("len") > 1)
        .sort(id_column)
        .collect(engine="streaming")
    )
    if duplicates.height:
        examples = ", ".join(repr(v) for v in duplicates[id_column].head(_EXAMPLES).to_list())
        raise InputError(
            f"id column {id_column!r} in {source} has {duplicates.height} duplicated id(s) "
            f"(e.g. {examples}); ids must be unique"
        )


def reject_reason(params: EnrichParams) -> pl.Expr:
    """Why a row is not sent (null when it is)."""
    source = kinds.kind_of(params).input
    text = pl.col(params.text_column)
    empty, size = source.empty(text), source.size(text)
    return (
        pl.when(text.is_null())
        .then(pl.lit("null_text"))
        .when(empty)
        .then(pl.lit("empty_text"))
        .when(size > MAX_TEXT_BYTES)
        .then(pl.lit("text_too_long"))
        .otherwise(None)
        .alias(REJECT)
    )
