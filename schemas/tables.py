"""Output table contracts: every published column and what it means, and the rejected rows.

Enriched table (one Parquet file per partition, ``<output>/partition=<value>/part-0.parquet``):
every input column, then the kind's result columns (each kind's ``columns``), then ``LINEAGE``;
readers add ``PARTITION`` from the folder name. Rejected rows
(``<work>/rejected/partition=<value>/<run id>-<n>.parquet``): the input columns plus
``REJECTED_COLUMNS``.

Every description is written once, here or in a kind: the published files carry it in each
field's metadata (key ``description``), the manifest in its ``schema``, and the README's "Output
tables" section is this module's rendering (``readme_output_table``, ``readme_rejected_table``;
a test holds the README to it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import polars as pl
import pyarrow as pa

import kinds
from kinds.base import Column
from schemas.params import EnrichParams, Kind

DESCRIPTION_KEY: Final = b"description"  # a Parquet field's metadata key
INPUT: Final = "input column, copied from {}"

PARTITION_COLUMN: Final = "partition"
PARTITION: Final = Column(
    PARTITION_COLUMN,
    "string (folder name)",
    "the partition the row was published in: the run's partition parameter (default: the run's "
    "date, UTC); not in the file, hive-partitioned readers take it from the folder name",
)
LINEAGE: Final = (
    Column(
        "enriched_at",
        "timestamp (UTC)",
        "when the result was made: the start of the run that asked for it (a result from the "
        "content cache keeps its first run's)",
    ),
    Column(
        "model",
        "string",
        "the model the run asked for, as named in its options (an alias such as "
        "mistral-moderation-latest stays the alias)",
    ),
    Column(
        "model_version",
        "string",
        "the model version that answered, as the service reported it (the job's or the "
        "response's model); the same as model when the service reports only the alias",
    ),
    Column(
        "batch_job_id",
        "string",
        "the Mistral batch job that answered the row (for a result from the content cache: the "
        "job that first answered the text)",
    ),
    Column(
        "result_source",
        "string",
        "batch: answered by a batch job of this run; cache: reused from the content cache, where "
        "the same text was answered before with the same model and options",
    ),
)

REJECTED: Final = {
    "reject_reason": pl.String,
    "reject_message": pl.String,
    "status_code": pl.Int64,
    "attempts": pl.Int32,
    "batch_job_id": pl.String,
}
REJECT_REASONS: Final = {
    "null_text": "the text is null: nothing to send",
    "empty_text": "the text is empty or blank: nothing to send",
    "text_too_long": "the text is longer than the model's context",
    "api_error": "Mistral answered the request with an error, whose message is kept",
    "not_processed": "the batch job ended before answering, on every attempt",
    "incomplete_response": "the response held fewer results than inputs, on every attempt",
    "results_expired": "the job's results expired before they were downloaded, on every attempt",
    "invalid_answer": "the answer cannot be read as the kind asks, e.g. not a JSON object",
}
REJECTED_COLUMNS: Final = (  # the columns of ``REJECTED``, described
    Column(
        "reject_reason",
        "string",
        "why the row was not enriched: "
        + "; ".join(f"{reason} ({meaning})" for reason, meaning in REJECT_REASONS.items()),
    ),
    Column(
        "reject_message",
        "string",
        "what the API or the answer's parser said about the row, where there is a message",
    ),
    Column("status_code", "int64", "the HTTP status of the API's error answer, if any"),
    Column(
        "attempts",
        "int32",
        "how many batch jobs were asked for the row (0: refused before sending)",
    ),
    Column(
        "batch_job_id",
        "string",
        "the last batch job asked for the row (null when it was never sent)",
    ),
)


def input_descriptions(names: list[str], source: str, schema: pa.Schema | None) -> dict[str, str]:
    """Each input column's description: its own in the input (``schema``'s field metadata), else
    where it was copied from."""
    own = {field.name: field_description(field) for field in schema or []}
    return {name: own.get(name) or INPUT.format(source) for name in names}


def field_description(field: pa.Field) -> str | None:
    """A Parquet field's description (its metadata's ``description``), None when it has none."""
    text = (field.metadata or {}).get(DESCRIPTION_KEY, b"").decode(errors="replace")
    return text if text.strip() else None


def published_descriptions(
    names: list[str], inputs: Mapping[str, str], params: EnrichParams
) -> dict[str, str]:
    """The description of each described column of a published data file, in file order:
    ``inputs`` (``input_descriptions``), the lineage, and the kind's result columns."""
    lineage = {c.name: c.description for c in LINEAGE}
    results = [n for n in names if n not in inputs and n not in lineage]
    found = {**kinds.kind_of(params).describe_columns(results, params.options), **lineage}
    found |= inputs
    return {name: found[name] for name in names if name in found}


def rejected_descriptions(names: list[str], inputs: Mapping[str, str]) -> dict[str, str]:
    """The description of each described column of a rejected-rows file, in file order."""
    found = {**{c.name: c.description for c in REJECTED_COLUMNS}, **inputs}
    return {name: found[name] for name in names if name in found}


# The README's "Output tables" ----------------------------------------------------------------


def readme_output_table() -> str:
    """The enriched table's columns as the README shows them: a row per column, a kind's rows
    together (kinds with the same columns share them)."""
    lines = ["| kind | column | type | description |", "|---|---|---|---|"]
    lines.append(_row("every kind", *_every_input_column()))
    groups: list[tuple[list[str], tuple[Column, ...]]] = []
    for value in Kind:
        columns = kinds.get(value).columns
        if groups and groups[-1][1] == columns:
            groups[-1][0].append(value.value)
        else:
            groups.append(([value.value], columns))
    for names, columns in groups:
        for i, column in enumerate(columns):
            lines.append(_row("" if i else ", ".join(names), *_cells(column)))
    for i, column in enumerate((*LINEAGE, PARTITION)):
        lines.append(_row("" if i else "every kind (lineage)", *_cells(column)))
    return "\n".join(lines) + "\n"


def readme_rejected_table() -> str:
    """The rejected rows' columns as the README shows them."""
    lines = ["| column | type | description |", "|---|---|---|"]
    lines.append(_row(*_every_input_column()))
    lines += [_row(*_cells(column)) for column in REJECTED_COLUMNS]
    return "\n".join(lines) + "\n"


def _every_input_column() -> tuple[str, str, str]:
    own = "; its own description in the input replaces this one"
    return "every input column", "as in the input", INPUT.format("`<input>`") + own


def _cells(column: Column) -> tuple[str, str, str]:
    """Name, type and description, a ``<part>`` shown as code (markdown would take it for a
    tag)."""
    description = column.description
    for part in column.parts():
        description = description.replace(f"<{part}>", f"`<{part}>`")
    return f"`{column.name}`", column.type, description


def _row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
