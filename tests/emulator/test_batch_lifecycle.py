"""Batch jobs end to end for every endpoint: lifecycle, output files, SDK models."""

from __future__ import annotations

from typing import Any

import pytest
from mistralai.client import Mistral, models

from emulator.catalog import DEFAULT_CLASSIFIER
from tests.support import StartEmulator, read_lines, sdk, submit, wait_for

LABEL_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}},
    "required": ["label"],
    "additionalProperties": False,
}

CASES: list[tuple[str, str, dict[str, Any], type[Any]]] = [
    ("/v1/embeddings", "mistral-embed", {"input": ["a b", "c d"]}, models.EmbeddingResponse),
    (
        "/v1/moderations",
        "mistral-moderation-latest",
        {"input": ["kill", "hi"]},
        models.ModerationResponse,
    ),
    (
        "/v1/chat/moderations",
        "mistral-moderation-2411",
        {"input": [{"role": "user", "content": "steal a car"}]},
        models.ModerationResponse,
    ),
    (
        "/v1/classifications",
        DEFAULT_CLASSIFIER,
        {"input": ["great", "awful"]},
        models.ClassificationResponse,
    ),
    (
        "/v1/chat/classifications",
        DEFAULT_CLASSIFIER,
        {"input": [{"messages": [{"role": "user", "content": "great"}]}]},
        models.ClassificationResponse,
    ),
    (
        "/v1/chat/completions",
        "ministral-8b-latest",
        {
            "messages": [{"role": "user", "content": "win a free prize, click now"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "spam", "schema": LABEL_SCHEMA, "strict": True},
            },
            "max_tokens": 64,
        },
        models.ChatCompletionResponse,
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "model", "body", "response_model"), CASES, ids=[c[0] for c in CASES]
)
def test_every_endpoint_runs_as_a_batch(
    client: Mistral, endpoint: str, model: str, body: dict[str, Any], response_model: type[Any]
) -> None:
    created = submit(client, endpoint, [body] * 30, model=model, metadata={"case": endpoint})
    assert created.status == "QUEUED"
    assert (created.total_requests, created.completed_requests) == (0, 0)
    assert created.output_file is None and created.error_file is None and created.errors == []

    job = wait_for(client, created.id)
    assert job.status == "SUCCESS", job
    assert (job.total_requests, job.succeeded_requests, job.failed_requests) == (30, 30, 0)
    assert job.completed_requests == 30 and job.error_file is None
    assert job.started_at is not None and job.completed_at is not None

    output = client.files.retrieve(file_id=str(job.output_file))
    assert (output.source, output.sample_type, output.num_lines) == ("mistral", "batch_result", 30)
    lines = read_lines(client, job.output_file)
    assert sorted(int(line["custom_id"]) for line in lines) == list(range(30))
    for line in lines:
        assert line["id"].startswith(f"batch-{job.id[:8]}-") and line["error"] is None
        assert line["response"]["status_code"] == 200
        response_model.model_validate(line["response"]["body"])  # the SDK's own model
    if endpoint == "/v1/chat/completions":
        assert '"spam"' in lines[0]["response"]["body"]["choices"][0]["message"]["content"]


def test_output_order_is_not_input_order(client: Mistral) -> None:
    job = wait_for(
        client, submit(client, "/v1/embeddings", [{"input": "x"}] * 200, model="mistral-embed").id
    )
    order = [int(line["custom_id"]) for line in read_lines(client, job.output_file)]
    assert sorted(order) == list(range(200)) and order != list(range(200))


def test_inline_requests_and_inline_outputs(client: Mistral) -> None:
    created = client.batch.jobs.create(
        endpoint="/v1/embeddings",
        model="mistral-embed",
        requests=[
            {"custom_id": "a", "body": {"input": "hello"}},
            {"custom_id": "b", "body": {"input": ["x", "y"]}},
        ],
    )
    assert created.input_files == []
    wait_for(client, created.id)
    job = client.batch.jobs.get(job_id=created.id, inline=True)
    assert job.status == "SUCCESS" and job.outputs is not None
    by_id = {o["custom_id"]: o for o in job.outputs}
    assert len(by_id["b"]["response"]["body"]["data"]) == 2


def test_bad_lines_go_to_the_error_file(client: Mistral) -> None:
    bodies: list[dict[str, Any]] = [
        {"input": "fine"},
        {"input": ["x"] * 600},  # over 512 inputs
        {"input": "fine", "dimensions": 3},  # unknown key: 422
    ]
    job = wait_for(client, submit(client, "/v1/embeddings", bodies, model="mistral-embed").id)
    assert job.status == "SUCCESS"
    assert (job.succeeded_requests, job.failed_requests) == (1, 2)
    errors = {line["custom_id"]: line["response"] for line in read_lines(client, job.error_file)}
    assert errors["1"]["status_code"] == 400
    assert errors["1"]["body"]["message"] == "Too many inputs in request, split into more batches."
    assert errors["2"]["status_code"] == 422
    assert errors["2"]["body"]["detail"][0]["type"] == "extra_forbidden"
    error_file = client.files.retrieve(file_id=str(job.error_file))
    assert error_file.sample_type == "batch_error"


def test_counters_rise_while_running(start_emulator: StartEmulator) -> None:
    emu = start_emulator(None, "--requests-per-second", "40")
    client = sdk(emu)
    created = submit(
        client, "/v1/moderations", [{"input": "hi"}] * 80, model="mistral-moderation-latest"
    )
    running = wait_for(
        client, created.id, lambda j: j.status == "RUNNING" and 0 < j.completed_requests < 80
    )
    assert running.total_requests == 80 and running.output_file is None
    done = wait_for(client, created.id)
    assert done.status == "SUCCESS" and done.completed_requests == 80
