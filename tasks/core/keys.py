"""Identities: the keys that make every text, run and job deterministic, so reruns find what
already exists instead of paying again."""

from __future__ import annotations

import hashlib
import json
import re

import polars as pl

import kinds
from schemas.params import EnrichParams
from tasks.core.columns import KEY_SCHEME, TEXT_KEY, TEXT_KEY_2


def normalised(params: EnrichParams) -> pl.Expr:
    """The text as it is sent and keyed: Unicode NFC (canonically equal texts are one text).
    Case and whitespace are kept: they change what the model sees."""
    return kinds.kind_of(params).input.normalised(pl.col(params.text_column))


def key_seeds(params: EnrichParams) -> tuple[int, int]:
    """Two hash seeds drawn from every option that changes a result (kind, model, labels, ...):
    a text's key differs per model and options, so a changed option misses the cache."""
    identity = json.dumps({"scheme": KEY_SCHEME, **params.result_options()}, sort_keys=True)
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")


def text_keys(params: EnrichParams) -> list[pl.Expr]:
    """Two independent 64-bit hashes of (options, normalised text). The first buckets rows and
    joins results inside a run; both together (128 bits) key the content cache."""
    first, second = key_seeds(params)
    text = normalised(params)
    return [text.hash(seed=first).alias(TEXT_KEY), text.hash(seed=second).alias(TEXT_KEY_2)]


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


def job_key(content_hash: str, options: dict[str, object]) -> str:
    identity = json.dumps({"content": content_hash, "options": options}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


ARTIFACT_KINDS = ("summary", "plan", "progress", "results", "validation", "quarantine")


def table_name(output: str) -> str:
    """The table's name as people say it: the last folder of its URI (``s3://b/t/comments`` is
    ``comments``)."""
    return output.rstrip("/").rsplit("/", 1)[-1] or output


def artifact_key(params: EnrichParams, what: str) -> str:
    """``enrich-<table>-<kind>-<what>``: one history per table and kind in Prefect's artifact
    list, the same across partitions and runs. Prefect allows lowercase letters, digits and
    dashes only, so ``adhoc_strict`` becomes ``adhoc-strict``."""
    if what not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact {what!r}; one of {', '.join(ARTIFACT_KINDS)}")
    table = re.sub(r"[^a-z0-9]+", "-", table_name(params.output).lower()).strip("-") or "table"
    return f"enrich-{table[:60].rstrip('-')}-{params.kind.value}-{what}"
