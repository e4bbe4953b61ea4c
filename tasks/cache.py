"""The content cache: results of earlier runs, keyed by (kind, model, options, normalised text).

A nightly run over a table that grew a little sends only the new and edited rows; the others
take their results from here. Layout, under the ``cache`` root::

    <root>/<scheme>/kind=<kind>/model=<model>/options=<hash>/
        _options.json                  what the folder holds (kind, model, options)
        <run>-<id>.parquet             one file per run that added results
        c-<id>-<n>.parquet             compacted files (unique keys, sorted by key)
        _pending/<run>-<id>.parquet    a run's additions between its gate and its publish

Every file holds ``text_key``, ``text_key_2`` (the 128-bit key), ``tokens`` (prompt tokens the
text cost), the result columns, ``batch_job_id``, ``enriched_at`` and ``model_version`` (lineage).

Results are keyed by the version that answered them as well: the folder is the model the runs
asked for (an alias such as ``mistral-moderation-latest``), and a lookup takes only entries of the
newest version seen under it (the version of the most recent entry; files written before versions
were recorded count as one unnamed version). When an alias moves, the old version's entries stop
matching once a run has seen the new one; the run that first meets the move decides what to do
with its mixed partition (``on_mixed_versions``).

``<scheme>`` names the key recipe and a canary of the hash function: if a new polars hashed
differently, old entries would sit in another scheme folder and miss (paid once more, never a
wrong answer). Additions are single files made visible in one step (a rename or one S3 object),
so a reader sees a run's additions whole or not at all. Readers tolerate duplicate keys (two runs
adding the same text at once); compaction removes them.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from prefect import task
from prefect.logging import get_run_logger

from schemas.params import EnrichParams
from schemas.refs import PlanRef, WriteRef
from tasks.core.columns import (
    BUCKET,
    CACHE_KEY,
    CACHE_KEY_2,
    CACHE_TOKENS,
    KEY_SCHEME,
    MODEL_VERSION,
    TEXT_KEY,
    TEXT_KEY_2,
)
from tasks.core.errors import TerminalError
from tasks.core.layout import Staging
from tasks.edges import storage
from tasks.retry import retry_if_transient

KEY = CACHE_KEY
KEY_2 = CACHE_KEY_2
TOKENS = CACHE_TOKENS
FILE = "_file"
VERSION = MODEL_VERSION
UNRECORDED = ""  # the version of entries written before versions were recorded
PENDING = "_pending"
OPTIONS_FILE = "_options.json"
ROW_GROUP_ROWS = 16_384
COMPACT_BUCKET_BYTES = 256 * 1024 * 1024


class CacheFileGoneError(TerminalError):
    """A cache file listed by the lookup vanished before it was read (a compaction ran).
    Terminal: reading the same file again cannot help; a new run looks the cache up afresh."""


def scheme() -> str:
    """The key recipe and a canary of polars' string hash: changes when either changes."""
    canary = pl.Series(["enrich cache canary", "é ü 漢字"]).hash(seed=KEY_SCHEME).to_list()
    return f"k{KEY_SCHEME}-{hashlib.sha256(json.dumps(canary).encode()).hexdigest()[:8]}"


def _options_hash(options: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def _safe(value: str) -> str:
    return quote(value, safe="-._")


def folder(params: EnrichParams) -> str:
    """The cache folder for this run's kind, model and options."""
    options = params.result_options()
    return storage.join(
        params.cache_root(),
        scheme(),
        f"kind={_safe(params.kind.value)}",
        f"model={_safe(params.model)}",
        f"options={_options_hash(options)}",
    )


def data_files(location: str) -> list[str]:
    """The cache files of one folder (pending and temporary files excluded)."""
    files = storage.list_files(location, ".parquet")
    prefix = storage.filesystem(location)[1].rstrip("/") + "/"  # absolute, like the listing
    return [
        f
        for f in files
        if "/" not in storage.filesystem(f)[1].removeprefix(prefix)
        and not posixpath.basename(f).startswith("_")
    ]


def promote_pending(location: str) -> list[str]:
    """Move every pending addition into the cache (a run that published, then crashed, leaves
    its additions pending; they passed the validation gate, so they are safe to use)."""
    moved = []
    for pending in storage.list_files(storage.join(location, PENDING), ".parquet"):
        target = storage.join(location, posixpath.basename(pending))
        try:
            storage.move_into_place(pending, target)
        except FileNotFoundError:  # another run promoted it first
            continue
        moved.append(target)
    for leftover in storage.list_files(storage.join(location, PENDING)):
        name = posixpath.basename(leftover)  # what a killed writer left: not a pending file
        if name.endswith(storage.TEMPORARY_SUFFIX) and _older_than(leftover, 3600):
            storage.remove(leftover)
    return moved


def _older_than(uri: str, seconds: float) -> bool:
    fs, path = storage.filesystem(uri)
    modified = fs.modified(path)
    age = datetime.now(modified.tzinfo) - modified
    return bool(age.total_seconds() > seconds)


def _key_table(files: list[str]) -> pl.DataFrame:
    """Keys, tokens, answering version, time and the file index of every cache entry (no
    result columns are read)."""
    if not files:
        return pl.DataFrame(
            schema={
                KEY: pl.UInt64,
                KEY_2: pl.UInt64,
                TOKENS: pl.Int64,
                VERSION: pl.String,
                "enriched_at": pl.Datetime("us", "UTC"),
                FILE: pl.Int32,
            }
        )
    fs, _ = storage.arrow_filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    try:
        # Older files lack the version column: the unified schema reads it as null there.
        schema = pa.unify_schemas([_read_schema(f) for f in files], promote_options="permissive")
        if VERSION not in schema.names:
            schema = schema.append(pa.field(VERSION, pa.string()))
        dataset = ds.dataset(paths, schema=schema, filesystem=fs, format="parquet")
        wanted = [KEY, KEY_2, TOKENS, VERSION, "enriched_at", "__fragment_index"]
        table = dataset.to_table(columns=wanted)
    except FileNotFoundError as exc:
        raise CacheFileGoneError(
            f"a cache file vanished while it was read ({exc}); a compaction probably ran. "
            "Run the flow again (its lookup reads the current files); nothing was submitted."
        ) from exc
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.rename({"__fragment_index": FILE}).with_columns(
        pl.col(FILE).cast(pl.Int32),
        pl.col(VERSION).fill_null(UNRECORDED),
        pl.col("enriched_at").cast(pl.Datetime("us", "UTC")),
    )


def _answered_by(model: str) -> pl.Expr:
    """An entry's version; one written before versions were recorded counts as answered by
    ``model``, the name the runs asked for (what the pipeline records where the service names
    no version), so the entries of a service that names only the alias stay one version."""
    recorded = pl.col(VERSION)
    return pl.when(recorded == UNRECORDED).then(pl.lit(model)).otherwise(recorded)


def newest_version(cached: pl.DataFrame, model: str = UNRECORDED) -> str:
    """The version of the most recent entry: what the alias was last seen answering with. One
    run's additions share a time: on a tie, the greatest name (versions are named by date)."""
    newest = cached.group_by(_answered_by(model).alias("_version")).agg(pl.col("enriched_at").max())
    return str(newest.sort(["enriched_at", "_version"], nulls_last=False)["_version"][-1])


def lookup(
    location: str, keys: pl.LazyFrame, model: str = UNRECORDED
) -> tuple[pl.DataFrame, list[str]]:
    """Which of ``keys`` (``_text_key``, ``_text_key_2``) the cache holds, answered by the
    newest version it holds (``newest_version``; ``model``: the name the runs asked for).

    Returns the hits (both keys, ``tokens``, ``model_version`` as stored, ``_file`` = index into
    the returned file list) and the file list. Reads only the key columns of the cache: 16
    bytes, a token count, a version and a time per entry.
    """
    files = data_files(location)
    cached = _key_table(files)
    if cached.height == 0:
        return cached.drop("enriched_at").rename({KEY: TEXT_KEY, KEY_2: TEXT_KEY_2}), files
    newest = newest_version(cached, model)
    cached = cached.filter(_answered_by(model) == newest).drop("enriched_at")
    wanted = keys.select(TEXT_KEY, TEXT_KEY_2).unique().collect()
    hits = (
        cached.lazy()
        .rename({KEY: TEXT_KEY, KEY_2: TEXT_KEY_2})
        .join(wanted.lazy(), on=[TEXT_KEY, TEXT_KEY_2], how="semi")
        .unique([TEXT_KEY, TEXT_KEY_2], keep="any")
        .collect(engine="streaming")
    )
    return hits, files


def _row_groups_with(parquet: pq.ParquetFile, sorted_keys: np.ndarray) -> list[int]:
    """Row groups whose ``text_key`` range holds one of ``sorted_keys`` (min/max statistics;
    compacted files are sorted by key, so most groups are skipped on a small hit set)."""
    index = parquet.schema_arrow.get_field_index(KEY)
    chosen = []
    for group in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            chosen.append(group)
            continue
        low = np.searchsorted(sorted_keys, np.uint64(stats.min), side="left")
        high = np.searchsorted(sorted_keys, np.uint64(stats.max), side="right")
        if high > low:
            chosen.append(group)
    return chosen


def read_hits(uri: str, hits: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """The cached rows of ``uri`` whose keys are in ``hits``, a row group at a time."""
    fs, path = storage.arrow_filesystem(uri)
    wanted = hits.select(
        pl.col(TEXT_KEY).alias(KEY), pl.col(TEXT_KEY_2).alias(KEY_2), pl.col(VERSION)
    )
    sorted_keys = np.sort(wanted[KEY].to_numpy())
    try:
        handle = fs.open_input_file(path)
    except FileNotFoundError as exc:
        raise CacheFileGoneError(
            f"the cache file {uri} vanished before its results were read; a compaction "
            "probably ran. Run the flow again (its lookup reads the current files); nothing "
            "was submitted."
        ) from exc
    with handle:
        parquet = pq.ParquetFile(handle)
        for group in _row_groups_with(parquet, sorted_keys):
            frame = pl.from_arrow(parquet.read_row_group(group))
            assert isinstance(frame, pl.DataFrame)
            version = pl.col(VERSION) if VERSION in frame.columns else pl.lit(None, pl.String)
            found = frame.join(
                wanted,
                left_on=[KEY, KEY_2, version.fill_null(UNRECORDED)],
                right_on=[KEY, KEY_2, VERSION],
                how="semi",
            )
            if found.height:
                yield found


def fetch(uri: str, file_index: int, hits: pl.DataFrame, shards: int, target: str) -> int:
    """Copy the hits' cached results out of one cache file into ``target``, bucketed by shard
    like the run's rows (``_bucket=<n>/f<file>-<i>.parquet``). Returns the rows copied."""
    copied = flushes = 0
    batches: list[pa.RecordBatch] = []
    for found in read_hits(uri, hits):
        copied += found.height
        bucketed = found.with_columns((pl.col(KEY) % shards).cast(pl.Int32).alias(BUCKET))
        batches.extend(bucketed.to_arrow().to_batches())
        if sum(b.nbytes for b in batches) > 64 * 1024 * 1024:  # memory stays bounded
            _write_buckets(batches, target, f"f{file_index:05d}-{flushes:04d}")
            batches, flushes = [], flushes + 1
    if batches:
        _write_buckets(batches, target, f"f{file_index:05d}-{flushes:04d}")
    return copied


def _write_buckets(batches: list[pa.RecordBatch], target: str, basename: str) -> None:
    fs, path = storage.arrow_filesystem(target)
    ds.write_dataset(
        pa.Table.from_batches(batches),
        path,
        filesystem=fs,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([(BUCKET, pa.int32())]), flavor="hive"),
        existing_data_behavior="overwrite_or_ignore",
        basename_template=f"{basename}-{{i}}.parquet",
    )


def write_options(location: str, params: EnrichParams) -> None:
    marker = storage.join(location, OPTIONS_FILE)
    if not storage.exists(marker):
        storage.write_json(marker, {"scheme": scheme(), **params.result_options()})


def stage_additions(parts: list[str], location: str, run_key: str) -> str | None:
    """Write a run's new results (per-shard files) as one pending cache file; streamed, a shard
    at a time. Returns its URI, or None when there is nothing to add."""
    if not parts:
        return None
    schemas = [_read_schema(p) for p in parts]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    name = f"{run_key}-{uuid.uuid4().hex[:12]}.parquet"
    pending = storage.join(location, PENDING, name)
    with storage.open_write(pending) as sink:  # whole or absent
        writer = pq.ParquetWriter(sink, schema, compression="lz4")
        for part in parts:
            fs, path = storage.arrow_filesystem(part)
            table = pq.read_table(path, filesystem=fs)
            writer.write_table(_conform(table, schema).sort_by(KEY), row_group_size=ROW_GROUP_ROWS)
        writer.close()
    return pending


def _read_schema(uri: str) -> pa.Schema:
    fs, path = storage.arrow_filesystem(uri)
    return pq.read_schema(path, filesystem=fs)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in order (missing ones null)."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def promote(pending: str) -> str:
    """Make a run's pending additions part of the cache (one rename or one S3 object). A
    promotion another run already did (a lookup promotes every pending file) is a no-op: the
    run published, so failing it now would only raise a false alarm."""
    location = posixpath.dirname(posixpath.dirname(pending))
    target = storage.join(location, posixpath.basename(pending))
    # FileNotFoundError: another run's lookup promoted it (a compaction may have merged it since).
    with suppress(FileNotFoundError):
        storage.move_into_place(pending, target)
    return target


# Maintenance: info, compact, purge --------------------------------------------------------


@dataclass(frozen=True)
class CacheFolder:
    uri: str
    scheme: str
    kind: str
    model: str
    options: dict[str, object]
    files: int
    entries: int
    bytes: int
    current: bool  # written with this version's key scheme


def folders(root: str) -> list[CacheFolder]:
    """Every kind/model/options folder under ``root``, with its size."""
    found = []
    current = scheme()
    for marker in storage.list_files(root, OPTIONS_FILE):
        location = marker[: -len(OPTIONS_FILE) - 1]
        with storage.open_read(marker) as handle:
            described = json.load(handle)
        files = data_files(location)
        entries = size = 0
        for f in files:
            fs, path = storage.filesystem(f)
            size += int(fs.info(path)["size"])
            arrow_fs, arrow_path = storage.arrow_filesystem(f)
            entries += pq.ParquetFile(arrow_path, filesystem=arrow_fs).metadata.num_rows
        found.append(
            CacheFolder(
                uri=location,
                scheme=str(described.get("scheme")),
                kind=str(described.get("kind")),
                model=str(described.get("model")),
                options={k: v for k, v in described.items() if k not in ("scheme",)},
                files=len(files),
                entries=entries,
                bytes=size,
                current=described.get("scheme") == current,
            )
        )
    return found


def select(root: str, kind: str | None, model: str | None) -> list[CacheFolder]:
    return [
        f
        for f in folders(root)
        if (kind is None or f.kind == kind) and (model is None or f.model == model)
    ]


def purge(root: str, kind: str | None = None, model: str | None = None) -> list[CacheFolder]:
    """Remove the folders of ``kind`` and/or ``model`` (both None: the whole cache)."""
    if kind is None and model is None:
        removed = folders(root)
        storage.remove(root)
        return removed
    removed = select(root, kind, model)
    for f in removed:
        storage.remove(f.uri)
    return removed


def compact(location: str) -> tuple[int, int, int]:
    """Rewrite one folder's files as few files with unique keys (a key per answering version),
    sorted by key (so lookups of
    few hits skip most row groups). Streams: memory holds one key bucket (~256 MB) at a time.
    Returns (files before, entries before, entries after)."""
    files = data_files(location)
    if not files:
        return 0, 0, 0
    fs, _ = storage.arrow_filesystem(location)
    paths = [storage.filesystem(f)[1] for f in files]
    schemas = [_read_schema(f) for f in files]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    dataset = ds.dataset(paths, schema=schema, filesystem=fs, format="parquet")
    plain_fs, _ = storage.filesystem(location)
    total_bytes = sum(int(plain_fs.info(p)["size"]) for p in paths)
    entries_before = dataset.count_rows()
    buckets = max(1, math.ceil(total_bytes / COMPACT_BUCKET_BYTES))
    work = storage.join(location, f"_compact-{uuid.uuid4().hex[:12]}")
    staged, out = storage.join(work, "staged"), storage.join(work, "out")
    try:
        if buckets > 1:
            _, staged_path = storage.arrow_filesystem(staged)

            def bucketed() -> Iterator[pa.RecordBatch]:
                for batch in dataset.to_batches(batch_size=ROW_GROUP_ROWS):
                    keys = batch.column(KEY).to_numpy(zero_copy_only=False)
                    yield batch.append_column("_b", pa.array((keys % buckets).astype(np.int32)))

            ds.write_dataset(
                bucketed(),
                staged_path,
                schema=schema.append(pa.field("_b", pa.int32())),
                filesystem=fs,
                format="parquet",
                partitioning=ds.partitioning(pa.schema([("_b", pa.int32())]), flavor="hive"),
            )
            sources = [storage.join(staged, f"_b={b}") for b in range(buckets)]
        else:
            sources = [location]
        tag = uuid.uuid4().hex[:12]
        entries_after = 0
        written = []
        for index, source in enumerate(sources):
            if source == location:
                frame = pl.from_arrow(dataset.to_table())
            elif storage.exists(source):
                frame = pl.from_arrow(storage.parquet_dataset(source).to_table())
            else:
                continue
            assert isinstance(frame, pl.DataFrame)
            frame = (
                frame.drop("_b", strict=False)
                .sort("enriched_at", nulls_last=False)
                .unique([KEY, KEY_2, *([VERSION] if VERSION in frame.columns else [])], keep="last")
                .sort(KEY)
            )
            entries_after += frame.height
            target = storage.join(out, f"c-{tag}-{index:04d}.parquet")
            _, target_path = storage.arrow_filesystem(target)
            fs.create_dir(posixpath.dirname(target_path), recursive=True)
            pq.write_table(
                _conform(frame.to_arrow(), schema),
                target_path,
                filesystem=fs,
                compression="lz4",
                row_group_size=ROW_GROUP_ROWS,
            )
            written.append(target)
        for target in written:  # new files first: a reader sees duplicates, never a gap
            storage.move_into_place(target, storage.join(location, posixpath.basename(target)))
        for old in files:
            storage.remove(old)
    finally:
        storage.remove(work)
    return len(files), entries_before, entries_after


# Prefect tasks ----------------------------------------------------------------------------


@task(
    name="fetch-cached",
    task_run_name="fetch-cached · cache file {file_index}",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_if_transient,
)
def fetch_cached(plan: PlanRef, params: EnrichParams, file_index: int) -> int:
    """Copy this run's hits out of one cache file into staging (bucketed like the rows)."""
    storage.use_credentials(params.storage_credentials)
    assert plan.hits_uri is not None
    uri = plan.cache_files[file_index]
    hits = storage.read_parquet(plan.hits_uri).filter(pl.col(FILE) == file_index)
    copied = fetch(uri, file_index, hits, plan.shards, Staging(plan.staging).cached())
    if copied != hits.height:
        raise CacheFileGoneError(
            f"the cache file {uri} held {copied} of the {hits.height} results it held when the "
            "run looked them up; a compaction or purge probably ran. Run the flow again (its "
            "lookup reads the current files); nothing was submitted."
        )
    return copied


@task(name="stage-cache")
def stage_cache(plan: PlanRef, params: EnrichParams, written: list[WriteRef]) -> str | None:
    """After the gate passed: the run's new results as one pending file in the cache."""
    if plan.cache_folder is None:
        return None
    parts = [w.cache_add_uri for w in written if w.cache_add_uri]
    if not parts:
        return None
    write_options(plan.cache_folder, params)
    return stage_additions(parts, plan.cache_folder, plan.run_key)


@task(name="update-cache")
def update_cache(pending: str) -> str:
    """After publishing: the pending file joins the cache. A crash before this step leaves the
    file pending; the next lookup promotes it."""
    target = promote(pending)
    get_run_logger().info("Added this run's new results to the cache: %s", target)
    return target
