"""``enrich emulator`` / ``python -m emulator``: run the local Mistral API emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emulator.catalog import ModelNaming

app = typer.Typer(add_completion=False, help="Run the local Mistral API emulator.")


@app.command("emulator")
def emulator(
    data_dir: Annotated[
        Path, typer.Option(help="Where files and jobs are kept; a restart resumes from it.")
    ],
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep it on loopback.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8088,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="EMULATOR_API_KEY",
            show_default=False,
            help="Require this Bearer key (401 otherwise). Prefer the EMULATOR_API_KEY variable.",
        ),
    ] = None,
    faults: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Fault-injection plan (YAML/JSON)."),
    ] = None,
    classifiers: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Fine-tuned classifier models (YAML/JSON)."),
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(
            help="ALIAS=VERSION: the version that answers a model alias "
            "(e.g. mistral-moderation-latest=mistral-moderation-2411). Repeatable."
        ),
    ] = None,
    answer_model: Annotated[
        ModelNaming,
        typer.Option(
            help="What a response body's `model` names: the alias asked for, or the "
            "version that answered."
        ),
    ] = "alias",
    job_model: Annotated[
        ModelNaming,
        typer.Option(help="What a created job's `model` names: the alias, or its version."),
    ] = "alias",
    queue_seconds: Annotated[float, typer.Option(help="Seconds a job stays QUEUED.")] = 0.5,
    requests_per_second: Annotated[
        float, typer.Option(help="Requests a job processes per second; 0: as fast as possible.")
    ] = 0.0,
    hour_seconds: Annotated[
        float, typer.Option(help="Real seconds per hour of a job's timeout_hours.")
    ] = 3600.0,
    workers: Annotated[
        int, typer.Option(min=0, help="Processes answering batch lines; 0: one per core.")
    ] = 0,
    pending_requests_limit: Annotated[
        int, typer.Option(min=1, help="Pending requests a workspace may hold (Mistral: 1M).")
    ] = 1_000_000,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Serve Mistral's files, batch-jobs and inference routes on HOST:PORT."""
    from emulator.app import EmulatorConfig
    from emulator.catalog import Catalog
    from emulator.faults import FaultPlan
    from emulator.runner import Timing
    from emulator.server import serve

    try:
        plan = FaultPlan.load(faults) if faults else FaultPlan()
        aliases = dict(_alias(a) for a in alias or [])
        catalog = Catalog.load(classifiers).with_models(aliases, answer_model, job_model)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    config = EmulatorConfig(
        data_dir=data_dir,
        api_key=api_key,
        faults=plan,
        catalog=catalog,
        timing=Timing(
            queue_seconds=queue_seconds,
            requests_per_second=requests_per_second,
            hour_seconds=hour_seconds,
            workers=workers,
        ),
        pending_requests_limit=pending_requests_limit,
    )
    serve(config, host, port, access_log=access_log)


def _alias(text: str) -> tuple[str, str]:
    name, sep, version = text.partition("=")
    if not sep or not name.strip() or not version.strip():
        raise ValueError(f"--alias {text!r}: write it ALIAS=VERSION")
    return name.strip(), version.strip()


def main() -> None:
    app()
