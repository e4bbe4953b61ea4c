"""The run's terminal (flows/console.py), driven by log records shaped like the engine's and the
steps' own: plain step lines where output is read as text, a live panel in a terminal, Prefect's
per-task lines only when verbose, and Prefect's console handler back after the run. No flow
runs here (tests/flows/test_cli_progress.py runs `enrich run`)."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest
from prefect.logging.configuration import ensure_logging_setup
from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console

from flows.console import (
    RunDisplay,
    RunProgress,
    View,
    panel,
    print_markdown,
    showing_progress,
)

FLOW_RUN_ID = "0b8f5c2e-4a44-4f55-9d7c-1d4c1f0a6a11"
FORMAT = logging.Formatter("%(levelname)s %(name)s - %(message)s")

# (task name or None for the flow, message): the lines of a run of 250 rows in 3 shards.
JOBS = ("job-a", "job-b", "job-c")
RUN: list[tuple[str | None, str]] = [
    (None, "Beginning flow run 'embeddings · out · 2026-11-22' for flow 'enrich'"),
    ("check-locations", "Finished in state Completed()"),
    (None, "Holding the lease on out partition=2026-11-22 (out/_leases/1.json)"),
    ("repair", "Finished in state Completed()"),
    (
        "plan",
        "Planned 250 rows in 3 shard(s); 4 rejected before sending {'empty_text': 4}; "
        "10 rows (9 texts) found in the cache; staging at s/0f6a",
    ),
    ("plan", "Finished in state Completed()"),
    *[("build-requests", "Finished in state Completed()")] * 3,
    (
        "estimate",
        "Plan: 236 texts in 3 requests, 1890 prompt tokens, estimated $0.0000945; "
        "10 rows from the cache",
    ),
    ("reserve-quota", "Pending-requests quota: global concurrency limit 'm' of 100 slots"),
    ("submit", "Created batch job job-a for shard 0 attempt 0 (1 requests)"),
    ("submit", "Created batch job job-b for shard 1 attempt 0 (1 requests)"),
    ("submit", "Reattached to batch job job-c for shard 2 attempt 0 (1 requests)"),
    *[("submit", "Finished in state Completed()")] * 3,
    *[("wait", f"Batch job {job} (shard {i}, attempt 0): RUNNING, 0/1 requests") for i, job in
      enumerate(JOBS)],
    ("wait", "Batch job job-a (shard 0, attempt 0): SUCCESS, 1/1 requests"),
    ("wait", "Batch job job-b (shard 1, attempt 0): SUCCESS, 1/1 requests"),
    ("wait", "Batch job job-c (shard 2, attempt 0): FAILED, 0/1 requests"),
    ("wait", "Finished in state Completed()"),
    *[
        (
            "collect",
            f"Collected job {job} (SUCCESS): 80 texts ok, 1 transient and 0 terminal failures, "
            "0 lines missing, 0 duplicated",
        )
        for job in JOBS
    ],
    *[("collect", "Finished in state Completed()")] * 3,
    *[("write", "Finished in state Completed()")] * 3,
    ("validate", "Validation passed: 10 expectations"),
    ("validate", "Finished in state Completed()"),
    ("publish", "Published 246 rows to out/partition=2026-11-22/part-0.parquet (manifest m)"),
    ("publish", "Finished in state Completed()"),
    (None, "Seconds per step: lease 0.8, plan 0.2"),
    (None, "Finished in state Completed()"),
]  # fmt: skip

STEP_LINES = [
    "run: flow run 'embeddings · out · 2026-11-22'",
    "plan: 250 rows in 3 shard(s); 4 rejected before sending, 10 from the cache (2.0 s)",
    "build: 236 texts to send in 3 request(s), estimated $0.0000945 (4.0 s)",
    "submit: 3 batch job(s) for 3 request(s) (2 created, 1 reattached) (7.0 s)",
    "wait: 3 batch job(s), 3 request(s)",
    "wait: 3/3 jobs done (FAILED 1, SUCCESS 2), 2/3 requests answered (7.0 s)",
    "collect: 240 texts ok, 3 transient and 0 terminal failure(s) (6.0 s)",
    "write: 3/3 shard(s) written (3.0 s)",
    "validate: passed (10 expectations) (2.0 s)",
    "publish: 246 rows -> out/partition=2026-11-22/part-0.parquet (2.0 s)",
]


def record(
    task: str | None, message: str, created: float = 0.0, level: int = logging.INFO
) -> logging.LogRecord:
    """A record as Prefect's run loggers make it: the run's names and ids as attributes."""
    name = "prefect.task_runs" if task else "prefect.flow_runs"
    made = logging.LogRecord(name, level, __file__, 1, message, (), None)
    made.created = created
    made.flow_run_id = FLOW_RUN_ID
    made.flow_run_name = "embeddings · out · 2026-11-22"
    if task:
        made.task_name, made.task_run_name = task, f"{task}-6c9"
    return made


def records() -> list[logging.LogRecord]:
    """The run's records, one second apart."""
    return [record(task, message, float(i)) for i, (task, message) in enumerate(RUN)]


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=60), out


def terminal_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def test_a_run_reads_as_one_line_per_step() -> None:
    progress = RunProgress(step_began=0.0, last_seen=0.0)
    lines = [line for r in records() for line in progress.feed(r)]
    assert lines == STEP_LINES
    assert progress.flow_run_id == FLOW_RUN_ID
    assert progress.final_state == "Completed"
    assert progress.published == (246, "out/partition=2026-11-22/part-0.parquet")


def test_lines_not_read_leave_the_progress_as_it_was() -> None:
    progress = RunProgress()
    assert progress.feed(record("some-new-task", "Something new happened")) == []
    assert progress.feed(record(None, "A flow line no one reads")) == []
    assert progress.step == "some-new-task"
    assert progress.line() == ""


def test_plain_output_is_the_step_lines_and_warnings_without_traceback() -> None:
    console, out = plain_console()
    display = RunDisplay(console, verbose=False, formatter=FORMAT)
    display.progress = RunProgress(step_began=0.0, last_seen=0.0)
    try:
        raise ValueError("the detail")
    except ValueError:
        failed = record("collect", "Could not delete request file f-1", 3.0, logging.WARNING)
        failed.exc_info = sys.exc_info()
    for r in [*records()[:6], failed]:
        display.handle(r)
    assert out.getvalue().splitlines() == [
        *STEP_LINES[:2],
        "WARNING prefect.task_runs - Could not delete request file f-1",
    ]


def test_verbose_prints_every_record_as_prefect_does() -> None:
    console, out = plain_console()
    display = RunDisplay(console, verbose=True, formatter=FORMAT)
    for r in records():
        display.handle(r)
    text = out.getvalue()
    assert text.count("INFO prefect.task_runs - Finished in state Completed()") == 18
    assert "INFO prefect.flow_runs - Seconds per step: lease 0.8, plan 0.2" in text
    assert STEP_LINES[3].split(" (")[0] in text  # the step lines too


@pytest.fixture
def prefect_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logging as Prefect sets it up in a process that runs flows (its loggers at INFO), with
    its console handler on the root logger writing to a buffer (the only handler there)."""
    ensure_logging_setup()
    buffer = io.StringIO()
    handler = PrefectConsoleHandler(stream=buffer)
    handler.setFormatter(FORMAT)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    yield buffer
    assert [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)] == [handler]


def emit(task: str | None, message: str, level: int = logging.INFO) -> None:
    """Through Prefect's run loggers, as the engine and the steps log (kept from the Prefect
    API: there is no flow run, and no server to send to)."""
    extra = {
        "flow_run_id": FLOW_RUN_ID,
        "flow_run_name": "embeddings · out · 2026-11-22",
        "send_to_api": False,
    }
    if task:
        extra |= {"task_name": task, "task_run_name": f"{task}-6c9"}
    name = "prefect.task_runs" if task else "prefect.flow_runs"
    logging.getLogger(name).log(level, message, extra=extra)


def test_prefect_console_is_quiet_during_the_block_and_back_after(
    prefect_console: io.StringIO,
) -> None:
    console, out = plain_console()
    with showing_progress(console) as progress:
        for task, message in RUN:
            emit(task, message)
        emit("write", "Could not write", logging.ERROR)
    assert prefect_console.getvalue() == ""
    assert "Finished in state" not in out.getvalue()
    assert "publish: 246 rows -> out/partition=2026-11-22/part-0.parquet" in out.getvalue()
    assert "ERROR prefect.task_runs - Could not write" in out.getvalue()  # Prefect's format
    assert progress.flow_run_id == FLOW_RUN_ID
    emit("write", "Finished in state Completed()")
    assert "Finished in state Completed()" in prefect_console.getvalue()


def test_verbose_shows_prefect_lines_on_the_display_console(prefect_console: io.StringIO) -> None:
    console, out = plain_console()
    with showing_progress(console, verbose=True):
        emit("write", "Finished in state Completed()")
    assert prefect_console.getvalue() == ""
    assert out.getvalue() == "INFO prefect.task_runs - Finished in state Completed()\n"


def test_the_terminal_panel_shows_the_step_and_the_counts() -> None:
    progress = RunProgress(step_began=0.0, last_seen=0.0)
    for r in records()[:21]:  # up to the first job's success
        progress.feed(r)
    console = Console(record=True, width=100, force_terminal=True, color_system=None)
    console.print(panel(View.of(progress), now=30.0))
    text = console.export_text()
    assert "enrich: flow run 'embeddings · out · 2026-11-22'" in text
    assert "wait: 1/3 jobs done (SUCCESS 1), 1/3 requests answered" in text
    assert "14 s" in text  # since the last line of the step before
    for counts in ("1/3 ended", "1/3 answered", "0/3 written"):
        assert counts in text


def test_a_terminal_gets_the_live_panel_and_the_step_lines(prefect_console: io.StringIO) -> None:
    console, out = terminal_console()
    with showing_progress(console):
        for task, message in RUN[:20]:
            emit(task, message)
    text = out.getvalue()
    assert "\x1b[" in text  # drawn and redrawn in place
    assert "submit: 3 batch job(s) for 3 request(s) (2 created, 1 reattached)" in text
    assert "0/3 ended" in text  # the panel
    assert "Finished in state" not in text
    assert prefect_console.getvalue() == ""


SUMMARY = """# embeddings · out · 2026-11-22

| | |
|---|---|
| output | `out` (partition `2026-11-22`) |
| enriched | 246 rows, published |

## Jobs

| shard | job | status |
|---|---|---|
| 0 | `job-a` | SUCCESS |
"""


def test_the_summary_is_markdown_as_text_and_tables_in_a_terminal() -> None:
    console, out = plain_console()
    print_markdown(console, SUMMARY)
    assert out.getvalue() == SUMMARY

    console, out = terminal_console()
    print_markdown(console, SUMMARY)
    drawn = [line.rstrip() for line in out.getvalue().splitlines()]
    assert drawn[0] == "embeddings · out · 2026-11-22"
    assert " output     out (partition 2026-11-22)" in drawn
    assert " enriched   246 rows, published" in drawn
    assert "|" not in out.getvalue() and "`" not in out.getvalue()
    assert "Jobs" in drawn
    assert any(line.split() == ["shard", "job", "status"] for line in drawn)
    assert any(line.split() == ["0", "job-a", "SUCCESS"] for line in drawn)
