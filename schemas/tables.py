"""Output table contracts: the enriched table's layout and lineage, and the rejected rows.

Enriched table (one Parquet file per partition, ``<output>/partition=<value>/part-0.parquet``):
every input column, then the kind's columns (each kind's module in ``kinds/`` says which), then
lineage: ``enriched_at``: timestamp (UTC, the run's start), ``model``: string, ``batch_job_id``:
string (the Mistral job that answered the row), ``result_source``: ``batch`` or ``cache``.

Rejected rows (``<work>/rejected/partition=<value>/part-0.parquet``): the input columns plus
``reject_reason``, ``reject_message``, ``status_code``, ``attempts`` and ``batch_job_id``.
"""

from __future__ import annotations

from typing import Final

import polars as pl

PARTITION_COLUMN: Final = "partition"
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
    "api_error": "Mistral answered an error for the request (message kept)",
    "not_processed": "the batch job ended before answering, on every attempt",
    "incomplete_response": "the response held fewer results than inputs, on every attempt",
    "invalid_answer": "the answer cannot be read as the kind asks (e.g. not a JSON object)",
}
