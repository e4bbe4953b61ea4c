"""Kinds as plug-ins: every kind of the form behind the one protocol."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

import kinds
from schemas.params import EnrichParams, Kind, KindOptions
from tasks.plan import TEXT_KEY
from tasks.requests import build, jsonl
from tasks.validate import SUITES_DIR

OPTIONS: dict[Kind, dict[str, Any]] = {
    Kind.classification: {"labels": ["yes", "no"]},
    Kind.classifier: {"classifier_model": "ft:classifier:x"},
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
    built = build(frame, run, shard=1, attempt=0)
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
