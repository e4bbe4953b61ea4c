"""Flow-run state hooks: cancel the run's Mistral jobs when it is cancelled, and tell
automations when it fails.

Under a worker or ``serve`` these hooks run in the worker's process, not the flow's: they read
what the run wrote down (its parameters, and the job records under ``<work>/runs/<flow run>/``),
never the flow's memory. A host that dies runs no hook at all: the ``reconcile`` deployment
catches those jobs.
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

from prefect.logging import get_logger

from schemas.params import EnrichParams, OnCancel
from tasks import lease
from tasks.batch import gateway
from tasks.core.errors import EnrichError
from tasks.core.layout import Layout
from tasks.edges import events, storage
from tasks.edges.mistral import TERMINAL_STATUSES, ApiError, MistralGateway
from tasks.edges.settings import StorageCredentialsError


def run_params(flow_run: Any) -> EnrichParams | None:
    raw = (flow_run.parameters or {}).get("params")
    try:
        return EnrichParams.model_validate(raw)
    except ValueError:
        return None


def recorded_jobs(api: MistralGateway, params: EnrichParams, flow_run_id: str) -> list[str]:
    """Job ids the run recorded, plus this project's jobs carrying its id in their metadata (a
    job created just before the record could be written); the listing is checked job by job, so
    another user's job is never touched."""
    ids = []
    try:
        for uri in storage.list_files(Layout.of(params).run_jobs(flow_run_id), ".json"):
            with storage.open_read(uri) as handle:
                ids.append(str(json.load(handle)["job_id"]))
    except (EnrichError, OSError, ValueError, KeyError) as exc:  # the listing still finds them
        get_logger("enrich.hooks").error(
            "Could not read the job records of %s: %s", flow_run_id, exc
        )
    for job in api.find_jobs({"enrich_flow_run": flow_run_id}):
        if job.id not in ids:
            ids.append(job.id)
    return ids


def release_leases(params: EnrichParams, run_id: str) -> None:
    """Free the partitions the run held, so the next run need not wait for the lease to
    expire (a run on this host that died is noticed anyway; one on another host is not)."""
    for uri in lease.release_for_run(Layout.of(params).leases(), run_id):
        get_logger("enrich.hooks").info("Released lease %s of flow run %s", uri, run_id)


def cancel_jobs(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation: cancel (or detach from) the run's unfinished jobs."""
    logger = get_logger("enrich.hooks")
    params = run_params(flow_run)
    if params is None:
        return
    run_id = str(flow_run.id)
    try:  # storage trouble must not keep the jobs running: they are found by metadata too
        storage.use_credentials(params.storage_credentials)
        release_leases(params, run_id)
    except (EnrichError, OSError) as exc:
        logger.error("Could not release the leases of flow run %s: %s", run_id, exc)
    if params.on_cancel is OnCancel.detach:
        logger.info("Flow run %s ended %s: its batch jobs are left running", run_id, state.name)
        return
    api = gateway()
    for job_id in recorded_jobs(api, params, run_id):
        try:
            status = api.job(job_id).status
            if status not in TERMINAL_STATUSES:
                logger.info("Cancelling batch job %s (%s) of flow run %s", job_id, status, run_id)
                api.cancel(job_id)
        except ApiError as exc:  # keep going: the other jobs still cost money
            logger.error("Could not cancel batch job %s: %s", job_id, exc)


def report_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure / on_crashed: an ``enrich.run.failed`` event for automations (also for a run
    whose parameters did not validate: it names the output they gave)."""
    payload = {
        "flow_run_id": str(flow_run.id),
        "state": state.name,
        "message": (state.message or "")[:1000],
    }
    params = run_params(flow_run)
    if params is None:
        raw = (flow_run.parameters or {}).get("params")
        events.failed_before_start(raw if isinstance(raw, dict) else {}, payload)
        return
    with suppress(StorageCredentialsError):  # the run may have failed on that block: no lease
        storage.use_credentials(params.storage_credentials)
        release_leases(params, str(flow_run.id))
    events.failed(params, params.partition, payload)
