"""The client against a service less helpful than our reading of the contract: a job list that
filters nothing (another team's jobs in it), capped pages, a listing that lags, a create
answered 504 after it was accepted, a refused create, results that expire.

Plain functions (plan_run, build, submit_job, collect_results) against dedicated emulators; no
Prefect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from emulator.server import EmulatorProcess
from flows.hooks import recorded_jobs
from schemas.params import EnrichParams
from schemas.refs import JobOutcome, PlanRef, ShardRef
from tasks.batch import collect_results, submit_job
from tasks.core.keys import job_key
from tasks.core.packing import build
from tasks.edges import storage
from tasks.edges.mistral import PROJECT, PROJECT_KEY, JobStatus, MistralGateway, TerminalApiError
from tasks.edges.settings import MistralSettings
from tasks.edges.tokens import TOKENS
from tasks.plan import plan_run
from tasks.requests import shard_texts, write_shard
from tests.support import API_KEY, StartEmulator, eventually


def emulator_jobs(emu: EmulatorProcess) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = httpx.get(f"{emu.url}/emulator/jobs", timeout=10).json()["jobs"]
    return jobs


def emulator_files(emu: EmulatorProcess) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = httpx.get(f"{emu.url}/emulator/files", timeout=10).json()["files"]
    return files


def requests_files(emu: EmulatorProcess) -> list[dict[str, Any]]:
    """The request files this client uploaded (not the jobs' output files)."""
    return [f for f in emulator_files(emu) if f["filename"].startswith("enrich-")]


def ours(emu: EmulatorProcess) -> list[dict[str, Any]]:
    """Jobs this client created (the emulator's foreign jobs have no request content)."""
    return [
        j
        for j in emulator_jobs(emu)
        if (j["metadata"] or {}).get(PROJECT_KEY) == PROJECT and j["content_sha256"]
    ]


def one_shard(tmp_path: Path, texts: int = 12) -> tuple[EnrichParams, PlanRef, ShardRef]:
    source = tmp_path / "in.parquet"
    pl.DataFrame(
        {"id": list(range(texts)), "text": [f"hostile text {i}" for i in range(texts)]}
    ).write_parquet(source)
    params = EnrichParams(
        input=str(source),
        id_column="id",
        text_column="text",
        output=str(tmp_path / "out"),
        partition="2026-11-22",
        shard_size=1000,
        cache_mode="off",
    )
    planned = plan_run(params, "2026-11-22")
    shard = write_shard(build(shard_texts(planned, params, 0), params, 0, 0, TOKENS), planned, 0, 0)
    return params, planned, shard


def finished(api: MistralGateway, job_id: str) -> tuple[JobStatus, JobOutcome]:
    """Wait for the job to succeed; its status and the outcome the wait step would hand on."""
    done = eventually(lambda: s if (s := api.job(job_id)).status == "SUCCESS" else None, "the job")
    outcome = JobOutcome(
        shard=0,
        attempt=0,
        job_id=done.id,
        status=done.status,
        output_file=done.output_file,
        error_file=done.error_file,
        succeeded=done.succeeded,
        failed=done.failed,
    )
    return done, outcome


def gateway(
    monkeypatch: pytest.MonkeyPatch, emu: EmulatorProcess, lag: float = 5.0
) -> MistralGateway:
    monkeypatch.setenv("MISTRAL_SERVER_URL", emu.url)
    monkeypatch.setenv("MISTRAL_API_KEY", API_KEY)
    monkeypatch.setenv("MISTRAL_LISTING_LAG_SECONDS", str(lag))
    return MistralGateway(MistralSettings())


def test_a_listing_that_filters_nothing_never_reattaches_to_another_users_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    params, planned, shard = one_shard(tmp_path)
    key = job_key(shard.content_hash, params.result_options())
    embed = {"endpoint": "/v1/embeddings", "model": "mistral-embed", "status": "RUNNING"}
    emu = start_emulator(
        {
            "listing": {"ignore_filters": True, "page_size_cap": 2},
            "workspace": {
                "foreign_jobs": [
                    {"count": 3, **embed, "metadata": {"team": "search"}},
                    # Our key, but not our project: another deployment of a similar tool.
                    {"count": 1, **embed, "metadata": {"enrich_key": key}},
                    # Our project and key, but another model: not the same work.
                    {
                        "count": 1,
                        **embed,
                        "model": "codestral-embed",
                        "metadata": {PROJECT_KEY: PROJECT, "enrich_key": key},
                    },
                ]
            },
        }
    )
    api = gateway(monkeypatch, emu)
    foreign = {j["id"] for j in emulator_jobs(emu)}
    ref = submit_job(api, shard, planned, params)
    assert not ref.reattached and ref.job_id not in foreign
    assert len(ours(emu)) == 1
    again = submit_job(api, shard, planned, params)  # a rerun: the job found by its record
    assert again.reattached and again.job_id == ref.job_id
    storage.remove(storage.join(planned.staging, "shards"))  # no record: the listing finds it
    third = submit_job(api, shard, planned, params)
    assert third.reattached and third.job_id == ref.job_id
    assert {j["status"] for j in emulator_jobs(emu) if j["id"] in foreign} == {"RUNNING"}


def test_cancel_and_reconcile_see_only_this_projects_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    params, _, _ = one_shard(tmp_path)
    run = "0b9f2d5e-5a55-4b0e-8f5c-6d1a3c2b1a00"
    emu = start_emulator(
        {
            "listing": {"ignore_filters": True},
            "workspace": {
                "foreign_jobs": [
                    {
                        "count": 2,
                        "status": "RUNNING",
                        "endpoint": "/v1/embeddings",
                        "model": "mistral-embed",
                        "metadata": {"enrich_flow_run": run, "enrich_key": "theirs"},
                    }
                ]
            },
        }
    )
    api = gateway(monkeypatch, emu)
    assert recorded_jobs(api, params, run) == []  # the cancel hook would cancel nothing
    assert api.active_jobs() == []  # reconcile would adopt or cancel nothing


def test_a_create_answered_504_after_it_was_accepted_makes_one_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    """The SDK's retry would create a second, paid job; the gateway looks the key up instead
    (through a listing that lags a second behind)."""
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator(
        {
            "listing": {"lag_seconds": 1.0},
            "http": [
                {
                    "route": "POST /v1/batch/jobs",
                    "status": 504,
                    "after_handling": True,
                    "limit": 1,
                }
            ],
        }
    )
    ref = submit_job(gateway(monkeypatch, emu), shard, planned, params)
    created = ours(emu)
    assert [j["id"] for j in created] == [ref.job_id]
    assert not ref.reattached


def test_a_rerun_after_a_kill_mid_create_waits_for_a_lagging_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    """The killed run had recorded its intent and the job exists, but the listing shows it only
    after 2 s: the rerun waits for it instead of creating a second job."""
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator({"listing": {"lag_seconds": 2.0}})
    api = gateway(monkeypatch, emu, lag=10.0)
    first = submit_job(api, shard, planned, params)
    folder = storage.join(planned.staging, "shards", "00000", "attempt-0")
    storage.remove(storage.join(folder, "job.json"))  # killed before the record was written
    assert storage.exists(storage.join(folder, "create-intent.json"))
    intent = storage.read_json(storage.join(folder, "create-intent.json"))
    fresh = intent | {"create_at": time.time()}
    storage.write_json(storage.join(folder, "create-intent.json"), fresh)
    again = submit_job(api, shard, planned, params)
    assert again.reattached and again.job_id == first.job_id
    assert len(ours(emu)) == 1


def test_a_refused_create_deletes_the_file_it_uploaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator({"http": [{"route": "POST /v1/batch/jobs", "status": 400}]})
    with pytest.raises(TerminalApiError, match="HTTP 400"):
        submit_job(gateway(monkeypatch, emu), shard, planned, params)
    assert requests_files(emu) == []


def test_expired_results_are_sent_again_never_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator({"files": {"expire_after_seconds": 1.0}})
    api = gateway(monkeypatch, emu)
    first = submit_job(api, shard, planned, params)
    done, outcome = finished(api, first.job_id)
    assert done.output_file
    eventually(lambda: True if not api.file_exists(str(done.output_file)) else None, "expiry")

    collected = collect_results(api, outcome, shard, planned, params)
    assert collected.expired and collected.succeeded_texts == 0
    assert collected.transient_failures == shard.texts  # all of them go to the retry pass
    failures = storage.read_parquet(collected.failures_uri)
    assert set(failures["reason"]) == {"results_expired"}

    again = submit_job(api, shard, planned, params)  # a rerun: the expired job is not reused
    assert not again.reattached and again.job_id != first.job_id
    assert again.expired_jobs == [first.job_id]
    assert len(ours(emu)) == 2


def test_collected_results_are_reused_only_when_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator(None)
    api = gateway(monkeypatch, emu)
    job = submit_job(api, shard, planned, params)
    done, outcome = finished(api, job.job_id)
    first = collect_results(api, outcome, shard, planned, params)
    assert first.succeeded_texts == shard.texts
    # A rerun reuses the staged results without downloading (the file may have expired) ...
    api.delete_file(str(done.output_file))
    assert collect_results(api, outcome, shard, planned, params) == first
    # ... unless they are not whole: then it downloads again (here: gone, so expired).
    results = Path(first.results_uri)
    results.write_bytes(results.read_bytes()[:100])
    assert collect_results(api, outcome, shard, planned, params).expired


def test_a_run_killed_right_after_its_upload_leaves_no_orphan_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    """The killed attempt uploaded the file but never recorded its id: the rerun finds it by
    name (the name carries the content hash) and the job uses it; nothing is left unused."""
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator(None)
    api = gateway(monkeypatch, emu)

    class KilledError(RuntimeError):
        pass

    def die(name: str) -> None:
        if name == "upload":
            raise KilledError

    with monkeypatch.context() as patched:
        patched.setattr("tasks.batch.failpoint", die)
        with pytest.raises(KilledError):
            submit_job(api, shard, planned, params)
    uploaded = requests_files(emu)
    assert len(uploaded) == 1 and uploaded[0]["used_by"] == []
    ref = submit_job(api, shard, planned, params)
    files = requests_files(emu)
    assert [(f["id"], f["used_by"]) for f in files] == [(uploaded[0]["id"], [ref.job_id])]


def test_a_create_refused_after_an_ambiguous_one_keeps_the_file_a_job_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    """The first create made a job but answered 504, the listing lags past the wait, the second
    is refused: the upload stays, since the first attempt's job uses it."""
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator(
        {
            "listing": {"lag_seconds": 60.0},
            "http": [
                {"route": "POST /v1/batch/jobs", "status": 504, "after_handling": True, "limit": 1},
                {"route": "POST /v1/batch/jobs", "status": 400},
            ],
        }
    )
    with pytest.raises(TerminalApiError, match="HTTP 400"):
        submit_job(gateway(monkeypatch, emu, lag=0.5), shard, planned, params)
    [job] = ours(emu)
    assert [f["used_by"] for f in requests_files(emu)] == [[job["id"]]]


def test_results_collected_whole_outlive_their_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    """A rerun after the results expired does not pay again for a job it already collected."""
    params, planned, shard = one_shard(tmp_path)
    emu = start_emulator({"files": {"expire_after_seconds": 4.0}})
    api = gateway(monkeypatch, emu)
    first = submit_job(api, shard, planned, params)
    done, outcome = finished(api, first.job_id)
    assert not collect_results(api, outcome, shard, planned, params).expired
    eventually(lambda: True if not api.file_exists(str(done.output_file)) else None, "expiry")
    again = submit_job(api, shard, planned, params)
    assert again.reattached and again.job_id == first.job_id and again.expired_jobs == []
    assert len(ours(emu)) == 1
