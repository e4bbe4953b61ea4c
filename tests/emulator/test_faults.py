"""Seeded fault injection: every mode, recovered or surfaced as the real API would."""

from __future__ import annotations

import json

import httpx2
import jsonschema
import pytest
from mistralai.client import errors, models
from mistralai.client.utils import BackoffStrategy, RetryConfig

from emulator.faults import CorruptAnswers
from tests.support import StartEmulator, read_lines, sdk, submit, wait_for

FAST_RETRY = RetryConfig(
    "backoff", BackoffStrategy(10, 200, 1.5, 10_000), retry_connection_errors=False
)


def test_429_storm_on_create_is_ridden_out_by_retry_config(start_emulator: StartEmulator) -> None:
    emu = start_emulator(
        {
            "http": [
                {
                    "route": "POST /v1/batch/jobs",
                    "status": 429,
                    "rate": 1.0,
                    "retry_after": 0.05,
                    "limit": 3,
                }
            ]
        }
    )
    bare = sdk(emu)
    with pytest.raises(errors.SDKError) as limited:
        bare.batch.jobs.create(
            endpoint="/v1/embeddings", requests=[{"body": {"input": "x"}}], model="mistral-embed"
        )
    assert limited.value.status_code == 429
    assert limited.value.headers["retry-after"] == "0.05"
    assert '"rate_limited"' in limited.value.body

    retrying = sdk(emu, retry_config=FAST_RETRY)
    job = retrying.batch.jobs.create(
        endpoint="/v1/embeddings", requests=[{"body": {"input": "x"}}], model="mistral-embed"
    )
    assert job.status == "QUEUED"  # the two remaining 429s were retried away
    assert wait_for(retrying, job.id).status == "SUCCESS"


def test_5xx_on_polling_is_retried(start_emulator: StartEmulator) -> None:
    emu = start_emulator(
        {"seed": 3, "http": [{"route": "GET /v1/batch/jobs/*", "status": 503, "rate": 0.5}]}
    )
    client = sdk(emu, retry_config=FAST_RETRY)
    job = submit(client, "/v1/embeddings", [{"input": "x"}] * 5, model="mistral-embed")
    assert wait_for(client, job.id).status == "SUCCESS"
    with pytest.raises(errors.SDKError) as unavailable:
        for _ in range(
            20
        ):  # at rate 0.5, twenty bare calls all succeeding is a 1-in-a-million event
            sdk(emu).batch.jobs.get(job_id=job.id)
    assert unavailable.value.status_code == 503


def test_download_cut_off_mid_stream(start_emulator: StartEmulator) -> None:
    emu = start_emulator({"download_cut": {"rate": 1.0, "after_fraction": 0.4, "limit": 1}})
    client = sdk(emu)
    job = wait_for(
        client, submit(client, "/v1/embeddings", [{"input": "x"}] * 50, model="mistral-embed").id
    )
    size = client.files.retrieve(file_id=str(job.output_file)).size_bytes
    response = client.files.download(file_id=str(job.output_file))
    with pytest.raises(httpx2.RemoteProtocolError):
        response.read()
    assert len(read_lines(client, job.output_file)) == 50  # the next download is whole
    assert size > 0


def test_job_that_fails_keeps_its_partial_output(start_emulator: StartEmulator) -> None:
    emu = start_emulator(
        {"jobs": {"fail": {"rate": 1.0, "after_fraction": 0.5, "message": "Injected failure"}}}
    )
    client = sdk(emu)
    job = wait_for(
        client, submit(client, "/v1/embeddings", [{"input": "x"}] * 40, model="mistral-embed").id
    )
    assert job.status == "FAILED"
    assert [e.message for e in job.errors] == ["Injected failure"]
    assert job.total_requests == 40 and job.completed_requests == 20
    assert len(read_lines(client, job.output_file)) == 20


def test_timeout_exceeded_with_partial_output(start_emulator: StartEmulator) -> None:
    emu = start_emulator({"jobs": {"timeout": {"rate": 1.0, "after_fraction": 0.25}}})
    client = sdk(emu)
    job = wait_for(
        client,
        submit(
            client, "/v1/moderations", [{"input": "x"}] * 40, model="mistral-moderation-latest"
        ).id,
    )
    assert job.status == "TIMEOUT_EXCEEDED"
    assert job.completed_requests == 10
    assert sorted(int(line["custom_id"]) for line in read_lines(client, job.output_file)) == list(
        range(10)
    )


def test_timeout_hours_run_out(start_emulator: StartEmulator) -> None:
    # One emulated hour lasts 0.5 s and the job processes 20 requests a second: 1 h is not enough.
    client = sdk(start_emulator(None, "--hour-seconds", "0.5", "--requests-per-second", "20"))
    job = submit(
        client, "/v1/embeddings", [{"input": "x"}] * 200, model="mistral-embed", timeout_hours=1
    )
    done = wait_for(client, job.id)
    assert done.status == "TIMEOUT_EXCEEDED"
    assert 0 < done.completed_requests < 200


def test_failing_lines_are_seeded_and_bounded(start_emulator: StartEmulator) -> None:
    plan = {"seed": 11, "lines": {"rate": 0.2, "status": 500, "times": 1}}
    failed_ids = []
    for _ in range(2):  # two fresh emulators with the same plan fail the same lines
        client = sdk(start_emulator(plan))
        job = wait_for(
            client,
            submit(client, "/v1/embeddings", [{"input": "x"}] * 100, model="mistral-embed").id,
        )
        assert job.status == "SUCCESS" and job.error_file is not None
        lines = read_lines(client, job.error_file)
        assert all(line["response"]["status_code"] == 500 for line in lines)
        failed_ids.append(sorted(line["custom_id"] for line in lines))
        assert 5 < len(lines) < 40
        assert job.failed_requests == len(lines)
        assert job.succeeded_requests + job.failed_requests == 100
        # `times: 1`: the same ids succeed when resubmitted
        retry = wait_for(
            client,
            submit(client, "/v1/embeddings", [{"input": "x"}] * 100, model="mistral-embed").id,
        )
        assert retry.failed_requests == 0
    assert failed_ids[0] == failed_ids[1]


def test_failing_lines_in_string_style(start_emulator: StartEmulator) -> None:
    client = sdk(
        start_emulator({"lines": {"rate": 1.0, "status": 429, "times": -1, "style": "string"}})
    )
    job = wait_for(
        client, submit(client, "/v1/embeddings", [{"input": "x"}] * 3, model="mistral-embed").id
    )
    assert job.output_file is None and job.failed_requests == 3
    line = read_lines(client, job.error_file)[0]
    assert line["response"] == {"status_code": 429, "body": None}
    assert line["error"] == "Rate limit exceeded"


def test_slow_jobs(start_emulator: StartEmulator) -> None:
    client = sdk(start_emulator({"jobs": {"slow": {"rate": 1.0, "requests_per_second": 10}}}))
    job = submit(client, "/v1/embeddings", [{"input": "x"}] * 30, model="mistral-embed")
    running = wait_for(
        client, job.id, lambda j: j.status == "RUNNING" and 0 < j.completed_requests < 30
    )
    assert running.completed_requests < 30
    assert wait_for(client, job.id).status == "SUCCESS"


def test_metadata_scopes_job_faults(start_emulator: StartEmulator) -> None:
    client = sdk(
        start_emulator(
            {
                "jobs": {
                    "fail": {"rate": 1.0, "after_fraction": 0.0},
                    "match_metadata": {"doomed": "yes"},
                }
            }
        )
    )
    spared = submit(
        client, "/v1/embeddings", [{"input": "x"}], model="mistral-embed", metadata={"doomed": "no"}
    )
    doomed = submit(
        client,
        "/v1/embeddings",
        [{"input": "x"}],
        model="mistral-embed",
        metadata={"doomed": "yes"},
    )
    assert wait_for(client, spared.id).status == "SUCCESS"
    failed = wait_for(client, doomed.id)
    assert failed.status == "FAILED" and failed.output_file is None


CUSTOMER = {
    "type": "object",
    "properties": {
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "member": {"type": "boolean"},
        "city": {"type": "string"},
        "tier": {"type": "string", "enum": ["gold", "silver", "none"]},
    },
    "required": ["age", "member", "city", "tier"],
    "additionalProperties": False,
}
EXTRACT = {
    "type": "json_schema",
    "json_schema": {"name": "customer", "schema": CUSTOMER, "strict": True},
}


def extracted(start_emulator: StartEmulator, rule: CorruptAnswers) -> dict[str, str]:
    """Run 40 extraction requests under ``rule`` (seed 5): each line's answer, by custom_id."""
    client = sdk(start_emulator({"seed": 5, "corrupt": rule.model_dump()}))
    bodies = [
        {
            "messages": [{"role": "user", "content": f"Customer {i}: a gold member from Lyon"}],
            "response_format": EXTRACT,
        }
        for i in range(40)
    ]
    job = wait_for(
        client, submit(client, "/v1/chat/completions", bodies, model="mistral-small-latest").id
    )
    assert (job.status, job.succeeded_requests, job.failed_requests) == ("SUCCESS", 40, 0)
    answers = {}
    for line in read_lines(client, job.output_file):
        assert line["response"]["status_code"] == 200 and line["error"] is None
        response = models.ChatCompletionResponse.model_validate(line["response"]["body"])
        assert response.choices[0].finish_reason == "stop"
        answers[line["custom_id"]] = str(response.choices[0].message.content)
    assert len(answers) == 40
    return answers


def chosen_ids(rule: CorruptAnswers) -> set[str]:
    chosen = {str(i) for i in range(40) if rule.chooses(5, str(i))}
    assert 0 < len(chosen) < 40  # the seed picks some lines, not all
    return chosen


def test_malformed_json_cuts_the_chosen_answers_short(start_emulator: StartEmulator) -> None:
    rule = CorruptAnswers(rate=0.3, mode="malformed_json")
    answers = extracted(start_emulator, rule)
    chosen = chosen_ids(rule)
    for custom_id, answer in answers.items():
        if custom_id in chosen:
            with pytest.raises(json.JSONDecodeError):
                json.loads(answer)
            assert answer.startswith('{"age":')  # the start of a valid answer, cut off
        else:
            jsonschema.validate(json.loads(answer), CUSTOMER)


def test_wrong_type_breaks_one_property_of_the_chosen_answers(
    start_emulator: StartEmulator,
) -> None:
    rule = CorruptAnswers(rate=0.3, mode="wrong_type")
    answers = extracted(start_emulator, rule)
    chosen = chosen_ids(rule)
    for custom_id, answer in answers.items():
        value = json.loads(answer)
        if custom_id in chosen:
            errors = list(jsonschema.Draft202012Validator(CUSTOMER).iter_errors(value))
            assert [(list(e.path), e.validator) for e in errors] == [(["age"], "type")]
            assert isinstance(value["age"], str) and value["age"].isdigit()  # "42", not 42
        else:
            jsonschema.validate(value, CUSTOMER)


def test_chat_corruptions_leave_other_endpoints_alone(start_emulator: StartEmulator) -> None:
    client = sdk(start_emulator({"corrupt": {"rate": 1.0, "mode": "malformed_json"}}))
    job = wait_for(
        client, submit(client, "/v1/embeddings", [{"input": "x"}] * 5, model="mistral-embed").id
    )
    lines = read_lines(client, job.output_file)
    assert len(lines) == 5
    for line in lines:
        body = models.EmbeddingResponse.model_validate(line["response"]["body"])
        assert len(body.data[0].embedding or []) == 1024
