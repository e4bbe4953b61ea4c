"""``enrich serve``: every deployment of ``prefect.yaml``, served from this process — a single
machine runs the nightly schedules, ad hoc runs from the UI and the hourly reconcile without a
work pool or worker. ``prefect.yaml`` stays the one place the deployments are defined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron

PROJECT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT / "prefect.yaml"


def deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """The deployments ``prefect.yaml`` defines, as ``serve`` takes them."""
    config = yaml.safe_load(path.read_text())
    built = []
    for spec in config["deployments"]:
        flow: Flow[Any, Any] = load_flow_from_entrypoint(str(PROJECT / spec["entrypoint"]))
        limit = spec.get("concurrency_limit")
        deployment: Any = flow.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags"),
            parameters=spec.get("parameters"),
            schedules=[
                Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                for s in spec.get("schedules") or []
            ],
            concurrency_limit=ConcurrencyLimitConfig(**limit) if limit else None,
        )
        built.append(deployment)  # sync call: a RunnerDeployment, not a coroutine
    return built


def serve_all(path: Path = PREFECT_YAML) -> None:
    from prefect import serve

    serve(*deployments(path))
