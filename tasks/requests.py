"""Requests: unique texts of a shard → JSONL request lines, packed within the API's limits.

Several texts share one request line where the endpoint takes a list (embeddings, moderations,
classifications): at most 512 inputs and 16,384 tokens a line, counted with Mistral's offline
tokenizers. Every line has a deterministic ``custom_id`` and a manifest maps each (line, position)
back to its text key, so results are unpacked exactly.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import polars as pl
from prefect import task

from schemas.params import EnrichParams
from schemas.refs import PlanRef, ShardRef
from tasks.core.columns import BUCKET, REJECT, TEXT_KEY, TEXT_KEY_2
from tasks.core.inputs import InputError
from tasks.core.keys import normalised
from tasks.core.layout import Staging
from tasks.core.packing import MAX_SHARD_BYTES, BuiltRequests, build, jsonl
from tasks.edges import storage
from tasks.edges.tokens import TOKENS
from tasks.memory import on_shard_slot


def shard_texts(
    plan: PlanRef, params: EnrichParams, shard: int, *, include_cached: bool = False
) -> pl.DataFrame:
    """The unique normalised texts of a shard that the cache does not hold (every one with
    ``include_cached``), sorted by key; a hash collision is refused, not guessed."""
    if not storage.exists(Staging(plan.staging).rows(shard)):  # no row hashed into this shard
        return pl.DataFrame(schema={TEXT_KEY: pl.UInt64, params.text_column: pl.String})
    rows = storage.scan_parquet(Staging(plan.staging).rows(shard))
    unique = (
        rows.filter(pl.col(REJECT).is_null())
        .select(TEXT_KEY, TEXT_KEY_2, normalised(params))
        .unique(maintain_order=False)
    )
    if plan.hits_uri and not include_cached:
        hits = (
            storage.scan_parquet(plan.hits_uri)
            .filter(pl.col(BUCKET) == shard)
            .select(TEXT_KEY, TEXT_KEY_2)
        )
        unique = unique.join(hits, on=[TEXT_KEY, TEXT_KEY_2], how="anti")
    pairs = unique.drop(TEXT_KEY_2).sort(TEXT_KEY).collect()
    if pairs[TEXT_KEY].is_duplicated().any():
        raise InputError(
            f"two different texts in shard {shard} share a 64-bit text key; "
            "change shard_size and run again"
        )
    return pairs


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_shard(built: BuiltRequests, plan: PlanRef, shard: int, attempt: int) -> ShardRef:
    """Write the JSONL, manifest and too-long texts to staging; hash the JSONL for identity."""
    folder = Staging(plan.staging).attempt(shard, attempt)
    requests_uri = storage.join(folder, "requests.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, "requests.jsonl")
        jsonl(built.lines).write_csv(local, include_header=False, quote_style="never")
        size = local.stat().st_size
        if size > MAX_SHARD_BYTES:
            raise InputError(
                f"shard {shard} makes a {size / 1e6:.0f} MB request file (limit "
                f"{MAX_SHARD_BYTES / 1e6:.0f} MB): lower shard_size"
            )
        content_hash = file_sha256(local)
        with local.open("rb") as source, storage.open_write(requests_uri) as sink:
            while block := source.read(1 << 20):
                sink.write(block)
    manifest_uri = storage.join(folder, "manifest.parquet")
    storage.write_parquet(built.manifest.to_arrow(), manifest_uri)
    too_long_uri = None
    if built.too_long.height:
        too_long_uri = storage.join(folder, "too_long.parquet")
        storage.write_parquet(built.too_long.to_arrow(), too_long_uri)
    return ShardRef(
        shard=shard,
        attempt=attempt,
        requests_uri=requests_uri,
        manifest_uri=manifest_uri,
        requests=built.lines.height,
        texts=built.manifest.height,  # texts sent: those over the context are not
        tokens=built.tokens,
        content_hash=content_hash,
        too_long_uri=too_long_uri,
    )


def first_attempt(plan: PlanRef, params: EnrichParams, shard: int) -> ShardRef | None:
    """The first attempt of a shard; None when the shard has no new text. A shard whose new
    texts are all over the model's context has 0 requests: it is recorded, never submitted."""
    storage.use_credentials(params.storage_credentials)  # a task of its own, maybe on Dask
    return _attempt(shard_texts(plan, params, shard), plan, params, shard, 0)


def follow_up(
    plan: PlanRef, params: EnrichParams, shard: int, attempt: int, keys: pl.Series
) -> ShardRef | None:
    """An attempt for the shard's texts whose ``_text_key`` is in ``keys``: cached texts too, as
    a retried text may be one sent again because an older model version answered it."""
    texts = shard_texts(plan, params, shard, include_cached=True)
    return _attempt(
        texts.filter(pl.col(TEXT_KEY).is_in(keys.implode())), plan, params, shard, attempt
    )


def _attempt(
    texts: pl.DataFrame, plan: PlanRef, params: EnrichParams, shard: int, attempt: int
) -> ShardRef | None:
    """The requests of attempt ``attempt`` for ``texts``; None when there are none."""
    if texts.height == 0:
        return None
    return write_shard(build(texts, params, shard, attempt, TOKENS), plan, shard, attempt)


build_requests = task(name="build-requests", task_run_name="build-requests · shard {shard}")(
    on_shard_slot(first_attempt)
)


@task(
    name="build-retry-requests",
    task_run_name="build-retry-requests · shard {shard} · attempt {attempt}",
)
def build_retry_requests(
    plan: PlanRef, params: EnrichParams, shard: int, attempt: int, failures_uri: str
) -> ShardRef | None:
    """A follow-up attempt for the texts that failed transiently in the previous one."""
    storage.use_credentials(params.storage_credentials)
    failures = storage.read_parquet(failures_uri)
    return follow_up(plan, params, shard, attempt, failures.filter(pl.col("transient"))[TEXT_KEY])
