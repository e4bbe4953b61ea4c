"""Batch jobs API: list filters and paging, cancel, delete, auth and error bodies."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from mistralai.client import Mistral, errors

from emulator.server import EmulatorProcess
from tests.support import API_KEY, StartEmulator, sdk, submit, wait_for


def test_list_filters_and_paging(client: Mistral) -> None:
    run = uuid.uuid4().hex[:12]
    before = datetime.now(UTC) - timedelta(seconds=2)
    ids = [
        submit(
            client,
            "/v1/embeddings",
            [{"input": "x"}],
            model="mistral-embed",
            metadata={"run": run, "n": str(i)},
        ).id
        for i in range(5)
    ]
    other = submit(
        client,
        "/v1/moderations",
        [{"input": "x"}],
        model="mistral-moderation-latest",
        metadata={"run": run},
    ).id
    for job_id in [*ids, other]:
        wait_for(client, job_id)

    mine = client.batch.jobs.list(metadata={"run": run}, page_size=100)
    assert mine.total == 6 and {j.id for j in mine.data} == {*ids, other}
    assert [j.id for j in mine.data] == [other, *ids[::-1]]  # newest first

    pages = [client.batch.jobs.list(metadata={"run": run}, page=p, page_size=4) for p in range(2)]
    assert [p.total for p in pages] == [6, 6]
    assert [len(p.data) for p in pages] == [4, 2]
    assert {j.id for p in pages for j in p.data} == {*ids, other}

    oldest_first = client.batch.jobs.list(metadata={"run": run}, order_by="created")
    assert oldest_first.data[0].id == ids[0]

    embed_only = client.batch.jobs.list(metadata={"run": run}, model="mistral-embed")
    assert embed_only.total == 5
    one = client.batch.jobs.list(metadata={"run": run, "n": "3"})
    assert [j.id for j in one.data] == [ids[3]]
    assert client.batch.jobs.list(metadata={"run": run}, status=["SUCCESS"]).total == 6
    assert client.batch.jobs.list(metadata={"run": run}, status=["RUNNING", "QUEUED"]).total == 0
    assert client.batch.jobs.list(metadata={"run": run}, created_after=before).total == 6
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert client.batch.jobs.list(metadata={"run": run}, created_after=later).total == 0


def test_metadata_as_a_json_query_parameter(emulator: EmulatorProcess, client: Mistral) -> None:
    run = uuid.uuid4().hex[:12]
    job = submit(
        client, "/v1/embeddings", [{"input": "x"}], model="mistral-embed", metadata={"run": run}
    )
    response = httpx2.get(
        f"{emulator.url}/v1/batch/jobs",
        params={"metadata": json.dumps({"run": run})},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert [j["id"] for j in response.json()["data"]] == [job.id]


def test_cancel_then_cancelled_and_delete(start_emulator: StartEmulator) -> None:
    client = sdk(start_emulator(None, "--requests-per-second", "5"))
    created = submit(client, "/v1/embeddings", [{"input": "x"}] * 100, model="mistral-embed")
    wait_for(client, created.id, lambda j: j.status == "RUNNING" and j.completed_requests > 0)
    requested = client.batch.jobs.cancel(job_id=created.id)
    assert requested.status == "CANCELLATION_REQUESTED"
    job = wait_for(client, created.id)
    assert job.status == "CANCELLED"
    assert 0 < job.completed_requests < 100
    assert job.output_file is not None  # what was answered before the cancel is kept

    again = client.batch.jobs.cancel(job_id=created.id)  # cancelling a finished job changes nothing
    assert again.status == "CANCELLED"

    deleted = client.batch.jobs.delete(job_id=created.id)
    assert deleted.deleted is True
    with pytest.raises(errors.SDKError) as gone:
        client.batch.jobs.get(job_id=created.id)
    assert gone.value.status_code == 404


def test_pending_requests_over_the_workspace_limit_are_refused(
    start_emulator: StartEmulator,
) -> None:
    client = sdk(
        start_emulator(None, "--requests-per-second", "20", "--pending-requests-limit", "10")
    )
    first = submit(client, "/v1/embeddings", [{"input": "x"}] * 6, model="mistral-embed")
    with pytest.raises(errors.SDKError) as refused:
        submit(client, "/v1/embeddings", [{"input": "y"}] * 5, model="mistral-embed")
    assert refused.value.status_code == 400
    assert "6 pending and 5 in this job exceed the limit of 10" in refused.value.body
    fits = submit(client, "/v1/embeddings", [{"input": "z"}] * 4, model="mistral-embed")
    assert wait_for(client, first.id).status == "SUCCESS"
    assert wait_for(client, fits.id).status == "SUCCESS"
    later = submit(client, "/v1/embeddings", [{"input": "y"}] * 5, model="mistral-embed")
    assert wait_for(client, later.id).status == "SUCCESS"  # finished jobs free their requests


def test_unknown_ids_are_404(client: Mistral) -> None:
    for call in (
        lambda: client.batch.jobs.get(job_id="no-such-job"),
        lambda: client.batch.jobs.cancel(job_id="no-such-job"),
        lambda: client.files.download(file_id="no-such-file"),
    ):
        with pytest.raises(errors.SDKError) as missing:
            call()
        assert missing.value.status_code == 404
        assert "not found" in missing.value.body
    with pytest.raises(errors.SDKError) as no_file:
        client.batch.jobs.create(endpoint="/v1/embeddings", input_files=["missing-file"])
    assert no_file.value.status_code == 404 and "missing-file" in no_file.value.body


def test_create_job_validation_is_422(client: Mistral) -> None:
    with pytest.raises(errors.SDKError) as too_long:
        client.batch.jobs.create(
            endpoint="/v1/embeddings", requests=[{"body": {"input": "x"}}], timeout_hours=169
        )
    assert too_long.value.status_code == 422
    assert json.loads(too_long.value.body)["detail"][0]["loc"] == ["body", "timeout_hours"]
    with pytest.raises(errors.SDKError) as neither:
        client.batch.jobs.create(endpoint="/v1/embeddings")
    assert neither.value.status_code == 422
    assert "exactly one of input_files or requests" in neither.value.body
    with pytest.raises(errors.SDKError) as long_key:
        client.batch.jobs.create(
            endpoint="/v1/embeddings", requests=[{"body": {"input": "x"}}], metadata={"k" * 33: "v"}
        )
    assert long_key.value.status_code == 422


def test_wrong_or_missing_key_is_401(emulator: EmulatorProcess) -> None:
    for key in ("wrong-key", None):
        client = Mistral(api_key=key, server_url=emulator.url)
        with pytest.raises(errors.SDKError) as denied:
            client.batch.jobs.list()
        assert denied.value.status_code == 401
        assert json.loads(denied.value.body) == {"detail": "Unauthorized"}
    response = httpx2.post(
        f"{emulator.url}/v1/embeddings", json={"model": "mistral-embed", "input": "x"}
    )
    assert response.status_code == 401
