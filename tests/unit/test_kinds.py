"""Kinds as plug-ins: every kind behind the one protocol, and the extract kind end to end as plain
functions (request line -> answer -> typed columns and rejected rows -> gate checks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import kinds
from schemas.params import EnrichParams, Kind, KindOptions
from tasks.core.checks import SUITES_DIR, derive, validate
from tasks.core.columns import TEXT_KEY
from tasks.core.packing import build, jsonl
from tasks.core.parsing import parse
from tasks.cost import completion_tokens_per_text
from tasks.edges.tokens import TOKENS

OPTIONS: dict[Kind, dict[str, Any]] = {
    Kind.classification: {"labels": ["yes", "no"]},
    Kind.classifier: {"classifier_model": "ft:classifier:x"},
    Kind.extract: {"json_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "year": {"type": "integer"},
        "price": {"type": "number"},
        "urgent": {"type": "boolean"},
        "mood": {"enum": ["calm", "angry"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["city", "year", "mood"],
}


def params(kind: Kind, **options: Any) -> EnrichParams:
    return EnrichParams(
        input="x",
        id_column="id",
        text_column="text",
        output="y",
        kind=kind,
        options=KindOptions(**(OPTIONS.get(kind, {}) | options)),
    )


def test_every_kind_of_the_form_is_a_plug_in_with_a_suite() -> None:
    assert set(kinds.REGISTRY) == {k.value for k in Kind}
    for kind in Kind:
        plugin = kinds.get(kind)
        assert (SUITES_DIR / f"{plugin.suite}.json").exists(), kind
        assert params(kind).endpoint == plugin.endpoint


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_builds_json_request_lines(kind: Kind) -> None:
    run = params(kind)
    text: Any = 'a text, with "quotes" and ünïcode\n'
    if kind is Kind.chat_moderation:
        text = [{"role": "user", "content": text}]
    frame = pl.DataFrame({TEXT_KEY: pl.Series([7], dtype=pl.UInt64), "text": [text]})
    built = build(frame, run, shard=1, attempt=0, tokens=TOKENS)
    (line,) = (json.loads(raw) for raw in jsonl(built.lines)["line"])
    assert line["custom_id"] == "00001-0-000000"
    body = line["body"]
    if kinds.get(kind).packing is not None:
        assert body["input"] == [text]
    elif kinds.get(kind).tokenizer == "chat":
        assert body["messages"][1] == {"role": "user", "content": text}
        assert body["response_format"]["json_schema"]["strict"] is True
    else:
        assert body["input"] == text


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        (None, "needs options.json_schema"),
        ({"type": "array"}, "needs options.json_schema"),
        ({"properties": {}}, "at least one entry"),
        ({"properties": {"a": {"type": "object"}}}, "flat properties only"),
        ({"properties": {"a": {"type": "array", "items": {"type": "array"}}}}, "flat properties"),
        ({"properties": {"a": {"type": "array"}}}, "an array needs 'items'"),
        ({"properties": {"a b": {"type": "string"}}}, "cannot be a column name"),
        ({"properties": {"model": {"type": "string"}}}, "cannot be a column name"),
        ({"properties": {"a": {"enum": []}}}, "non-empty list"),
        ({"properties": {"a": {"enum": [1, "x"]}}}, "an enum of one type"),
        ({"properties": {"a": {"type": "integer", "enum": ["x", "y"]}}}, "must be a integer"),
        ({"properties": {"a": {"type": "integer", "enum": [1, 2.5]}}}, "must be a integer"),
        ({"properties": {"a": {"type": "string", "enum": [True]}}}, "must be a string"),
        ({"properties": {"a": {"type": "string"}}, "required": ["b"]}, "must list property"),
    ],
)
def test_extract_refuses_schemas_it_cannot_make_columns_of(schema: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        params(Kind.extract, json_schema=schema)


def chat_line(custom_id: str, content: str | None, finish: str = "stop") -> dict[str, Any]:
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "mistral-small-2506",
        "created": 1,
        "usage": {"prompt_tokens": 30, "completion_tokens": 20},
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content},
            }
        ],
    }
    return {"id": "l", "custom_id": custom_id, "response": {"status_code": 200, "body": body}}


def test_extract_answers_become_typed_columns_rejected_rows_and_gate_checks(
    tmp_path: Path,
) -> None:
    run = params(Kind.extract, json_schema=SCHEMA)
    good = {
        "city": "Lyon",
        "year": 2024,
        "price": 12.5,
        "urgent": True,
        "mood": "calm",
        "tags": ["a", "b"],
        "scores": [1, 2],
    }
    answers = [
        json.dumps(good),
        json.dumps(good | {"year": "2024", "urgent": 1, "city": 5}),  # three wrong types
        json.dumps(good | {"mood": "sad", "scores": [1, "x"]}),  # outside enum, wrong item type
        json.dumps({"price": 1.0}),  # city, year and mood missing
        '{"city": "Par',  # cut off
        "Sorry, I cannot help.",  # not JSON
        "[1, 2]",  # JSON, not an object
        None,  # no content
    ]
    frame = pl.DataFrame(
        {
            TEXT_KEY: pl.Series(range(1, len(answers) + 1), dtype=pl.UInt64),
            "text": [f"text {i}" for i in range(len(answers))],
        }
    )
    built = build(frame, run, shard=0, attempt=0, tokens=TOKENS)
    ids = built.manifest["custom_id"].to_list()
    lines = [
        chat_line(cid, content, "length" if i == 4 else "stop")
        for i, (cid, content) in enumerate(zip(ids, answers, strict=True))
    ]
    (tmp_path / "o.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    parsed = parse(run, built.manifest, tmp_path / "o.jsonl", None, "job-1", "SUCCESS")

    failures = {r[TEXT_KEY]: r for r in parsed.failures.iter_rows(named=True)}
    assert {k: (r["reason"], r["transient"]) for k, r in failures.items()} == dict.fromkeys(
        [5, 6, 7, 8], ("invalid_answer", False)
    )
    assert "cut off at 1024 tokens" in failures[5]["message"]
    assert failures[6]["message"] == "the answer is not valid JSON"
    assert failures[7]["message"] == "the answer is not a JSON object"
    assert failures[8]["message"] == "the answer has no content"

    results = parsed.results.sort(TEXT_KEY)
    assert results.schema["year"] == pl.Int64 and results.schema["price"] == pl.Float64
    assert results.schema["urgent"] == pl.Boolean
    assert results.schema["tags"] == pl.List(pl.String)
    assert results.schema["scores"] == pl.List(pl.Int64)
    first = results.row(0, named=True)
    assert {k: first[k] for k in good} == good

    enriched = results.with_columns(pl.col(TEXT_KEY).cast(pl.String).alias("id"))
    checks = derive(run, enriched)
    counts = checks.select("type_errors", "missing_required", "enum_errors").rows()
    assert counts == [(0, 0, 0), (3, 0, 0), (1, 0, 1), (0, 3, 0)]
    plugin = kinds.get(Kind.extract)
    outcome = validate(checks, plugin.suite, plugin.suite_parameters(run, [], checks))
    failed = {(f.column, tuple(f.example_ids)) for f in outcome.failures}
    assert failed == {
        ("type_errors", ("2", "3")),
        ("missing_required", ("4",)),
        ("enum_errors", ("3",)),
    }


def test_extract_estimates_count_instructions_and_schema_on_every_request() -> None:
    plain = params(Kind.extract, json_schema=SCHEMA)
    longer = params(Kind.extract, json_schema=SCHEMA, instructions="word " * 200)
    frame = pl.DataFrame({TEXT_KEY: pl.Series([1, 2, 3], dtype=pl.UInt64), "text": ["a", "b", "c"]})
    a, b = build(frame, plain, 0, 0, TOKENS), build(frame, longer, 0, 0, TOKENS)
    texts_only = int(a.manifest["_tokens"].sum())
    assert a.tokens > texts_only + 3 * 50  # the schema alone is over 50 tokens a request
    # 200 words of instructions instead of the default (about 25 tokens), on three requests
    assert b.tokens - a.tokens >= 3 * 150
    assert completion_tokens_per_text(plain) > 20


def test_enums_of_every_type_are_checked_by_the_gate(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "level": {"enum": [1, 2, 3]},  # no type: integers
            "ratio": {"type": "number", "enum": [1, 2.5]},
            "flag": {"enum": [True]},
            "sizes": {"type": "array", "items": {"enum": ["s", "m"]}},
        },
    }
    run = params(Kind.extract, json_schema=schema)
    answers = [
        {"level": 2, "ratio": 2.5, "flag": True, "sizes": ["s"]},
        {"level": 4, "ratio": 1, "flag": False, "sizes": ["s", "xl"]},
    ]
    frame = pl.DataFrame({TEXT_KEY: pl.Series([1, 2], dtype=pl.UInt64), "text": ["a", "b"]})
    built = build(frame, run, shard=0, attempt=0, tokens=TOKENS)
    ids = built.manifest["custom_id"].to_list()
    lines = [chat_line(cid, json.dumps(a)) for cid, a in zip(ids, answers, strict=True)]
    (tmp_path / "o.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    parsed = parse(run, built.manifest, tmp_path / "o.jsonl", None, "job-1", "SUCCESS")
    enriched = parsed.results.sort(TEXT_KEY).with_columns(pl.col(TEXT_KEY).alias("id"))
    assert enriched.schema["level"] == pl.Int64 and enriched.schema["ratio"] == pl.Float64
    counts = derive(run, enriched).select("type_errors", "enum_errors").rows()
    assert counts == [(0, 0), (0, 3)]  # level 4, flag false, size xl


def test_an_answer_that_is_a_json_string_is_not_an_object(tmp_path: Path) -> None:
    run = params(Kind.extract)
    frame = pl.DataFrame({TEXT_KEY: pl.Series([1], dtype=pl.UInt64), "text": ["a"]})
    built = build(frame, run, shard=0, attempt=0, tokens=TOKENS)
    quoted = json.dumps(json.dumps({"city": "Lyon"}))  # "{\"city\": \"Lyon\"}"
    line = chat_line(built.manifest["custom_id"][0], quoted)
    (tmp_path / "o.jsonl").write_text(json.dumps(line))
    parsed = parse(run, built.manifest, tmp_path / "o.jsonl", None, "job-1", "SUCCESS")
    assert parsed.results.height == 0
    assert parsed.failures["message"].to_list() == ["the answer is not a JSON object"]
