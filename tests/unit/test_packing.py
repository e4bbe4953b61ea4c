"""Request packing and result unpacking, as plain functions (no Prefect, no network)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinds import Packing
from schemas.params import EnrichParams, Kind, KindOptions
from tasks.core import parsing as results
from tasks.core.columns import TEXT_KEY
from tasks.core.packing import build, jsonl, pack
from tasks.core.parsing import parse
from tasks.edges.tokens import TOKENS

MAX_INPUTS_PER_REQUEST, MAX_TOKENS_PER_REQUEST = Packing().max_inputs, Packing().max_tokens


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 8_192), min_size=0, max_size=3_000),
    st.integers(1, 600),
    st.integers(8_192, 20_000),
)
def test_pack_keeps_every_line_within_both_limits(
    tokens: list[int], max_inputs: int, max_tokens: int
) -> None:
    counts = np.array(tokens, dtype=np.int64)
    lines = pack(counts, max_inputs, max_tokens)
    assert lines.shape == counts.shape
    if not tokens:
        return
    assert (
        lines[0] == 0 and np.all(np.diff(lines) >= 0) and np.all(np.diff(lines) <= 1)
    )  # contiguous
    per_line_tokens = np.bincount(lines, weights=counts)
    per_line_inputs = np.bincount(lines)
    assert per_line_tokens.max() <= max_tokens
    assert per_line_inputs.max() <= max_inputs


def test_pack_fills_lines() -> None:
    # Short texts: lines are cut by count; a token-window boundary may add one short line.
    lines = pack(np.full(2_000, 10, dtype=np.int64), MAX_INPUTS_PER_REQUEST, MAX_TOKENS_PER_REQUEST)
    assert np.bincount(lines).tolist() == [512, 512, 512, 101, 363]
    # Long texts: lines are cut by tokens; windows of (limit - longest + 1) tokens keep every
    # line under the limit at the price of some fill (20 lines would be optimal here).
    lines = pack(
        np.full(100, 3_000, dtype=np.int64), MAX_INPUTS_PER_REQUEST, MAX_TOKENS_PER_REQUEST
    )
    assert np.bincount(lines).max() == 5 and lines.max() + 1 <= 25


def fake_embedding(text: str) -> list[float]:
    """A result that identifies its text, to check that each text gets its own."""
    return [float(len(text)), float(sum(map(ord, text)) % 997)]


def answer(request_lines: list[dict[str, object]], rng: random.Random) -> str:
    """What a batch service would return: one output line per request, in shuffled order."""
    out = []
    for line in request_lines:
        inputs = line["body"]["input"]  # type: ignore[index]
        data = [
            {"object": "embedding", "embedding": fake_embedding(t), "index": i}
            for i, t in enumerate(inputs)
        ]
        rng.shuffle(data)  # even the items within a line may come in any order: `index` says which
        body = {
            "id": "x",
            "object": "list",
            "data": data,
            "model": "m",
            "usage": {"prompt_tokens": 1, "completion_tokens": 0},
        }
        out.append(
            {
                "id": "b",
                "custom_id": line["custom_id"],
                "response": {"status_code": 200, "body": body},
                "error": None,
            }
        )
    rng.shuffle(out)
    return "\n".join(json.dumps(o) for o in out)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=1_500, unique=True),
    st.randoms(),
    st.sampled_from([results.PIECE_BYTES, 4_096, 97]),  # output parsed in one piece or many
)
def test_packing_then_unpacking_gives_every_text_its_own_result(
    texts: list[str], rng: random.Random, piece_bytes: int
) -> None:
    params = EnrichParams(
        input="x", id_column="id", text_column="text", output="y", kind=Kind.embeddings
    )
    frame = (
        pl.DataFrame({"text": texts})
        .with_columns(pl.col("text").hash(seed=1).alias(TEXT_KEY))
        .sort(TEXT_KEY)
    )
    built = build(frame.select(TEXT_KEY, "text"), params, shard=3, attempt=0, tokens=TOKENS)
    lines = [json.loads(line) for line in jsonl(built.lines)["line"]]
    assert sum(len(line["body"]["input"]) for line in lines) == len(texts)
    assert len({line["custom_id"] for line in lines}) == len(lines)

    tmp = Path(__import__("tempfile").mkdtemp())
    (tmp / "out.jsonl").write_text(answer(lines, random.Random(rng.random())))
    default, results.PIECE_BYTES = results.PIECE_BYTES, piece_bytes
    try:
        parsed = parse(params, built.manifest, tmp / "out.jsonl", None, "job-1", "SUCCESS")
    finally:
        results.PIECE_BYTES = default
    assert parsed.failures.height == 0 and parsed.missing_lines == 0
    got = parsed.results.join(frame, on=TEXT_KEY)
    assert got.height == len(texts)
    for text, embedding in got.select("text", "embedding").iter_rows():
        assert embedding == fake_embedding(text)


@pytest.mark.parametrize("piece_bytes", [results.PIECE_BYTES, 64])
def test_missing_duplicated_and_failed_lines_are_all_accounted_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece_bytes: int
) -> None:
    monkeypatch.setattr(results, "PIECE_BYTES", piece_bytes)  # 64: a piece per line or less
    params = EnrichParams(
        input="x",
        id_column="id",
        text_column="text",
        output="y",
        kind=Kind.classification,
        options=KindOptions(labels=["yes", "no"]),
    )
    frame = pl.DataFrame(
        {TEXT_KEY: pl.Series([1, 2, 3, 4, 5], dtype=pl.UInt64), "text": list("abcde")}
    )
    built = build(frame, params, shard=0, attempt=0, tokens=TOKENS)
    ids = built.manifest["custom_id"].to_list()

    def ok(cid: str, label: str) -> dict[str, object]:
        content = json.dumps({"label": label})
        body = {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "created": 1,
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ],
        }
        return {
            "id": "l",
            "custom_id": cid,
            "response": {"status_code": 200, "body": body},
            "error": None,
        }

    output = [
        ok(ids[0], "yes"),
        ok(ids[0], "no"),
        ok(ids[1], "maybe"),
        ok(ids[2], "no"),
    ]  # 0 twice; 1 invalid
    errors = [
        {
            "custom_id": ids[3],
            "response": {"status_code": 400, "body": {"object": "error", "message": "bad request"}},
            "error": None,
        },
    ]  # ids[4] never answered
    (tmp_path / "o.jsonl").write_text("\n".join(json.dumps(x) for x in output))
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(x) for x in errors))
    parsed = parse(
        params, built.manifest, tmp_path / "o.jsonl", tmp_path / "e.jsonl", "job-9", "FAILED"
    )

    assert parsed.duplicate_lines == 1 and parsed.missing_lines == 1
    # An answer outside the labels is kept: the validation gate, not the parser, judges labels.
    assert dict(parsed.results.select(TEXT_KEY, "label").iter_rows()) == {
        1: "yes",
        2: "maybe",
        3: "no",
    }
    failures = {row[TEXT_KEY]: row for row in parsed.failures.iter_rows(named=True)}
    assert set(failures) == {4, 5}
    assert failures[4]["reason"] == "api_error" and failures[4]["message"] == "bad request"
    assert failures[4]["status_code"] == 400 and not failures[4]["transient"]
    assert failures[5]["reason"] == "not_processed" and failures[5]["transient"]
    assert "job-9 ended FAILED" in failures[5]["message"]
    assert parsed.prompt_tokens == 12
