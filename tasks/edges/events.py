"""Prefect events for automations: a run published, a run failed, a batch job ended.

Resources identify the dataset (``enrich.dataset.<output>``), its partition and the Mistral job
(``mistral.batch-job.<id>``), so an automation can match "any failure of this table" or "any
job that ended FAILED". Payloads hold counts, statuses and messages — never the API key.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from schemas.params import EnrichParams

RUN_PUBLISHED = "enrich.run.published"
RUN_FAILED = "enrich.run.failed"
JOB_ENDED = "enrich.batch-job.{status}"  # success, failed, timeout_exceeded, cancelled


def dataset(params: EnrichParams, partition: str | None) -> dict[str, str]:
    resource = {
        "prefect.resource.id": f"enrich.dataset.{params.output}",
        "prefect.resource.name": params.output,
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
            "enrich.dataset": params.output,
        },
        related=[related],
        payload={"status": status, **payload},
    )
