"""What people see in Prefect: one artifact history per table and kind, run and task names that
say what ran, dry runs told apart, one clear message per expected failure (no traceback), and a
failure event even when the parameters did not validate. Read back through the server's API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tasks.core.keys import artifact_key
from tasks.publish import ValidationFailedError
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import write_dataset
from tests.flows.test_operations import events_named, wait_until


def history(key: str) -> list[Any]:
    """Every version of the artifact ``key``, oldest first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return sorted(found, key=lambda a: a.created)


def flow_run(run_id: UUID) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def task_run_names(run_id: UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    return sorted(r.name for r in runs)


def log_lines(run_id: UUID) -> list[str]:
    APILogHandler().flush()  # logs reach the API in batches: send what is queued first
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return [log.message for log in logs]


def test_one_history_per_table_and_kind_across_partitions(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    """One table run on two partitions, and a second table with a similar name run once: each
    table keeps its own history under keys that name it, the same key for every partition."""
    name = f"orders-{uuid.uuid4().hex[:8]}"
    source = write_dataset(tmp_path / "in.parquet", [f"order {i}" for i in range(30)])
    first, other = tmp_path / name, tmp_path / f"{name}_strict"
    states = [  # the cache off: each partition sends, so each has a progress artifact too
        enrich(params(source, first, partition=day, cache_mode="off"), return_state=True)
        for day in ("2026-11-30", "2026-12-01")
    ]
    enrich(params(source, other), return_state=True)

    table = params(source, first)
    assert artifact_key(table, "summary") == f"enrich-{name}-embeddings-summary"
    for what in ("summary", "plan", "progress"):
        versions = history(artifact_key(table, what))
        assert len(versions) == 2, what  # both partitions, one key
        assert [v.flow_run_id for v in versions] == [s.state_details.flow_run_id for s in states]
        assert all(name in (v.description or "") for v in versions), what
    summaries = history(artifact_key(table, "summary"))
    assert "2026-11-30" in summaries[0].description and "2026-12-01" in summaries[1].description
    assert summaries[1].data.startswith(f"# embeddings · {name} · 2026-12-01\n")
    assert "published" in summaries[1].data
    strict = params(source, other)
    assert artifact_key(strict, "summary") == f"enrich-{name}-strict-embeddings-summary"
    assert len(history(artifact_key(strict, "summary"))) == 1  # not mixed into the first table

    run = flow_run(states[1].state_details.flow_run_id)
    assert run.name == f"embeddings · {name} · 2026-12-01"
    names = task_run_names(run.id)
    assert "submit · shard 0 · attempt 0" in names and "write · shard 0" in names
    assert "collect · shard 0 · attempt 0" in names and "build-requests · shard 0" in names


def test_a_dry_run_is_tagged_and_ends_in_a_state_named_for_it(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    name = f"dry-{uuid.uuid4().hex[:8]}"
    source = write_dataset(tmp_path / "in.parquet", ["a", "b", "c"])
    state = enrich(params(source, tmp_path / name, dry_run=True), return_state=True)
    assert state.is_completed() and state.name == "Dry run"
    assert state.result().dry_run  # a caller still gets the summary
    run = flow_run(state.state_details.flow_run_id)
    assert run.name == f"embeddings · {name} · 2026-11-22 · dry run"
    assert "dry-run" in run.tags and run.state.name == "Dry run"
    [plan] = history(artifact_key(params(source, tmp_path / name), "plan"))
    assert plan.description.startswith("Dry run: plan")


def test_an_expected_error_is_one_message_without_traceback(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    source = write_dataset(tmp_path / "in.parquet", ["a"], lang=["en"])
    state = enrich(params(source, tmp_path / "out", text_column="body"), return_state=True)
    assert state.is_failed() and "'body'" in (state.message or "")
    lines = wait_until(
        "the run's logs",
        lambda: (
            (found := log_lines(state.state_details.flow_run_id))
            and any("'body'" in line for line in found)
            and found
        ),
    )
    assert not [line for line in lines if "Traceback" in line], lines


def test_a_validation_failure_says_what_failed_in_plain_words(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    source = write_dataset(tmp_path / "in.parquet", [None, None, "fine"])  # 2 of 3 rejected
    table = params(source, tmp_path / name)
    with pytest.raises(ValidationFailedError, match=r"66\.7 % of rows rejected, more than"):
        enrich(table)
    [checks] = history(artifact_key(table, "validation"))
    assert "66.7 % of rows rejected, more than max_rejected_fraction = " in checks.data
    assert '"rows failing"' in checks.data and '"example ids": "0, 1"' in checks.data
    [link] = history(artifact_key(table, "quarantine"))
    target = link.data.split("](", 1)[1].rstrip(")")
    assert target.startswith("file:///") and Path(target.removeprefix("file://")).is_file()
    [summary] = history(artifact_key(table, "summary"))
    assert "quarantined" in summary.data and "NOT published" in summary.data
    assert "| enriched |" not in summary.data


def test_a_run_whose_parameters_do_not_validate_still_emits_the_failed_event(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    output = tmp_path / f"nolabels-{uuid.uuid4().hex[:8]}"
    raw = {
        "input": str(tmp_path / "in.parquet"),
        "output": str(output),
        "id_column": "id",
        "text_column": "text",
        "options": {"kind": "classification"},  # no labels: refused by the validation
    }
    state = enrich(params=raw, return_state=True)  # type: ignore[arg-type]
    assert state.is_failed()
    dataset = f"enrich.dataset.{output.as_uri()}"
    [event] = wait_until(
        "the failed event",
        lambda: [e for e in events_named("enrich.run.failed", since) if e.resource.id == dataset],
    )
    assert event.resource["enrich.kind"] == "classification"
    assert "labels" in event.payload["message"]
