"""`enrich run`'s output, the flow run in this process against the emulator: where output is
read as text (here), one plain line per step and the run's summary table; Prefect's per-task
"Finished in state" lines only with --verbose, and in the Prefect API either way."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.configuration import ensure_logging_setup
from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler
from typer.testing import CliRunner, Result

from emulator.server import EmulatorProcess
from flows.cli import app
from schemas.params import EnrichParams
from tasks.core.keys import artifact_key
from tests.flows.conftest import write_dataset

ROWS = 40


@pytest.fixture
def prefect_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What Prefect's console handler prints: the one Prefect's logging setup put on the root
    logger gives way to one in its format that writes to a buffer."""
    ensure_logging_setup()  # as importing the flow does in `enrich run`
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    buffer = io.StringIO()
    handler = PrefectConsoleHandler(stream=buffer)
    handler.setFormatter(consoles[0].formatter)
    kept = [h for h in root.handlers if h not in consoles]
    monkeypatch.setattr(root, "handlers", [*kept, handler])
    yield buffer


def enrich_run(source: Path, output: Path, *flags: str) -> Result:
    args = ["run", "--input", str(source), "--id-column", "id", "--text-column", "text"]
    args += ["--output", str(output), "--partition", "2026-11-22", "--shard-size", "20"]
    result = CliRunner().invoke(app, [*args, "--poll-interval", "0.1", *flags])
    assert result.exit_code == 0, result.output
    return result


def test_a_run_shows_its_steps_and_summary_not_prefects_task_lines(
    tmp_path: Path, mistral: EmulatorProcess, prefect_console: io.StringIO
) -> None:
    source = write_dataset(tmp_path / "in.parquet", [f"comment {i}" for i in range(ROWS)])
    output = tmp_path / "out"
    result = enrich_run(source, output)

    lines = result.output.splitlines()
    assert re.fullmatch(r"run: flow run '.+'", lines[0])
    steps = [line.split(":")[0] for line in lines if re.match(r"[a-z-]+: .*\(\d+\.\d s\)$", line)]
    assert steps == ["plan", "build", "submit", "wait", "collect", "write", "validate", "publish"]
    shown = "\n".join(lines)
    assert re.search(rf"^plan: {ROWS} rows in (\d+) shard\(s\); 0 rejected", shown, re.M)
    jobs = re.search(r"^wait: (\d+)/\1 jobs done \(SUCCESS \1\), (\d+)/\2 requests", shown, re.M)
    assert jobs, shown
    published = output / "partition=2026-11-22" / "part-0.parquet"
    assert re.search(rf"^publish: {ROWS} rows -> {re.escape(str(published))} ", shown, re.M)

    summary = Artifact.get(artifact_key(params(source, output), "summary"))
    assert summary is not None and isinstance(summary.data, str)
    assert summary.data.strip() in result.output  # the table the UI shows, as text here
    assert lines[-1].startswith(f"Enriched {ROWS} of {ROWS} rows")

    assert "Finished in state" not in result.output
    assert "Finished in state" not in prefect_console.getvalue()
    assert summary.flow_run_id is not None
    api_lines = logged(summary.flow_run_id)
    assert sum(line == "Finished in state Completed()" for line in api_lines) >= 10


def test_verbose_prints_prefects_lines_of_every_task(
    tmp_path: Path, mistral: EmulatorProcess, prefect_console: io.StringIO
) -> None:
    source = write_dataset(tmp_path / "in.parquet", [f"comment {i}" for i in range(ROWS)])
    result = enrich_run(source, tmp_path / "out", "--dry-run", "--verbose")
    assert re.search(r"Task run '.+' - Finished in state Completed\(\)", result.output)
    assert re.search(r"Flow run '.+' - Beginning flow run", result.output)
    assert re.search(rf"^plan: {ROWS} rows in \d+ shard\(s\)", result.output, re.M)
    assert "Dry run: nothing was uploaded, submitted or published." in result.output
    assert prefect_console.getvalue() == ""  # printed once, by the display


def test_an_expected_error_ends_the_run_with_its_message_not_a_traceback(
    tmp_path: Path, mistral: EmulatorProcess, prefect_console: io.StringIO
) -> None:
    source = write_dataset(tmp_path / "in.parquet", ["one", "two"])
    args = ["run", "--input", str(source), "--id-column", "id", "--text-column", "body"]
    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # not the error: typer draws no traceback
    message = f"text column 'body' is not in {source}; available columns: id, text"
    assert result.output.splitlines()[-1] == f"Failed: {message}"
    assert re.search(rf"ERROR .* - Finished in state Failed\(.*{re.escape(message)}", result.output)
    assert "Traceback" not in result.output + prefect_console.getvalue()


def params(source: Path, output: Path) -> EnrichParams:
    return EnrichParams.model_validate(
        {"input": str(source), "id_column": "id", "text_column": "text", "output": str(output)}
    )


def logged(flow_run_id: object) -> list[str]:
    """The messages the Prefect API holds for the flow run and its tasks."""
    APILogHandler().flush()  # logs reach the API in batches: send what is queued first
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]
