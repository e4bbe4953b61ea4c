"""Plan: check the input before anything is spent, then bucket its rows by text hash.

Rows are split into shards by a hash of their text, so identical texts land in the same shard
(and are sent once), and each shard can be enriched and written on its own in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
from prefect import task
from prefect.logging import get_run_logger

from schemas.params import EnrichParams, Kind
from schemas.refs import PlanRef
from tasks import layout, storage

TEXT_KEY = "_text_key"
REJECT = "_reject_reason"
BUCKET = "_bucket"
_KEY_SEED = 0x6D69737472616C  # fixed: keys must be the same in every process and run
_EXAMPLES = 5


class InputError(ValueError):
    """The input cannot be enriched as asked; raised before any file is uploaded."""


def check_columns(schema: pa.Schema, params: EnrichParams, source: str) -> None:
    available = schema.names
    for role, column in (("id", params.id_column), ("text", params.text_column)):
        if column not in available:
            raise InputError(
                f"{role} column {column!r} is not in {source}; available columns: "
                f"{', '.join(available)}"
            )
    text_type = schema.field(params.text_column).type
    if params.kind is Kind.chat_moderation:
        ok = _is_messages(text_type)
        wanted = "a list of {role: string, content: string} structs"
    else:
        ok = pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
        wanted = "a string column"
    if not ok:
        raise InputError(
            f"text column {params.text_column!r} in {source} has type {text_type}; "
            f"kind {params.kind.value!r} needs {wanted}"
        )


def _is_messages(arrow_type: pa.DataType) -> bool:
    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    item = arrow_type.value_type
    return pa.types.is_struct(item) and {"role", "content"} <= {f.name for f in item}


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


def text_key(text_column: str) -> pl.Expr:
    """A 64-bit hash of the text: equal texts, equal keys (stable for the locked polars)."""
    return pl.col(text_column).hash(seed=_KEY_SEED).alias(TEXT_KEY)


def reject_reason(kind: Kind, text_column: str) -> pl.Expr:
    """Why a row is not sent (null when it is)."""
    text = pl.col(text_column)
    if kind is Kind.chat_moderation:
        empty = text.list.len() == 0
        return (
            pl.when(text.is_null())
            .then(pl.lit("null_text"))
            .when(empty)
            .then(pl.lit("empty_text"))
            .otherwise(None)
            .alias(REJECT)
        )
    return (
        pl.when(text.is_null())
        .then(pl.lit("null_text"))
        .when(text.str.strip_chars() == "")
        .then(pl.lit("empty_text"))
        .otherwise(None)
        .alias(REJECT)
    )


def fingerprint(dataset: ds.Dataset, uri: str) -> str:
    """Identifies the input's files and their sizes/modification times, without reading data."""
    fs, _ = storage.filesystem(uri)
    entries = []
    for path in sorted(dataset.files):
        info = fs.info(path)
        entries.append([path, info.get("size"), str(info.get("mtime") or info.get("ETag") or "")])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


def run_key(params: EnrichParams, input_fingerprint: str, partition: str) -> str:
    identity = {
        "input": input_fingerprint,
        "id": params.id_column,
        "text": params.text_column,
        "options": params.result_options(),
        "partition": partition,
        "shard_size": params.shard_size,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def bucket_rows(
    dataset: ds.Dataset, params: EnrichParams, shards: int, target: str
) -> dict[str, int]:
    """Write the input's rows, with text key, reject reason and bucket, as hive partitions under
    ``target``; batch by batch, so memory stays flat. Returns the rejected counts by reason."""
    rejected: dict[str, int] = {}

    def batches() -> pa.RecordBatchReader:
        def generate() -> Iterator[pa.RecordBatch]:
            for batch in dataset.to_batches(batch_size=64_000):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                frame = frame.with_columns(
                    text_key(params.text_column), reject_reason(params.kind, params.text_column)
                ).with_columns((pl.col(TEXT_KEY) % shards).cast(pl.Int32).alias(BUCKET))
                for reason, count in frame[REJECT].drop_nulls().value_counts().iter_rows():
                    rejected[reason] = rejected.get(reason, 0) + count
                yield from frame.to_arrow().to_batches()

        first = pl.from_arrow(dataset.schema.empty_table())
        assert isinstance(first, pl.DataFrame)
        schema = (
            first.with_columns(
                text_key(params.text_column), reject_reason(params.kind, params.text_column)
            )
            .with_columns(pl.lit(0, pl.Int32).alias(BUCKET))
            .to_arrow()
            .schema
        )
        return pa.RecordBatchReader.from_batches(schema, generate())

    fs, path = storage.arrow_filesystem(target)
    ds.write_dataset(
        batches(),
        path,
        filesystem=fs,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([(BUCKET, pa.int32())]), flavor="hive"),
        existing_data_behavior="delete_matching",
        max_rows_per_group=64_000,
        basename_template="part-{i}.parquet",
    )
    return rejected


def plan(params: EnrichParams, partition: str) -> PlanRef:
    """Check everything that can be checked before spending, then bucket the rows."""
    try:
        dataset = storage.parquet_dataset(params.input)
    except storage.InputNotFoundError as exc:
        raise InputError(f"{exc}; check the `input` parameter") from exc
    check_columns(dataset.schema, params, params.input)
    rows = dataset.count_rows()
    if rows == 0:
        raise InputError(f"the input {params.input} has no rows: nothing to enrich")
    frame = pl.scan_pyarrow_dataset(dataset)
    check_ids(frame, params.id_column, params.input)

    input_fingerprint = fingerprint(dataset, params.input)
    key = run_key(params, input_fingerprint, partition)
    staging = layout.staging(params, key)
    shards = max(1, math.ceil(rows / params.shard_size))
    rows_uri = storage.join(staging, "rows")
    storage.remove(rows_uri)
    rejected = bucket_rows(dataset, params, shards, rows_uri)
    return PlanRef(
        run_key=key,
        staging=staging,
        input_fingerprint=input_fingerprint,
        rows=rows,
        rows_to_send=rows - sum(rejected.values()),
        rejected_before_send=rejected,
        shards=shards,
        input_columns=list(dataset.schema.names),
        partition=partition,
    )


@task(name="plan")
def plan_input(params: EnrichParams, partition: str) -> PlanRef:
    logger = get_run_logger()
    ref = plan(params, partition)
    logger.info(
        "Planned %d rows in %d shard(s); %d rejected before sending %s; staging at %s",
        ref.rows,
        ref.shards,
        ref.rows - ref.rows_to_send,
        ref.rejected_before_send or "",
        ref.staging,
    )
    return ref
