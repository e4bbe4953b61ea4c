"""Requests: unique texts of a shard → JSONL request lines, packed within the API's limits.

Several texts share one request line where the endpoint takes a list (embeddings, moderations,
classifications): at most 512 inputs and 16,384 tokens a line, counted with Mistral's offline
tokenizers. Every line has a deterministic ``custom_id`` and a manifest maps each (line, position)
back to its text key, so results are unpacked exactly.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from prefect import task

import kinds
from kinds import Packing
from schemas.params import EnrichParams
from schemas.refs import PlanRef, ShardRef
from tasks import storage
from tasks.memory import in_shard_slot
from tasks.plan import BUCKET, REJECT, TEXT_KEY, TEXT_KEY_2, InputError, normalised
from tasks.tokens import TokenCounter

INPUT_CONTEXT_TOKENS = Packing().context_tokens
MAX_SHARD_BYTES = 400 * 1024 * 1024  # under the 512 MB file limit, with room to spare

_tokens = TokenCounter()


def pack(tokens: np.ndarray, max_inputs: int, max_tokens: int) -> np.ndarray:
    """A line number per text, in order: no line over ``max_inputs`` texts or ``max_tokens``.

    Vectorised: a text goes to the token window its running total ends in. With a window of
    ``max_tokens - longest + 1`` tokens a line sums to at most ``max_tokens``; windows are then cut
    every ``max_inputs`` texts. Every text must fit a line on its own (``longest <= max_tokens``).
    """
    if tokens.size == 0:
        return np.zeros(0, dtype=np.int64)
    longest = int(tokens.max())
    if longest > max_tokens:
        raise ValueError(f"a text of {longest} tokens cannot fit a {max_tokens}-token request")
    window = max_tokens - longest + 1
    by_tokens = (np.cumsum(tokens) - 1) // window
    index = np.arange(tokens.size)
    starts = np.flatnonzero(np.r_[True, np.diff(by_tokens) != 0])
    window_start = starts[np.searchsorted(starts, index, side="right") - 1]
    by_count = (index - window_start) // max_inputs
    changed = np.r_[True, (np.diff(by_tokens) != 0) | (np.diff(by_count) != 0)]
    return np.cumsum(changed) - 1


def custom_id(shard: int, attempt: int) -> pl.Expr:
    """``"<shard>-<attempt>-<line>"``: the same texts give the same ids on every run."""
    return pl.format(
        "{}-{}-{}",
        pl.lit(f"{shard:05d}"),
        pl.lit(str(attempt)),
        pl.col("_line").cast(pl.String).str.zfill(6),
    ).alias("custom_id")


@dataclass(frozen=True)
class BuiltRequests:
    lines: pl.DataFrame  # custom_id, body (JSON text)
    manifest: pl.DataFrame  # custom_id, position, _text_key
    too_long: pl.DataFrame  # _text_key, tokens
    tokens: int


def build(texts: pl.DataFrame, params: EnrichParams, shard: int, attempt: int) -> BuiltRequests:
    """Request lines for unique texts (``_text_key``, text column), sorted by key."""
    kind = kinds.kind_of(params)
    text = pl.col(params.text_column)
    counted = texts.select(kind.input.token_text(text)).to_series().to_list()
    texts = texts.with_columns(
        pl.Series("_tokens", _tokens.per_input(kind.tokenizer or params.model, counted))
    )
    too_long = pl.DataFrame(schema={TEXT_KEY: pl.UInt64, "_tokens": pl.Int64})
    if kind.packing is not None:
        over = texts["_tokens"] > kind.packing.context_tokens
        too_long = texts.filter(over).select(TEXT_KEY, "_tokens")
        texts = texts.filter(~over)
        line = pack(texts["_tokens"].to_numpy(), kind.packing.max_inputs, kind.packing.max_tokens)
    else:
        line = np.arange(texts.height, dtype=np.int64)
    texts = texts.with_columns(pl.Series("_line", line)).with_columns(custom_id(shard, attempt))
    manifest = texts.select(
        "custom_id",
        pl.int_range(pl.len()).over("_line").cast(pl.Int64).alias("position"),
        TEXT_KEY,
        "_tokens",
    )
    if kind.packing is not None:
        texts = texts.group_by("_line", maintain_order=True).agg(
            pl.first("custom_id"), text.alias(params.text_column)
        )
    lines = texts.select("custom_id", kind.body(params, text).alias("body"))
    # The estimate counts what is sent: the texts, and what every request adds (instructions,
    # a schema); texts over the context are refused, not sent.
    overhead = sum(_tokens.text(extra) for extra in kind.prompt_overhead(params.options))
    sent_tokens = int(manifest["_tokens"].sum()) + overhead * lines.height if lines.height else 0
    return BuiltRequests(lines, manifest, too_long, sent_tokens)


def jsonl(lines: pl.DataFrame) -> pl.DataFrame:
    """One batch input line per request, as JSON text (a body is JSON text already)."""
    return lines.select(
        pl.concat_str(
            pl.lit('{"custom_id":"'),  # custom ids are ASCII digits and dashes
            "custom_id",
            pl.lit('","body":'),
            pl.col("body"),
            pl.lit("}"),
        ).alias("line")
    )


def shard_texts(plan: PlanRef, params: EnrichParams, shard: int) -> pl.DataFrame:
    """The unique normalised texts of a shard that the cache does not hold, sorted by key; a
    hash collision is refused, not guessed."""
    if not storage.exists(plan.rows_uri(shard)):  # no row hashed into this shard
        return pl.DataFrame(schema={TEXT_KEY: pl.UInt64, params.text_column: pl.String})
    rows = storage.scan_parquet(plan.rows_uri(shard))
    unique = (
        rows.filter(pl.col(REJECT).is_null())
        .select(TEXT_KEY, TEXT_KEY_2, normalised(params))
        .unique(maintain_order=False)
    )
    if plan.hits_uri:
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


def attempt_dir(plan: PlanRef, shard: int, attempt: int) -> str:
    return storage.join(plan.staging, "shards", f"{shard:05d}", f"attempt-{attempt}")


def write_shard(built: BuiltRequests, plan: PlanRef, shard: int, attempt: int) -> ShardRef:
    """Write the JSONL, manifest and too-long texts to staging; hash the JSONL for identity."""
    folder = attempt_dir(plan, shard, attempt)
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


@task(name="build-requests")
def build_requests(plan: PlanRef, params: EnrichParams, shard: int) -> ShardRef | None:
    """The first attempt of a shard; None when the shard has no new text. A shard whose new
    texts are all over the model's context has 0 requests: it is recorded, never submitted."""
    return in_shard_slot(_first_attempt, plan, params, shard)


def _first_attempt(plan: PlanRef, params: EnrichParams, shard: int) -> ShardRef | None:
    texts = shard_texts(plan, params, shard)
    if texts.height == 0:
        return None
    return write_shard(build(texts, params, shard, 0), plan, shard, 0)


@task(name="build-retry-requests")
def build_retry_requests(
    plan: PlanRef, params: EnrichParams, shard: int, attempt: int, failures_uri: str
) -> ShardRef | None:
    """A follow-up attempt for the texts that failed transiently in the previous one."""
    failures = storage.read_parquet(failures_uri)
    keys = failures.filter(pl.col("transient"))[TEXT_KEY]
    texts = shard_texts(plan, params, shard).filter(pl.col(TEXT_KEY).is_in(keys.implode()))
    if texts.height == 0:
        return None
    return write_shard(build(texts, params, shard, attempt), plan, shard, attempt)
