"""Direct inference calls through the SDK: shapes, limits and error bodies as the real API."""

from __future__ import annotations

import json

import httpx2
import jsonschema
import numpy as np
import pytest
from mistralai.client import Mistral, errors

from emulator.catalog import DEFAULT_CLASSIFIER
from emulator.server import EmulatorProcess
from tests.support import API_KEY

TOXIC = "I will kill you and destroy everything, you hateful racist"
CALM = "The weather in Lyon was mild and the market was busy"


def test_embeddings_are_unit_norm_deterministic_and_sized_per_model(client: Mistral) -> None:
    first = client.embeddings.create(model="mistral-embed", inputs=[CALM, TOXIC])
    again = client.embeddings.create(model="mistral-embed", inputs=[TOXIC])
    vectors = np.array([d.embedding for d in first.data])
    assert vectors.shape == (2, 1024)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert again.data[0].embedding == first.data[1].embedding  # same text, same vector
    assert first.usage.prompt_tokens == first.usage.total_tokens > 4
    assert [d.index for d in first.data] == [0, 1]

    code = client.embeddings.create(model="codestral-embed", inputs=["def f(): pass"])
    assert len(code.data[0].embedding) == 1536
    short = client.embeddings.create(
        model="codestral-embed", inputs=["def f(): pass"], output_dimension=256
    )
    assert len(short.data[0].embedding) == 256


def test_texts_sharing_words_are_closer(client: Mistral) -> None:
    texts = [
        "the parcel arrived late and damaged",
        "my parcel arrived late and was damaged",
        "quarterly revenue grew in asian markets",
    ]
    v = np.array(
        [d.embedding for d in client.embeddings.create(model="mistral-embed", inputs=texts).data]
    )
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_embedding_limits_answer_the_real_error(client: Mistral) -> None:
    with pytest.raises(errors.SDKError) as too_many:
        client.embeddings.create(model="mistral-embed", inputs=["x"] * 513)
    assert too_many.value.status_code == 400
    body = json.loads(too_many.value.body)
    assert body["message"] == "Too many inputs in request, split into more batches."
    assert body["code"] == "3210" and body["object"] == "error"

    long_text = "word " * 4000  # ~4k tokens each, 5 of them: over 16,384 in total
    with pytest.raises(errors.SDKError) as too_long:
        client.embeddings.create(model="mistral-embed", inputs=[long_text] * 5)
    assert too_long.value.status_code == 400
    assert "Too many tokens overall" in too_long.value.body


def test_unknown_model_and_bad_body(client: Mistral) -> None:
    with pytest.raises(errors.SDKError) as unknown:
        client.embeddings.create(model="mistral-small-latest", inputs=["x"])
    assert unknown.value.status_code == 400 and "Invalid model" in unknown.value.body

    with pytest.raises(errors.HTTPValidationError) as invalid:
        client.embeddings.create(model="mistral-embed", inputs=[])
    assert invalid.value.data.detail is not None
    assert invalid.value.data.detail[0].loc[:2] == ["body", "input"]


def test_unknown_keys_are_rejected_fastapi_style(emulator: EmulatorProcess) -> None:
    response = httpx2.post(
        f"{emulator.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "mistral-embed", "input": "x", "dimensions": 8},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0] == {
        "type": "extra_forbidden",
        "loc": ["body", "dimensions"],
        "msg": "Extra inputs are not permitted",
        "input": 8,
    }


def test_moderation_categories_depend_on_the_model(client: Mistral) -> None:
    latest = client.classifiers.moderate(model="mistral-moderation-latest", inputs=[TOXIC, CALM])
    legacy = client.classifiers.moderate(model="mistral-moderation-2411", inputs=[TOXIC])
    assert len(latest.results[0].categories) == 11
    assert "jailbreaking" in latest.results[0].categories
    assert len(legacy.results[0].categories) == 9
    assert "dangerous_and_criminal_content" in legacy.results[0].categories
    toxic, calm = latest.results
    assert toxic.categories["violence_and_threats"] and toxic.categories["hate_and_discrimination"]
    assert not any(calm.categories.values())
    for result in latest.results:
        assert all(0.0 <= s <= 1.0 for s in result.category_scores.values())
        assert result.categories == {k: s >= 0.5 for k, s in result.category_scores.items()}


def test_chat_moderation_judges_the_last_turn(client: Mistral) -> None:
    result = client.classifiers.moderate_chat(
        model="mistral-moderation-latest",
        inputs=[
            {"role": "user", "content": CALM},
            {"role": "assistant", "content": TOXIC},
        ],
    )
    assert len(result.results) == 1
    assert result.results[0].categories["violence_and_threats"]


def test_classifier_scores_per_target(client: Mistral) -> None:
    result = client.classifiers.classify(
        model=DEFAULT_CLASSIFIER,
        inputs=["I love it, excellent and fast", "terrible, broken, worst"],
    )
    positive, negative = result.results
    assert (
        max(positive["sentiment"].scores, key=positive["sentiment"].scores.__getitem__)
        == "positive"
    )
    assert (
        max(negative["sentiment"].scores, key=negative["sentiment"].scores.__getitem__)
        == "negative"
    )
    for target in positive.values():
        assert sum(target.scores.values()) == pytest.approx(1.0, abs=1e-4)

    chat = client.classifiers.classify_chat(
        model=DEFAULT_CLASSIFIER,
        input=[{"messages": [{"role": "user", "content": "you idiot, I hate you"}]}],
    )
    assert set(chat.results[0]) == {"sentiment", "toxicity"}

    with pytest.raises(errors.SDKError) as unknown:
        client.classifiers.classify(model="ft:classifier:nope", inputs=["x"])
    assert unknown.value.status_code == 400


SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasons": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "urgent": {"type": "boolean"},
    },
    "required": ["label", "confidence", "reasons", "urgent"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, it is excellent", "positive"),
        ("awful, broken and the worst purchase", "negative"),
        ("The meeting is on Tuesday", "neutral"),
    ],
)
def test_chat_completion_honours_the_json_schema(client: Mistral, text: str, label: str) -> None:
    response = client.chat.complete(
        model="mistral-small-latest",
        messages=[
            {"role": "system", "content": "Label the text."},
            {"role": "user", "content": text},
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "label", "schema": SCHEMA, "strict": True},
        },
        temperature=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.content, str)
    answer = json.loads(choice.message.content)
    jsonschema.validate(answer, SCHEMA)
    assert answer["label"] == label
    assert response.usage.prompt_tokens is not None and response.usage.prompt_tokens > 5


def test_plain_chat_completion(client: Mistral) -> None:
    response = client.chat.complete(
        model="mistral-small-latest", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert "emulated" in str(response.choices[0].message.content)
