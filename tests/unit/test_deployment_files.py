"""prefect.yaml and the shipped automation are valid for Prefect (the e2e tests apply them)."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.events.schemas.automations import AutomationCore

from deployments.serve import PREFECT_YAML, PROJECT, deployments
from schemas.params import EnrichParams


def test_every_deployment_builds_and_its_parameters_validate() -> None:
    built = {d.name: d for d in deployments()}
    assert set(built) == {
        "nightly-embeddings",
        "nightly-moderation",
        "nightly-classification",
        "adhoc",
        "reconcile",
        "resume-finished",
    }
    for name, deployment in built.items():
        if name not in ("reconcile", "resume-finished"):
            EnrichParams.model_validate(deployment.parameters["params"])
        for schedule in deployment.schedules or []:
            assert schedule.schedule.timezone  # type: ignore[union-attr]
    config = yaml.safe_load(PREFECT_YAML.read_text())
    assert config["pull"][0]["prefect.deployments.steps.set_working_directory"]


def test_the_failure_automation_is_valid() -> None:
    path = PROJECT / "deployments" / "automations" / "notify-on-failure.yaml"
    for spec in yaml.safe_load(Path(path).read_text())["automations"]:
        automation = AutomationCore.model_validate(spec)
        assert automation.trigger.expect == {"enrich.run.failed"}  # type: ignore[union-attr]
