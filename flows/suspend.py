"""``wait=suspend``: no worker held idle while Mistral works.

Once a wave's jobs are submitted and recorded (``job.json`` in staging, so any later run
reattaches to them by key), a run of a deployment labels itself with the ids of the jobs it waits
on and suspends (``suspend_flow_run``): its process exits and the worker is free. The
``resume-finished`` flow, deployed on a short interval, resumes every suspended run whose jobs are
all over. A resumed run executes the flow again from the top: the plan is rebuilt, every
submission reattaches to its recorded job (no job is created), the wait returns at once, and the
run collects, validates and publishes.

* A run resumed early (by hand) finds the same suspension key and polls instead.
* A suspended run that nobody resumes within ``timeout_hours`` + 1 h fails ("never resumed");
  a new run of the same input reattaches to the jobs while their results are kept (24 h).
* A suspended run cancelled from the UI has no process to run its cancel hook: the next
  ``resume-finished`` run cancels its jobs (``on_cancel=cancel``) or leaves them (``detach``).
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import resume_flow_run, suspend_flow_run
from prefect.logging import get_run_logger
from pydantic import BaseModel

from schemas.params import EnrichParams, OnCancel
from schemas.refs import JobRef
from tasks.batch import gateway
from tasks.edges.mistral import TERMINAL_STATUSES, MistralGateway, NotFoundApiError

WAITING_LABEL = "enrich.waiting_on"  # comma-separated ids of the jobs a suspended run waits on
SUSPEND_GRACE_HOURS = 1


def _running(api: MistralGateway, job_ids: list[str]) -> list[str]:
    running = []
    for job_id in job_ids:
        try:
            status = api.job(job_id).status
        except NotFoundApiError:
            continue  # gone: nothing to wait for; the resumed run reports it
        if status not in TERMINAL_STATUSES:
            running.append(job_id)
    return running


def suspend_while_running(jobs: list[JobRef], params: EnrichParams) -> None:
    """Suspend the flow run until ``resume-finished`` sees all ``jobs`` over; return at once
    when they are over already, or when the run cannot be suspended (no deployment)."""
    logger = get_run_logger()
    ids = sorted(j.job_id for j in jobs)
    running = _running(gateway(), ids)
    if not running:
        return
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.deployment_id is None:
        logger.warning(
            "wait=suspend needs a run of a deployment (a suspended run is resumed by a worker "
            "or `enrich serve`); this run polls its %d job(s) instead",
            len(running),
        )
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run_labels(run.id, {WAITING_LABEL: ",".join(ids)})
    logger.info(
        "Suspending: %d of %d job(s) still run (%s). The resume-finished deployment resumes this "
        "run once they are over; it reattaches to them and creates none",
        len(running),
        len(ids),
        ", ".join(running),
    )
    key = "jobs-" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
    suspend_flow_run(timeout=(params.timeout_hours + SUSPEND_GRACE_HOURS) * 3600, key=key)
    # Returning here means this suspension happened before and the run was resumed while jobs
    # still ran (by hand): the run polls them.


class Resumed(BaseModel):
    flow_run_id: str
    jobs: list[str]
    outcome: str


def _waited_on(run: FlowRun) -> list[str]:
    value = (run.labels or {}).get(WAITING_LABEL)
    return [i for i in str(value).split(",") if i] if value else []


def _runs(client: Any, state: StateType, name: str | None = None) -> list[FlowRun]:
    found: list[FlowRun] = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["enrich"])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))
        ),
        limit=200,
    )
    return [
        r for r in found if _waited_on(r) and (name is None or (r.state and r.state.name == name))
    ]


@task(name="resume-finished-runs")
def resume_finished_runs() -> list[Resumed]:
    logger = get_run_logger()
    api = gateway()
    done: list[Resumed] = []
    with get_client(sync_client=True) as client:
        for run in _runs(client, StateType.PAUSED, "Suspended"):
            jobs = _waited_on(run)
            running = _running(api, jobs)
            if running:
                outcome = f"waiting: {len(running)} of {len(jobs)} job(s) still run"
            else:
                try:
                    resume_flow_run(run.id)
                    outcome = "resumed"
                except (RuntimeError, NotPausedError, FlowPauseTimeout) as exc:  # e.g. timed out
                    outcome = f"not resumed: {exc}"
            logger.info("Flow run %s (%s): %s", run.name, run.id, outcome)
            done.append(Resumed(flow_run_id=str(run.id), jobs=jobs, outcome=outcome))
        for run in _runs(client, StateType.CANCELLED):
            done.append(_after_cancel(client, api, run))
    return done


def _after_cancel(client: Any, api: MistralGateway, run: FlowRun) -> Resumed:
    """A run cancelled while suspended ran no cancel hook: do what its ``on_cancel`` says."""
    jobs = _waited_on(run)
    on_cancel = OnCancel((run.parameters.get("params") or {}).get("on_cancel", OnCancel.cancel))
    running = _running(api, jobs)
    if on_cancel is OnCancel.cancel:
        for job_id in running:
            api.cancel(job_id)
        outcome = f"cancelled {len(running)} running job(s) of the cancelled run"
    else:
        outcome = f"on_cancel=detach: left {len(running)} job(s) running"
    client.update_flow_run_labels(UUID(str(run.id)), {WAITING_LABEL: ""})  # handled once
    get_run_logger().info("Flow run %s (%s): %s", run.name, run.id, outcome)
    return Resumed(flow_run_id=str(run.id), jobs=jobs, outcome=outcome)


@flow(name="resume-finished")
def resume_finished() -> list[Resumed]:
    """Resume suspended enrich runs whose Mistral jobs are all over (deploy it on a short
    interval); cancel the jobs of runs cancelled while suspended."""
    return resume_finished_runs()
