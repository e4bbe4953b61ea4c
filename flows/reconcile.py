"""The reconcile flow (hourly): Mistral jobs of this project whose Prefect run is over.

A host that dies runs no hook, and a crashed run leaves its jobs running on purpose (the next run
of the same input reattaches). This flow finds running jobs that carry this project's metadata
and whose flow run has ended (or is gone), then, per ``action``:

* ``adopt`` — start a new run of the same deployment with the same parameters; it reattaches to
  the jobs by their keys, collects, validates and publishes. Runs not launched from a deployment
  (``enrich run``) cannot be relaunched: they are reported.
* ``cancel`` — cancel the jobs: stop the spending.
* ``report`` — only list them.
"""

from __future__ import annotations

from collections import defaultdict
from enum import StrEnum
from typing import Any
from uuid import UUID

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from pydantic import BaseModel

from schemas.params import EnrichParams
from tasks.batch import gateway

ADOPTS_TAG = "enrich-adopts-{run}"
_UNFINISHED = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
]


class ReconcileAction(StrEnum):
    adopt = "adopt"
    cancel = "cancel"
    report = "report"


class Orphan(BaseModel):
    flow_run_id: str
    jobs: list[str]
    outcome: str


def _run_over(client: Any, run_id: str) -> tuple[bool, FlowRun | None]:
    try:
        run = client.read_flow_run(UUID(run_id))
    except (ObjectNotFound, ValueError):
        return True, None
    return run.state is None or run.state.is_final(), run


def _already_adopted(client: Any, run_id: str) -> bool:
    running = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[ADOPTS_TAG.format(run=run_id)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_UNFINISHED)),
        ),
        limit=1,
    )
    return bool(running)


@task(name="reconcile-jobs")
def reconcile_jobs(action: ReconcileAction) -> list[Orphan]:
    logger = get_run_logger()
    api = gateway()
    by_run: dict[str, list[str]] = defaultdict(list)
    for job in api.active_jobs():
        run_id = (job.metadata or {}).get("enrich_flow_run")
        if run_id:
            by_run[run_id].append(job.id)
    orphans = []
    with get_client(sync_client=True) as client:
        for run_id, job_ids in sorted(by_run.items()):
            over, run = _run_over(client, run_id)
            if not over:
                continue
            if action is ReconcileAction.cancel:
                for job_id in job_ids:
                    api.cancel(job_id)
                outcome = "cancelled"
            elif action is ReconcileAction.adopt and run is not None and run.deployment_id:
                if _already_adopted(client, run_id):
                    outcome = "being adopted"
                else:
                    adopted = client.create_flow_run_from_deployment(
                        run.deployment_id,
                        parameters=form_parameters(run.parameters),
                        tags=[ADOPTS_TAG.format(run=run_id)],
                    )
                    outcome = f"adopted by flow run {adopted.id}"
            elif action is ReconcileAction.adopt:
                outcome = (
                    "not adoptable (no deployment): run `enrich run` again with the same "
                    "parameters to collect them, or reconcile with action=cancel"
                )
            else:
                outcome = "reported"
            logger.info(
                "Flow run %s is over but its batch jobs %s still run: %s",
                run_id,
                ", ".join(job_ids),
                outcome,
            )
            orphans.append(Orphan(flow_run_id=run_id, jobs=job_ids, outcome=outcome))
    return orphans


@flow(name="reconcile")
def reconcile(action: ReconcileAction = ReconcileAction.adopt) -> list[Orphan]:
    """Find this project's running Mistral jobs whose flow run is over; adopt, cancel or report
    them."""
    return reconcile_jobs(action)


def form_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """A run's parameters in the shape the deployment's enforced schema accepts (a run created
    before the form kept its kind inside ``options`` may hold it beside them)."""
    try:
        params = EnrichParams.model_validate(parameters["params"])
    except (KeyError, ValueError):
        return parameters
    return {**parameters, "params": params.as_form()}
