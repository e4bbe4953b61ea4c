"""``wait=suspend`` under the test server: the resumer's decisions, and a run without a deployment.

The whole path (a worker, a run that suspends and frees it, the resumed run with no new job) is
in ``tests/e2e``; here the resumer meets suspended and cancelled runs whose jobs still run or
are over, on a real emulator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from prefect.states import Cancelled, Suspended

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from flows.suspend import WAITING_LABEL, resume_finished
from tests.flows.conftest import flow_params, use, write_dataset
from tests.support import StartEmulator, sdk, submit, wait_for

SLOW = ("--requests-per-second", "20")  # a 200-request job runs ~10 s


def _job(emu: EmulatorProcess, requests: int) -> str:
    bodies = [{"input": [f"text {i}"]} for i in range(requests)]
    return submit(sdk(emu), "/v1/moderations", bodies, model="mistral-moderation-latest").id


def _run(state: Any, params: dict[str, Any], jobs: list[str], *, deployment: bool) -> UUID:
    """A flow run of ``enrich`` (from a deployment or not) in ``state``, waiting on ``jobs``."""

    async def create() -> UUID:
        async with get_client() as client:
            flow_id = await client.create_flow(enrich)
            if deployment:
                deployment_id = await client.create_deployment(flow_id=flow_id, name="suspend")
                run = await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"params": params}
                )
            else:
                run = await client.create_flow_run(enrich, parameters={"params": params})
            await client.set_flow_run_state(run.id, state, force=True)
            await client.update_flow_run_labels(run.id, {WAITING_LABEL: ",".join(jobs)})
            return run.id

    return asyncio.run(create())


def _state(run_id: UUID) -> tuple[str, str, dict[str, Any]]:
    async def read() -> tuple[str, str, dict[str, Any]]:
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
            assert run.state is not None
            return run.state.type.value, str(run.state.name), dict(run.labels)

    return asyncio.run(read())


def _outcome(run_id: UUID) -> str | None:
    found = [r.outcome for r in resume_finished() if r.flow_run_id == str(run_id)]
    return found[0] if found else None


def test_a_suspended_run_is_resumed_once_its_jobs_are_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    emu = use(monkeypatch, start_emulator(None, *SLOW))
    job = _job(emu, 200)
    params = flow_params(tmp_path / "in.parquet", tmp_path / "out").model_dump(mode="json")
    run_id = _run(Suspended(timeout_seconds=3600), params, [job], deployment=True)
    assert _outcome(run_id) == "waiting: 1 of 1 job(s) still run"
    assert _state(run_id)[:2] == ("PAUSED", "Suspended")
    wait_for(sdk(emu), job, timeout=60)
    assert _outcome(run_id) == "resumed"
    assert _state(run_id)[:2] == ("SCHEDULED", "Resuming")  # a worker picks it up from here
    assert _outcome(run_id) is None  # not suspended any more: left alone


def test_a_run_suspended_past_its_timeout_fails_and_the_resumer_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    emu = use(monkeypatch, start_emulator(None))
    job = _job(emu, 5)
    wait_for(sdk(emu), job, timeout=60)
    params = flow_params(tmp_path / "in.parquet", tmp_path / "out").model_dump(mode="json")
    expired = _run(Suspended(timeout_seconds=1), params, [job], deployment=True)
    due = _run(Suspended(timeout_seconds=3600), params, [job], deployment=True)
    time.sleep(1.5)  # past the first one's timeout: no event marks it
    outcome = _outcome(expired)
    assert outcome is not None and outcome.startswith("not resumed"), outcome
    assert _state(expired)[0] == "FAILED"  # "The flow was suspended and never resumed."
    assert _state(due)[:2] == ("SCHEDULED", "Resuming")  # the other run was still resumed


@pytest.mark.parametrize("on_cancel", ["cancel", "detach"])
def test_the_jobs_of_a_run_cancelled_while_suspended_follow_its_on_cancel(
    on_cancel: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_emulator: StartEmulator,
) -> None:
    emu = use(monkeypatch, start_emulator(None, *SLOW))
    job = _job(emu, 400)
    params = flow_params(tmp_path / "in.parquet", tmp_path / "out", on_cancel=on_cancel)
    run_id = _run(Cancelled(), params.model_dump(mode="json"), [job], deployment=True)
    outcome = _outcome(run_id)
    status = sdk(emu).batch.jobs.get(job_id=job).status
    if on_cancel == "cancel":
        assert outcome == "cancelled 1 running job(s) of the cancelled run"
        assert status in {"CANCELLATION_REQUESTED", "CANCELLED"}
    else:
        assert outcome == "on_cancel=detach: left 1 job(s) running"
        assert status in {"QUEUED", "RUNNING"}
    assert _state(run_id)[2][WAITING_LABEL] == ""  # handled once
    assert _outcome(run_id) is None


def test_without_a_deployment_a_suspend_run_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    use(monkeypatch, start_emulator(None, "--queue-seconds", "5"))  # still QUEUED after submit
    source = write_dataset(tmp_path / "in.parquet", [f"text {i}" for i in range(60)])
    state = enrich(flow_params(source, tmp_path / "out", wait="suspend"), return_state=True)
    assert state.is_completed() and state.result().enriched_rows == 60

    async def messages() -> list[str]:
        async with get_client() as client:
            run_id = state.state_details.flow_run_id
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return [log.message for log in logs]

    APILogHandler().flush()
    assert any("wait=suspend needs a run of a deployment" in m for m in asyncio.run(messages()))
