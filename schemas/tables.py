"""Output table contracts: what each kind adds to the input columns, and the rejected rows.

Enriched table (one Parquet file per partition, ``<output>/partition=<value>/part-0.parquet``):
every input column, then the kind's columns, then lineage.

* embeddings — ``embedding``: ``FixedSizeList(float32, dim)`` (1024 for mistral-embed).
* moderation, chat-moderation — ``flagged``: bool (any category flagged); ``category_<name>``: bool
  and ``score_<name>``: float64 per category, names as the model returns them.
* classification — ``label``: string, one of the labels asked for.
* classifier — ``<target>_label``: string (the top label), ``<target>_score_<label>``: float64.
* lineage — ``enriched_at``: timestamp (UTC, the run's start), ``model``: string,
  ``batch_job_id``: string (the Mistral job that answered the row).

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
}
