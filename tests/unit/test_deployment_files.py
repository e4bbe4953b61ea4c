"""prefect.yaml and the shipped automation are valid for Prefect (the e2e tests apply them)."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_every_deployments_parameters_pass_the_schema_the_server_enforces() -> None:
    """The server checks a run's parameters against the stored schema (one set of options per
    kind): the shipped defaults must pass it, or no scheduled run could be created."""
    from prefect.utilities.schema_tools.validation import validate

    for deployment in deployments():
        schema = deployment._parameter_openapi_schema.model_dump_for_openapi()
        validate(deployment.parameters, schema, raise_on_error=True, preprocess=True)


def test_the_form_schema_refuses_what_the_parameters_refuse() -> None:
    """The form's schema and EnrichParams agree on the kinds' required options."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    from flows.enrich import enrich

    schema = parameter_schema(enrich.fn).model_dump_for_openapi()
    base = {"input": "/in.parquet", "output": "/out", "id_column": "id", "text_column": "text"}
    good = [
        {},
        {"options": {"kind": "classification", "labels": ["a", "b"], "model": ""}},
        {
            "options": {
                "kind": "extract",
                "json_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        },
        {"options": {"kind": "classifier", "classifier_model": "ft:classifier:x"}},
        {"partition": "", "work": "", "cache": ""},
    ]
    for extra in good:
        validate({"params": base | extra}, schema, raise_on_error=True, preprocess=True)
        EnrichParams.model_validate(base | extra)
    bad = [
        {"options": {"kind": "classification"}},
        {"options": {"kind": "classification", "labels": ["a"]}},
        {"options": {"kind": "embeddings", "labels": ["a", "b"]}},
        {"options": {"kind": "classifier"}},
    ]
    for extra in bad:
        with pytest.raises(ValidationError):
            validate({"params": base | extra}, schema, raise_on_error=True, preprocess=True)
        with pytest.raises(ValueError):
            EnrichParams.model_validate(base | extra)


def test_parameters_in_the_python_shape_are_sent_in_the_forms() -> None:
    """The reconcile flow adopts a run by creating a new one from its deployment: parameters
    held in the Python shape (kind beside options, nulls) are sent in the form's shape."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.enrich import enrich
    from flows.reconcile import form_parameters

    schema = parameter_schema(enrich.fn).model_dump_for_openapi()
    python_shape = EnrichParams.model_validate(
        {
            "input": "/in.parquet",
            "output": "/out",
            "id_column": "id",
            "text_column": "text",
            "kind": "classification",
            "options": {"labels": ["a", "b"]},
        }
    ).model_dump(mode="json")
    sent = form_parameters({"params": python_shape})
    validate(sent, schema, raise_on_error=True, preprocess=True)
    assert sent["params"]["options"] == {"kind": "classification", "labels": ["a", "b"]}
    assert EnrichParams.model_validate(sent["params"]) == EnrichParams.model_validate(python_shape)
