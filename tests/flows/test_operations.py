"""Operations under the session's Prefect server: events for automations, the Secret block,
the reconcile flow (report, cancel, adopt), and the cancel hook's job records."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from mistralai.client import Mistral
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.states import Crashed, Running

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from flows.reconcile import ADOPTS_TAG, ReconcileAction, reconcile
from tasks.edges.mistral import PROJECT, PROJECT_KEY
from tasks.publish import ValidationFailedError
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import use
from tests.support import API_KEY, StartEmulator, submit


def write(path: Path, texts: list[str | None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": list(range(len(texts))), "text": texts}).write_parquet(path)
    return path


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return value


def events_named(prefix: str, since: datetime) -> list[Any]:
    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                event=EventNameFilter(prefix=[prefix]),
                occurred=EventOccurredFilter(since=since),
            ),
            limit=50,
        )
    return list(page.events)


def test_events_for_published_failed_and_finished_jobs(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    output = tmp_path / "events-table"
    summary = enrich(params(write(tmp_path / "in.parquet", ["a", "b", "c"]), output))

    dataset = f"enrich.dataset.{output.as_uri()}"  # well-formed: the table's absolute URI

    def of_this_run(prefix: str) -> list[Any]:  # other tests' events may arrive meanwhile
        return [
            e
            for e in events_named(prefix, since)
            if e.resource.id == dataset
            or e.resource.id.removeprefix("mistral.batch-job.") in summary.jobs
        ]

    published = wait_until("the published event", lambda: of_this_run("enrich.run."))
    event = published[0]
    assert event.event == "enrich.run.published"
    assert event.resource["enrich.partition"] == "2026-11-22"
    assert event.payload["rows"] == 3
    jobs = wait_until(
        "the job events",
        lambda: (
            (found := of_this_run("enrich.batch-job."))
            and len(found) == len(summary.jobs)
            and found
        ),
    )
    assert {e.resource.id for e in jobs} == {f"mistral.batch-job.{j}" for j in summary.jobs}
    assert {e.event for e in jobs} == {"enrich.batch-job.success"}
    assert jobs[0].related[0].id == dataset

    since = datetime.now(UTC) - timedelta(seconds=1)
    bad = write(tmp_path / "bad.parquet", [None, None, "c"])  # 2 of 3 rejected: the gate fails
    with pytest.raises(ValidationFailedError):
        enrich(params(bad, tmp_path / "bad-table"))
    bad_dataset = f"enrich.dataset.{(tmp_path / 'bad-table').as_uri()}"
    failed = wait_until(
        "the failed event",
        lambda: [
            e for e in events_named("enrich.run.failed", since) if e.resource.id == bad_dataset
        ],
    )
    assert failed[0].payload["state"] == "Failed"
    assert API_KEY not in failed[0].model_dump_json()


def test_the_key_comes_from_the_secret_block_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistral: EmulatorProcess
) -> None:
    from prefect.blocks.system import Secret

    from tasks.edges.settings import mistral_settings

    block = f"key-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MISTRAL_API_KEY_BLOCK", block)
    monkeypatch.setenv("MISTRAL_API_KEY", "wrong-key-from-the-environment")
    source = write(tmp_path / "in.parquet", ["one"])
    with pytest.raises(Exception, match="401"):  # no block yet: the (wrong) variable is used
        enrich(params(source, tmp_path / "out"))
    Secret(value=API_KEY).save(block)
    assert enrich(params(source, tmp_path / "out")).enriched_rows == 1
    settings = mistral_settings()
    assert settings.api_key is not None and API_KEY not in repr(settings)


def running_job(client: Mistral, flow_run_id: str, *, ours: bool = True) -> str:
    """A running job of this project (or, ``ours=False``, another user's job that merely carries
    the same run id in its metadata)."""
    project = {PROJECT_KEY: PROJECT} if ours else {}
    job = submit(
        client,
        "/v1/embeddings",
        [{"input": f"slow {i}"} for i in range(60)],
        model="mistral-embed",
        metadata={"enrich_key": uuid.uuid4().hex, "enrich_flow_run": flow_run_id, **project},
    )
    return job.id


def test_reconcile_reports_cancels_and_adopts_jobs_whose_run_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    emu = use(monkeypatch, start_emulator(None, "--requests-per-second", "2"))
    client = Mistral(api_key=API_KEY, server_url=emu.url)
    gone_run = str(uuid.uuid4())
    gone = running_job(client, gone_run)  # its flow run does not exist (any more)
    theirs = running_job(client, gone_run, ours=False)  # never reported, adopted or cancelled

    with get_client(sync_client=True) as prefect:
        alive_run = prefect.create_flow_run(reconcile, state=Running())
    alive = running_job(client, str(alive_run.id))  # its run is still going: left alone

    deployment_id = reconcile.to_deployment(name=f"adoptable-{tmp_path.name}").apply()
    with get_client(sync_client=True) as prefect:
        crashed_run = prefect.create_flow_run_from_deployment(
            deployment_id, parameters={"action": "report"}, state=Crashed()
        )
    crashed = running_job(client, str(crashed_run.id))

    reported = {o.flow_run_id: o for o in reconcile(ReconcileAction.report)}
    assert set(reported) == {gone_run, str(crashed_run.id)}  # the alive run's job is left alone
    assert reported[str(crashed_run.id)].jobs == [crashed]
    assert reported[gone_run].jobs == [gone]  # not the other user's job with the same run id

    adopted = {o.flow_run_id: o.outcome for o in reconcile(ReconcileAction.adopt)}
    assert adopted[str(crashed_run.id)].startswith("adopted by flow run ")
    assert adopted[gone_run].startswith("not adoptable (no deployment)")
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(limit=200)
    relaunched = [r for r in runs if ADOPTS_TAG.format(run=crashed_run.id) in r.tags]
    assert len(relaunched) == 1 and relaunched[0].parameters == {"action": "report"}
    again = {o.flow_run_id: o.outcome for o in reconcile(ReconcileAction.adopt)}
    assert again[str(crashed_run.id)] == "being adopted"  # not relaunched every hour

    reconcile(ReconcileAction.cancel)
    assert client.batch.jobs.get(job_id=gone).status in ("CANCELLATION_REQUESTED", "CANCELLED")
    assert client.batch.jobs.get(job_id=crashed).status in (
        "CANCELLATION_REQUESTED",
        "CANCELLED",
    )
    assert client.batch.jobs.get(job_id=alive).status == "RUNNING"
    assert client.batch.jobs.get(job_id=theirs).status == "RUNNING"
    client.batch.jobs.cancel(job_id=alive)
    client.batch.jobs.cancel(job_id=theirs)


def test_the_run_records_its_jobs_for_the_cancel_hook(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    state = enrich(
        params(write(tmp_path / "in.parquet", ["x", "y"]), tmp_path / "out"), return_state=True
    )
    run_id = str(state.state_details.flow_run_id)
    summary = state.result()
    records = list((tmp_path / "_enrich" / "out" / "runs" / run_id).glob("*.json"))
    assert {p.stem for p in records} == set(summary.jobs)
    client = Mistral(api_key=API_KEY, server_url=mistral.url)
    job = client.batch.jobs.get(job_id=next(iter(summary.jobs)))
    assert job.metadata is not None and job.metadata["enrich_flow_run"] == run_id
