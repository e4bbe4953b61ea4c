"""Prefect events for automations: a run published, a run failed, a batch job ended.

Resources identify the dataset (``enrich.dataset.<absolute URI of the output>``), its
partition and the Mistral job (``mistral.batch-job.<id>``), so an automation can match "any
failure of this table" or "any job that ended FAILED". Payloads hold counts, statuses and
messages — never the API key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.events import emit_event

from schemas.params import EnrichParams
from tasks.core.keys import table_name

RUN_PUBLISHED = "enrich.run.published"
RUN_FAILED = "enrich.run.failed"
JOB_ENDED = "enrich.batch-job.{status}"  # success, failed, timeout_exceeded, cancelled


def dataset_id(output: str) -> str:
    """``enrich.dataset.<absolute URI of the table>``: ``enrich.dataset.s3://bucket/comments``,
    ``enrich.dataset.file:///data/comments`` (one id per table, wherever the run started)."""
    uri = output if "://" in output else Path(output).absolute().as_uri()
    return f"enrich.dataset.{uri.rstrip('/')}"


def dataset(params: EnrichParams, partition: str | None) -> dict[str, str]:
    resource = {
        "prefect.resource.id": dataset_id(params.output),
        "prefect.resource.name": table_name(params.output),
        "enrich.output": params.output,
        "enrich.kind": params.kind.value,
        "enrich.model": params.model,
    }
    if partition is not None:
        resource["enrich.partition"] = partition
    return resource


def published(params: EnrichParams, partition: str, payload: dict[str, Any]) -> None:
    emit_event(RUN_PUBLISHED, resource=dataset(params, partition), payload=payload)


def failed(params: EnrichParams, partition: str | None, payload: dict[str, Any]) -> None:
    emit_event(RUN_FAILED, resource=dataset(params, partition), payload=payload)


def failed_before_start(raw: dict[str, Any], payload: dict[str, Any]) -> None:
    """``enrich.run.failed`` for a run whose parameters did not validate: the resource is the
    output it named, if any (an automation on the table still hears of it)."""
    output = raw.get("output")
    named = output if isinstance(output, str) and output else None
    resource = {
        "prefect.resource.id": dataset_id(named) if named else "enrich.dataset.unknown",
        "prefect.resource.name": table_name(named) if named else "unknown",
    }
    options = raw.get("options")
    kind = raw.get("kind") or (options.get("kind") if isinstance(options, dict) else None)
    if isinstance(kind, str):  # beside the options (CLI, files) or inside them (the run form)
        resource["enrich.kind"] = kind
    emit_event(RUN_FAILED, resource=resource, payload=payload)


def job_ended(
    params: EnrichParams, partition: str, job_id: str, status: str, payload: dict[str, Any]
) -> None:
    related = dict(dataset(params, partition), **{"prefect.resource.role": "dataset"})
    emit_event(
        JOB_ENDED.format(status=status.lower()),
        resource={
            "prefect.resource.id": f"mistral.batch-job.{job_id}",
            "prefect.resource.name": job_id,
            "enrich.partition": partition,
            "enrich.dataset": dataset_id(params.output),
        },
        related=[related],
        payload={"status": status, **payload},
    )
