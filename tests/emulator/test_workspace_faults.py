"""Where the real service may be less helpful than our reading of the contract: listings that do not
filter, cap or lag; another team's jobs in the workspace; a create that succeeds but answers 504; a
response that arrives after the client gave up; results that expire. Plus the inspection routes.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mistralai.client import Mistral, errors

from emulator.server import EmulatorProcess
from tests.support import API_KEY, StartEmulator, eventually, jsonl, sdk, submit, wait_for

EMBED = {"endpoint": "/v1/embeddings", "model": "mistral-embed"}


def inline_job(client: Mistral, text: str, **metadata: str) -> str:
    job = client.batch.jobs.create(
        requests=[{"custom_id": "0", "body": {"input": text}}], metadata=metadata or None, **EMBED
    )
    return job.id


def inspect(emu: EmulatorProcess, what: str) -> list[dict[str, Any]]:
    """``GET /emulator/<what>``: outside /v1, no key needed."""
    response = httpx2.get(f"{emu.url}/emulator/{what}")
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()[what]
    return rows


def test_listing_that_ignores_filters_still_orders_and_pages(
    start_emulator: StartEmulator,
) -> None:
    client = sdk(start_emulator({"listing": {"ignore_filters": True}}))
    ours = inline_job(client, "ours", run="ours")
    theirs = inline_job(client, "theirs", run="theirs")
    wait_for(client, ours)

    later = datetime.now(UTC) + timedelta(hours=1)
    for filters in (
        {"metadata": {"run": "ours"}},
        {"status": ["RUNNING"]},
        {"model": "codestral-embed"},
        {"created_after": later},
        {"agent_id": "ag_none"},
    ):
        listed = client.batch.jobs.list(**filters)  # type: ignore[arg-type]
        assert listed.total == 2, filters
        assert [j.id for j in listed.data] == [theirs, ours], filters  # newest first
    assert [j.id for j in client.batch.jobs.list(order_by="created").data] == [ours, theirs]
    second = client.batch.jobs.list(metadata={"run": "ours"}, page=1, page_size=1)
    assert second.total == 2 and [j.id for j in second.data] == [ours]


def test_page_size_cap_shortens_pages_but_not_total(start_emulator: StartEmulator) -> None:
    client = sdk(start_emulator({"listing": {"page_size_cap": 2}}))
    ids = [inline_job(client, f"text {i}", run="capped") for i in range(5)]

    first = client.batch.jobs.list(metadata={"run": "capped"}, page_size=100)
    assert len(first.data) == 2 and first.total == 5  # not a full page, yet not the last one
    pages = [
        client.batch.jobs.list(metadata={"run": "capped"}, page=p, page_size=100).data
        for p in range(4)
    ]
    assert [len(page) for page in pages] == [2, 2, 1, 0]
    assert [j.id for page in pages for j in page] == ids[::-1]


def test_lagging_listing_shows_a_job_only_after_lag_seconds(start_emulator: StartEmulator) -> None:
    client = sdk(start_emulator({"listing": {"lag_seconds": 3}}))
    created = time.monotonic()
    job_id = inline_job(client, "late", run="lag")

    assert client.batch.jobs.get(job_id=job_id).id == job_id  # found by id at once
    assert client.batch.jobs.list(metadata={"run": "lag"}).total == 0
    listed = eventually(
        lambda: client.batch.jobs.list(metadata={"run": "lag"}).data or None, "the job is listed"
    )
    assert [j.id for j in listed] == [job_id]
    assert time.monotonic() - created >= 3


FOREIGN_PLAN = {
    "workspace": {
        "foreign_jobs": [
            {
                "count": 2,
                "status": "RUNNING",
                "metadata": {"enrich_key": "k-shared", "team": "other"},
                "requests": 50,
            },
            {"count": 1, "status": "SUCCESS", "endpoint": "/v1/moderations", "model": None},
        ]
    }
}


def test_foreign_jobs_are_listed_never_progress_and_can_be_cancelled(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    data = tmp_path / "workspace"
    emu = start_emulator(FOREIGN_PLAN, data_dir=data)
    client = sdk(emu)
    assert client.batch.jobs.list().total == 3
    foreign = client.batch.jobs.list(metadata={"enrich_key": "k-shared"}).data
    assert len(foreign) == 2
    assert all(j.status == "RUNNING" and j.total_requests == 50 for j in foreign)
    assert client.batch.jobs.list(status=["SUCCESS"]).data[0].endpoint == "/v1/moderations"

    # The runner has processed a job of ours from start to end while theirs stood still.
    ours = wait_for(client, inline_job(client, "ours", enrich_key="k-ours"))
    assert ours.status == "SUCCESS"
    assert all(
        client.batch.jobs.get(job_id=j.id).completed_requests == 0
        and client.batch.jobs.get(job_id=j.id).status == "RUNNING"
        for j in foreign
    )
    assert client.batch.jobs.list().total == 4

    cancelled, kept = foreign
    client.batch.jobs.cancel(job_id=cancelled.id)
    assert wait_for(client, cancelled.id).status == "CANCELLED"
    assert [j["content_sha256"] for j in inspect(emu, "jobs")][:3] == [None, None, None]

    emu.stop()
    client = sdk(start_emulator(FOREIGN_PLAN, data_dir=data))  # same plan: nothing re-created
    assert client.batch.jobs.list().total == 4
    assert client.batch.jobs.get(job_id=cancelled.id).status == "CANCELLED"
    assert client.batch.jobs.get(job_id=kept.id).status == "RUNNING"


def test_create_accepted_then_504(start_emulator: StartEmulator) -> None:
    emu = start_emulator(
        {"http": [{"route": "POST /v1/batch/jobs", "status": 504, "after_handling": True}]}
    )
    client = sdk(emu)
    with pytest.raises(errors.SDKError) as failed:
        inline_job(client, "paid anyway", enrich_key="k-504")
    assert failed.value.status_code == 504
    assert '"object":"error"' in failed.value.body.replace(" ", "")

    created = client.batch.jobs.list(metadata={"enrich_key": "k-504"}).data
    assert len(created) == 1  # the server acted: the job exists and will be billed
    assert wait_for(client, created[0].id).status == "SUCCESS"
    assert len(inspect(emu, "jobs")) == 1


def test_delayed_response_times_the_client_out_after_the_server_acted(
    start_emulator: StartEmulator,
) -> None:
    emu = start_emulator(
        {
            "http": [
                {"route": "POST /v1/batch/jobs", "status": None, "delay_seconds": 1.5, "limit": 2}
            ]
        }
    )
    with pytest.raises(httpx2.TimeoutException):
        inline_job(sdk(emu, timeout_ms=300), "timed out", enrich_key="k-slow")
    client = sdk(emu)
    assert [j["metadata"] for j in inspect(emu, "jobs")] == [{"enrich_key": "k-slow"}]

    started = time.monotonic()
    patient = inline_job(client, "waited for", enrich_key="k-patient")  # the real answer, late
    assert time.monotonic() - started >= 1.5
    assert client.batch.jobs.get(job_id=patient).metadata == {"enrich_key": "k-patient"}


def test_results_expire_after_the_job_ends(start_emulator: StartEmulator) -> None:
    client = sdk(start_emulator({"files": {"expire_after_seconds": 3}}))
    job = submit(client, "/v1/embeddings", [{"input": "x"}] * 3, model="mistral-embed")
    done = wait_for(client, job.id)
    output = str(done.output_file)
    assert client.files.retrieve(file_id=output).num_lines == 3  # downloadable at first

    def gone() -> errors.SDKError | None:
        try:
            client.files.retrieve(file_id=output)
        except errors.SDKError as exc:
            return exc
        return None

    missing = eventually(gone, "the output file expires")
    assert missing.status_code == 404 and '"not_found"' in missing.body
    with pytest.raises(errors.SDKError) as download:
        client.files.download(file_id=output)
    assert download.value.status_code == 404 and output in download.value.body
    assert client.files.retrieve(file_id=done.input_files[0]).id == done.input_files[0]
    assert client.batch.jobs.get(job_id=job.id).output_file == output  # the job still names it


def test_inspection_routes_digest_content_and_find_unused_files(
    start_emulator: StartEmulator,
) -> None:
    emu = start_emulator(None)
    client = sdk(emu)
    content = jsonl([{"custom_id": str(i), "body": {"input": f"row {i}"}} for i in range(4)])
    used = client.files.upload(file={"file_name": "a.jsonl", "content": content}, purpose="batch")
    unused = client.files.upload(file={"file_name": "b.jsonl", "content": b"{}"}, purpose="batch")
    gone = client.files.upload(file={"file_name": "c.jsonl", "content": b"{}"}, purpose="batch")
    client.files.delete(file_id=gone.id)
    from_file = client.batch.jobs.create(input_files=[used.id], metadata={"n": "1"}, **EMBED)
    twins = [inline_job(client, "same"), inline_job(client, "same")]
    other = inline_job(client, "different")

    jobs = {row["id"]: row for row in inspect(emu, "jobs")}
    assert list(jobs) == [from_file.id, *twins, other]  # oldest first
    assert jobs[from_file.id] | {"created_at": 0} == {
        "id": from_file.id,
        "status": jobs[from_file.id]["status"],
        "metadata": {"n": "1"},
        "endpoint": "/v1/embeddings",
        "model": "mistral-embed",
        "created_at": 0,
        "requests": 4,
        "content_sha256": hashlib.sha256(content).hexdigest(),
    }
    digests = [jobs[job_id]["content_sha256"] for job_id in (*twins, other)]
    assert digests[0] == digests[1] != digests[2]
    public = httpx2.get(
        f"{emu.url}/v1/batch/jobs/{twins[0]}", headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()
    assert public["id"] == twins[0]
    assert not {"content_sha256", "ended_at_precise", "foreign"} & set(public)

    files = {row["id"]: row for row in inspect(emu, "files")}
    assert gone.id not in files
    assert files[used.id] == {
        "id": used.id,
        "purpose": "batch",
        "filename": "a.jsonl",
        "bytes": len(content),
        "used_by": [from_file.id],
    }
    assert files[unused.id]["used_by"] == []
