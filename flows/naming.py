"""What a run is called in Prefect: ``<kind> · <table> · <partition>`` (plus ``dry run``), so
the runs list reads like a ledger of tables, and a dry run is told apart at a glance: it carries
the ``dry-run`` tag and ends in a Completed state named "Dry run"."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed
from pydantic import ValidationError

from schemas.params import EnrichParams
from schemas.refs import RunSummary
from tasks.core.keys import table_name

DRY_RUN_TAG = "dry-run"


def describe(params: EnrichParams) -> str:
    parts = [params.kind.value, table_name(params.output), params.partition_value()]
    return " · ".join(parts) + (" · dry run" if params.dry_run else "")


def run_name() -> str:
    """The flow run's name, from its parameters (Prefect calls it as the run starts)."""
    raw: Any = flow_run.parameters.get("params")
    try:
        params = raw if isinstance(raw, EnrichParams) else EnrichParams.model_validate(raw)
    except ValidationError:
        return "enrich · invalid parameters"
    return describe(params)


def tag_dry_run() -> None:
    """Add the ``dry-run`` tag to the current flow run (filterable in the runs list)."""
    found = flow_run.get_id()
    if found is None:
        return
    run_id = UUID(found)
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(run_id)
        if DRY_RUN_TAG not in current.tags:
            client.update_flow_run(run_id, tags=[*current.tags, DRY_RUN_TAG])


def dry_run_ended(summary: RunSummary) -> RunSummary:
    """A Completed state named "Dry run" holding the summary: the flow run's state says what it
    was, and a caller of the flow still receives the summary (Prefect unwraps the state)."""
    state: State[RunSummary] = Completed(
        name="Dry run",
        message=f"Dry run: {summary.estimated.texts:,} texts planned, nothing submitted",
        data=summary,
    )
    return cast(RunSummary, state)  # the flow returns the state; its callers get ``summary``
