"""Plain functions of the emulator, without a server."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import content
from emulator.catalog import Catalog
from emulator.faults import FaultInjector, FaultPlan, route_matches
from emulator.lines import corrupt, mistyped
from emulator.store import count_lines
from emulator.tokens import TokenMeter
from emulator.vectors_json import json_rows


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=12), st.sampled_from([8, 256, 1024]))
def test_embeddings_are_unit_norm_and_independent_of_batch_mates(
    texts: list[str], dim: int
) -> None:
    together = content.embed("codestral-embed", texts, dim, 3072)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    for i, text in enumerate(texts):
        alone = content.embed("codestral-embed", [text], dim, 3072)[0]
        assert np.array_equal(alone, together[i])  # bit for bit: the batch does not matter


def test_models_differ_and_matryoshka_prefix() -> None:
    embed = content.embed("mistral-embed", ["same text"], 1024, 1024)
    code = content.embed("codestral-embed", ["same text"], 1024, 3072)
    assert not np.allclose(embed, code)
    full = content.embed("codestral-embed", ["same text"], 3072, 3072)[0]
    short = content.embed("codestral-embed", ["same text"], 256, 3072)[0]
    cosine = float(full[:256] @ short) / float(np.linalg.norm(full[:256]))
    assert cosine == pytest.approx(1.0, abs=1e-5)  # the first dims, renormalised


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5, width=32), min_size=0, max_size=40))
def test_vector_json_round_trip(values: list[float]) -> None:
    vectors = np.array([values, values[::-1]], dtype=np.float32).reshape(2, len(values))
    parsed = json.loads(orjson.dumps(json_rows(vectors)))
    np.testing.assert_allclose(np.array(parsed).reshape(vectors.shape), vectors, atol=6e-8)


def test_quantised_encodings() -> None:
    vectors = content.embed("codestral-embed", ["a", "b"], 64, 3072)
    assert content.quantise(vectors, "int8").dtype == np.int8
    assert content.quantise(vectors, "uint8").min() >= 0
    assert content.quantise(vectors, "binary").shape == (2, 8)  # 64 bits packed into 8 bytes


json_schemas = st.recursive(
    st.one_of(
        st.just({"type": "string"}),
        st.just({"type": "integer", "minimum": 1, "maximum": 5}),
        st.just({"type": "number"}),
        st.just({"type": "boolean"}),
        st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5, unique=True).map(
            lambda options: {"type": "string", "enum": options}
        ),
    ),
    lambda children: st.one_of(
        st.dictionaries(
            st.text("abcdefgh", min_size=1, max_size=4), children, min_size=1, max_size=4
        ).map(
            lambda props: {
                "type": "object",
                "properties": props,
                "required": list(props),
                "additionalProperties": False,
            }
        ),
        children.map(lambda item: {"type": "array", "items": item, "minItems": 1}),
        children.map(lambda item: {"anyOf": [item, {"type": "null"}]}),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(json_schemas, st.text(max_size=40))
def test_structured_answers_are_valid_for_their_schema(
    schema: dict[str, object], text: str
) -> None:
    jsonschema.validate(content.instance_for(schema, text), schema)


def test_refs_resolve_and_enums_follow_the_text() -> None:
    schema = {
        "$defs": {"Label": {"type": "string", "enum": ["spam", "not_spam"]}},
        "type": "object",
        "properties": {"label": {"$ref": "#/$defs/Label"}},
        "required": ["label"],
    }
    assert content.instance_for(schema, "claim your free prize now") == {"label": "spam"}
    assert content.instance_for(schema, "see you at lunch") == {"label": "not_spam"}
    with pytest.raises(content.SchemaError):
        content.instance_for({"$ref": "#/nowhere"}, "x")


def test_fault_decisions_replay_from_the_seed() -> None:
    plan = FaultPlan.model_validate({"seed": 5, "http": [{"route": "GET /v1/*", "rate": 0.3}]})
    runs = []
    for _ in range(2):
        injector = FaultInjector(plan, {})
        runs.append([injector.http_fault("GET", "/v1/batch/jobs") is not None for _ in range(200)])
    assert runs[0] == runs[1]
    assert 30 < sum(runs[0]) < 90
    assert route_matches("POST /v1/batch/jobs", "POST", "/v1/batch/jobs")
    assert not route_matches("POST /v1/batch/jobs", "GET", "/v1/batch/jobs")


def test_a_fault_limit_caps_the_faults() -> None:
    plan = FaultPlan.model_validate({"http": [{"rate": 1.0, "limit": 2}]})
    injector = FaultInjector(plan, {})
    assert [injector.http_fault("GET", "/v1/x") is not None for _ in range(4)] == [
        True,
        True,
        False,
        False,
    ]


def test_bad_fault_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "faults.yaml"
    bad.write_text("http: [{status: 99}]")
    with pytest.raises(ValueError, match="status"):
        FaultPlan.load(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json"):
        FaultPlan.load(broken)


def test_classifier_file(tmp_path: Path) -> None:
    spec = tmp_path / "classifiers.yaml"
    spec.write_text(
        "ft:classifier:x:1:2:3:\n  targets:\n    priority: {urgent: [outage], low: []}\n"
    )
    catalog = Catalog.load(spec)
    assert catalog.classifiers == {
        "ft:classifier:x:1:2:3": {"priority": {"urgent": ["outage"], "low": []}}
    }
    result = content.classify(
        "m", ["the outage is total"], catalog.classifiers["ft:classifier:x:1:2:3"]
    )
    assert max(result[0]["priority"]["scores"].items(), key=lambda kv: kv[1])[0] == "urgent"
    spec.write_text("gpt-4: {targets: {}}\n")
    with pytest.raises(ValueError, match="ft:classifier:"):
        Catalog.load(spec)


def test_token_counts_add_bos_and_eos() -> None:
    meter = TokenMeter()
    # Pinned: the pipeline's estimates are compared with these numbers.
    assert meter.inputs("mistral-embed", ["", "hello world"]).tolist() == [2, 5]
    assert meter.inputs("codestral-embed", ["", "hello world"]).tolist() == [2, 4]
    assert meter.inputs("mistral-moderation-latest", []).tolist() == []
    assert meter.completion("hello world") == 2
    assert meter.prompt([{"role": "user", "content": "hello"}]) == 4  # [BOS][INST] hello [/INST]
    # A transcript the chat template refuses costs its texts as inputs, plus one.
    assert meter.prompt([{"role": "assistant", "content": "hello"}]) == 1 + 2 + 1
    chunks = [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": "x"}]
    assert meter.prompt([{"role": "user", "content": chunks}]) == 2 + 2 + 1  # "hello " and ""


@pytest.mark.parametrize(
    ("schema", "answer", "wrong"),
    [
        ({"type": "integer"}, 3, "3"),
        ({"type": "number"}, 0.5, "0.5"),
        ({"type": "boolean"}, True, 1),
        ({"type": "string"}, "Lyon", 1),
        ({"enum": ["a", "b"]}, "a", 1),
        ({"type": "array", "items": {"type": "string"}}, ["x"], '["x"]'),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, 3, True),
        ({"type": ["boolean", "integer"]}, False, "false"),
    ],
)
def test_wrong_type_gives_a_property_a_type_its_schema_refuses(
    schema: dict[str, object], answer: object, wrong: object
) -> None:
    document = {
        "type": "object",
        "properties": {"free": {}, "field": schema, "other": {"type": "integer"}},
    }
    broken = mistyped({"free": None, "field": answer, "other": 1}, document)
    assert broken == {"free": None, "field": wrong, "other": 1}  # the first breakable one only
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, document)


def test_wrong_type_without_a_breakable_property_breaks_the_whole_answer() -> None:
    assert mistyped({"free": 1}, {"type": "object", "properties": {"free": {}}}) == '{"free":1}'
    assert mistyped(7, {"type": "integer"}) == "7"
    assert mistyped({"free": 1}, {}) == {"free": 1}  # a schema that admits anything


@pytest.mark.parametrize("answer", ['{"label":"spam","score":0.5}', "12", '"ab"', "plain text"])
def test_malformed_json_is_never_json(answer: str) -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
    cut = corrupt(body, "malformed_json", {})["choices"][0]["message"]["content"]
    assert answer.startswith(cut) and len(cut) < len(answer)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)


def test_count_lines(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}')
    assert count_lines(path) == 2
    path.write_bytes(b'{"a":1}\n')
    assert count_lines(path) == 1
