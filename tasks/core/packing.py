"""Packing: unique texts of a shard → JSONL request lines within the endpoint's limits.

Several texts share one request line where the kind packs (embeddings, moderations,
classifications): at most 512 inputs and 16,384 tokens a line, counted with Mistral's offline
tokenizers. Every line has a deterministic ``custom_id`` and a manifest maps each (line, position)
back to its text key, so results are unpacked exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import polars as pl

import kinds
from kinds import Packing
from schemas.params import EnrichParams
from tasks.core.columns import TEXT_KEY

INPUT_CONTEXT_TOKENS = Packing().context_tokens


MAX_SHARD_BYTES = 400 * 1024 * 1024  # under the 512 MB file limit, with room to spare


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


class TokenCounting(Protocol):
    """What packing needs of a tokenizer (``tasks.edges.tokens.TokenCounter``)."""

    def per_input(self, model: str, texts: Sequence[str]) -> np.ndarray: ...

    def text(self, text: str) -> int: ...


def build(
    texts: pl.DataFrame,
    params: EnrichParams,
    shard: int,
    attempt: int,
    tokens: TokenCounting,
) -> BuiltRequests:
    """Request lines for unique texts (``_text_key``, text column), sorted by key."""
    kind = kinds.kind_of(params)
    text = pl.col(params.text_column)
    counted = texts.select(kind.input.token_text(text)).to_series().to_list()
    texts = texts.with_columns(
        pl.Series("_tokens", tokens.per_input(kind.tokenizer or params.model, counted))
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
    overhead = sum(tokens.text(extra) for extra in kind.prompt_overhead(params.options))
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
