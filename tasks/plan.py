"""Plan: check the input before anything is spent, then bucket its rows by text hash.

Rows are split into shards by a hash of their text, so identical texts land in the same shard
(and are sent once), and each shard can be enriched and written on its own in bounded memory.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
from prefect import task
from prefect.logging import get_run_logger

from schemas.params import CacheMode, EnrichParams
from schemas.refs import PlanRef
from tasks import cache
from tasks.core.columns import BUCKET, REJECT, TEXT_KEY, TEXT_KEY_2
from tasks.core.inputs import InputError, check_columns, check_ids, reject_reason
from tasks.core.keys import run_key, text_keys
from tasks.core.layout import Layout, Staging
from tasks.edges import storage
from tasks.failpoints import failpoint


def check_locations_outside_input(params: EnrichParams) -> None:
    """Refuse an output, work or cache location the input would read: the next run would read
    the enriched table (or staging) back as input."""
    places = [("output", params.output), ("work", params.work_root())]
    if params.cache_mode is not CacheMode.off:
        places.append(("cache", params.cache_root()))
    for name, uri in places:
        if reads_from(params.input, uri):
            raise InputError(
                f"the {name} location {uri} is inside the input {params.input}: the next run "
                f"would read it back as input. Choose a `{name}` outside the input."
            )


def fingerprint(dataset: ds.Dataset, uri: str) -> str:
    """Identifies the input's files and their sizes/modification times, without reading data."""
    fs, _ = storage.filesystem(uri)
    entries = []
    for path in sorted(dataset.files):
        info = fs.info(path)
        entries.append([path, info.get("size"), str(info.get("mtime") or info.get("ETag") or "")])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


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
                frame = frame.with_columns(*text_keys(params), reject_reason(params)).with_columns(
                    (pl.col(TEXT_KEY) % shards).cast(pl.Int32).alias(BUCKET)
                )
                for reason, count in frame[REJECT].drop_nulls().value_counts().iter_rows():
                    rejected[reason] = rejected.get(reason, 0) + count
                yield from frame.to_arrow().to_batches()

        first = pl.from_arrow(dataset.schema.empty_table())
        assert isinstance(first, pl.DataFrame)
        schema = (
            first.with_columns(*text_keys(params), reject_reason(params))
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


def plan_run(params: EnrichParams, partition: str) -> PlanRef:
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
    staging = Layout.of(params).staging(key)
    shards = max(1, math.ceil(rows / params.shard_size))
    folders = Staging(staging)
    rows_uri = folders.rows()
    # Everything a run derives from the rows is rebuilt: nothing a killed run staged is trusted.
    for stale in (rows_uri, folders.cache_lookup(), folders.cached()):
        storage.remove(stale)
    storage.sweep_temporary(staging)
    rejected = bucket_rows(dataset, params, shards, rows_uri)
    failpoint("plan")
    location = None if params.cache_mode is CacheMode.off else cache.folder(params)
    found: dict[str, Any] = {}
    sendable = sum(rejected.values()) < rows
    if location is not None and params.cache_mode is CacheMode.use and sendable:
        found = lookup_cache(location, rows_uri, staging, shards, params.model)
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
        cache_folder=location,
        **found,
    )


def lookup_cache(
    location: str, rows_uri: str, staging: str, shards: int, model: str
) -> dict[str, Any]:
    """Find the rows' texts in the cache folder ``location``; the hits are written to staging
    and are not sent. Pending additions of a run that crashed after publishing are promoted
    first, so its results count."""
    cache.promote_pending(location)
    keys = (
        storage.read_tree(rows_uri, [TEXT_KEY, TEXT_KEY_2, REJECT])
        .filter(pl.col(REJECT).is_null())
        .drop(REJECT)
    )
    hits, files = cache.lookup(location, keys.lazy(), model)
    if hits.height == 0:
        return {}
    hit_rows = keys.join(hits, on=[TEXT_KEY, TEXT_KEY_2], how="semi").height
    used = sorted(hits[cache.FILE].unique().to_list())
    renumber = {old: new for new, old in enumerate(used)}
    hits = hits.with_columns(
        pl.col(cache.FILE).replace_strict(renumber, return_dtype=pl.Int32),
        (pl.col(TEXT_KEY) % shards).cast(pl.Int32).alias(BUCKET),
    ).sort(BUCKET)  # row-group statistics let each shard read only its own hits
    hits_uri = Staging(staging).hits()
    storage.write_parquet(hits.to_arrow(), hits_uri, row_group_size=32_768)
    return {
        "cache_files": [files[i] for i in used],
        "hits_uri": hits_uri,
        "cache_hit_rows": hit_rows,
        "cache_hit_texts": hits.height,
        "cache_hit_tokens": int(hits[cache.TOKENS].sum() or 0),
        "cache_version": str(hits[cache.VERSION][0]),  # one version: the lookup's newest
    }


@task(name="check-locations")
def check_locations(params: EnrichParams) -> None:
    check_locations_outside_input(params)


@task(name="plan")
def plan(params: EnrichParams, partition: str) -> PlanRef:
    logger = get_run_logger()
    ref = plan_run(params, partition)
    logger.info(
        "Planned %d rows in %d shard(s); %d rejected before sending %s; %d rows (%d texts) "
        "found in the cache; staging at %s",
        ref.rows,
        ref.shards,
        ref.rows - ref.rows_to_send,
        ref.rejected_before_send or "",
        ref.cache_hit_rows,
        ref.cache_hit_texts,
        ref.staging,
    )
    return ref


def _location(uri: str) -> str:
    """``uri`` as a comparable absolute location (bucket/key for S3, an absolute path else)."""
    if storage.is_remote(uri):
        return uri.split("://", 1)[1].rstrip("/")
    return str(Path(uri.removeprefix("file://")).absolute()).rstrip("/")


def reads_from(input_uri: str, location: str) -> bool:
    """Whether reading ``input_uri`` (a file, a folder, or a glob) could pick up files written
    under ``location``."""
    source, where = _location(input_uri), _location(location)
    if not any(c in source for c in "*?["):
        return where == source or where.startswith(source + "/")
    if "**" in source:  # recursive: everything under the fixed prefix
        root = posixpath.dirname(re.split(r"[*?\[]", source, maxsplit=1)[0])
        return where == root or where.startswith(root + "/")
    pattern, folder = source.split("/"), where.split("/")
    return len(pattern) > len(folder) and all(
        fnmatch.fnmatchcase(part, glob) for part, glob in zip(folder, pattern, strict=False)
    )
