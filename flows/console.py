"""What a run started from here (``enrich run``, ``make demo``) shows: progress, not Prefect's
per-task lines, then the run's summary table.

While a run is shown, ``RunDisplay`` takes the place of Prefect's console handler on the root
logger. It reads the records of the run's loggers (they reach the Prefect API and UI through
their own handler, untouched) and keeps a ``RunProgress``: the current step, the batch jobs, the
requests answered, the shards written. It prints one line per finished step; in a terminal, a
live panel under those lines shows the step under way and the counts. Warnings and errors are
always printed; every record, as Prefect's console would print it, only with ``verbose``.

The progress comes from the steps' own log lines, so it moves when a step logs: Prefect logs no
line when a task starts, and the panel names the step of the latest line.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from tasks.edges.mistral import TERMINAL_STATUSES

# Which step of the pipeline a task belongs to (the flow's StepClock names); a task not listed
# is a step of its own name.
STEP_OF_TASK = {
    "check-locations": "start",
    "check-credentials": "start",
    "repair": "start",
    "plan": "plan",
    "build-requests": "build",
    "record-unsent": "build",
    "estimate": "build",
    "fetch-cached": "cache-fetch",
    "reserve-quota": "submit",
    "submit": "submit",
    "wait": "wait",
    "collect": "collect",
    "build-retry-requests": "retry",
    "write": "write",
    "validate": "validate",
    "summary": "validate",
    "quarantine": "validate",
    "stage-cache": "publish",
    "publish": "publish",
    "update-cache": "publish",
    "clean-staging": "publish",
    "insight": "publish",
}

# The log lines progress is read from: Prefect's own, and the steps' (tasks/*.py).
BEGAN = re.compile(r"Beginning flow run '(?P<name>.+)' for flow")
VIEW = re.compile(r"View at (?P<url>\S+)")
FINISHED = re.compile(r"Finished in state (?P<state>[^(]+)")
PLANNED = re.compile(
    r"Planned (?P<rows>\d+) rows in (?P<shards>\d+) shard\(s\); (?P<rejected>\d+) rejected "
    r"before sending.*?; (?P<cached>\d+) rows \(\d+ texts\) found in the cache"
)
ESTIMATED = re.compile(
    r"Plan: (?P<texts>\d+) texts in (?P<requests>\d+) requests, \d+ prompt tokens, "
    r"estimated (?P<cost>[^;]+);"
)
SUBMITTED = re.compile(
    r"(?P<verb>Created|Reattached to) batch job (?P<job>\S+) for shard \d+ attempt \d+ "
    r"\((?P<requests>\d+) requests\)"
)
JOB_STATUS = re.compile(
    r"Batch job (?P<job>\S+) \(shard \d+, attempt \d+\): (?P<status>\w+), "
    r"(?P<answered>\d+)/(?P<total>\d+) requests"
)
COLLECTED = re.compile(
    r"Collected job \S+ \(\w+\): (?P<ok>\d+) texts ok, (?P<transient>\d+) transient and "
    r"(?P<terminal>\d+) terminal failures"
)
VALIDATED = re.compile(r"Validation passed: (?P<expectations>\d+) expectations")
PUBLISHED = re.compile(r"Published (?P<rows>\d+) rows to (?P<uri>\S+)")


@dataclass
class Job:
    """A batch job as the run's log lines last described it."""

    requests: int
    status: str = "SUBMITTED"
    answered: int = 0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class RunProgress:
    """The run so far, read from its log records by ``feed``, which returns the lines to print
    (a step's line when the next step begins, the flow run's name and address)."""

    flow_run: str = ""
    flow_run_id: str | None = None
    step: str = "start"
    step_began: float = field(default_factory=time.time)  # the previous step's last record
    last_seen: float = field(default_factory=time.time)
    final_state: str | None = None
    rows: int = 0
    shards: int = 0
    jobs: dict[str, Job] = field(default_factory=dict)
    wave: list[str] = field(default_factory=list)  # the jobs of the latest submit step
    shards_written: int = 0
    published: tuple[int, str] | None = None
    note: str = ""  # the current step's line, when one log line says it all
    counts: Counter[str] = field(default_factory=Counter)  # the current step's

    def feed(self, record: logging.LogRecord) -> list[str]:
        self.flow_run_id = self.flow_run_id or getattr(record, "flow_run_id", None)
        lines: list[str] = []
        task = getattr(record, "task_name", None)
        step = STEP_OF_TASK.get(task, task) if isinstance(task, str) else None
        if step is not None and step != self.step:
            lines += self._close()
            lines += self._open(step)
        message = record.getMessage()
        if step is None:
            if record.name == "prefect.flow_runs":
                lines += self._read_flow_line(message)
        elif found := FINISHED.match(message):
            self._finished(task, found)
        else:
            self._read_step_line(message)
        if step is not None:  # a step ends with its own last record, not another logger's
            self.last_seen = record.created
        return lines

    def line(self) -> str:
        """The current step's line: what it did so far ('' when there is nothing to say)."""
        describe = STEP_LINES.get(self.step)
        said = describe(self) if describe else self.note
        return f"{self.step}: {said}" if said else ""

    def _open(self, step: str) -> list[str]:
        self.step, self.step_began, self.note, self.counts = step, self.last_seen, "", Counter()
        if step == "submit":
            self.wave = []
        if step == "wait" and self.wave:
            requests = sum(self.jobs[job].requests for job in self.wave)
            return [f"wait: {len(self.wave)} batch job(s), {requests:,} request(s)"]
        return []

    def _close(self) -> list[str]:
        """The step's line, with its seconds: from the previous step's last record to its own."""
        said = self.line()
        return [f"{said} ({self.last_seen - self.step_began:.1f} s)"] if said else []

    def _read_flow_line(self, message: str) -> list[str]:
        if found := BEGAN.match(message):
            self.flow_run = found["name"]
            return [f"run: flow run {self.flow_run!r}"]
        if found := VIEW.match(message):
            return [f"run: {found['url']}"]
        if found := FINISHED.match(message):
            lines = self._close()
            self.step, self.final_state = "end", found["state"]
            self.note = f"the flow run is {self.final_state}"
            return lines
        return []

    def _finished(self, task: str | None, found: re.Match[str]) -> None:
        if found["state"] != "Completed":
            return
        self.counts["finished"] += 1
        if task == "write":
            self.shards_written += 1

    def _read_step_line(self, message: str) -> None:
        for pattern, read in LINE_READERS:
            if found := pattern.match(message):
                read(self, found)
                return

    def _planned(self, found: re.Match[str]) -> None:
        self.rows, self.shards = int(found["rows"]), int(found["shards"])
        self.note = (
            f"{self.rows:,} rows in {self.shards:,} shard(s); {int(found['rejected']):,} "
            f"rejected before sending, {int(found['cached']):,} from the cache"
        )

    def _estimated(self, found: re.Match[str]) -> None:
        self.note = (
            f"{int(found['texts']):,} texts to send in {int(found['requests']):,} request(s), "
            f"estimated {found['cost']}"
        )

    def _submitted(self, found: re.Match[str]) -> None:
        job, requests = found["job"], int(found["requests"])
        self.jobs[job] = Job(requests)
        self.wave.append(job)
        self.counts["created" if found["verb"] == "Created" else "reattached"] += 1
        self.counts["requests"] += requests

    def _job_status(self, found: re.Match[str]) -> None:
        job = self.jobs.setdefault(found["job"], Job(int(found["total"])))
        job.status, job.answered = found["status"], int(found["answered"])
        job.requests = max(job.requests, int(found["total"]))

    def _collected(self, found: re.Match[str]) -> None:
        self.counts.update({key: int(found[key]) for key in ("ok", "transient", "terminal")})

    def _validated(self, found: re.Match[str]) -> None:
        self.note = f"passed ({found['expectations']} expectations)"

    def _published(self, found: re.Match[str]) -> None:
        self.published = (int(found["rows"]), found["uri"])
        self.note = f"{self.published[0]:,} rows -> {self.published[1]}"

    def _submit_line(self) -> str:
        jobs = self.counts["created"] + self.counts["reattached"]
        if not jobs:
            return ""
        return (
            f"{jobs} batch job(s) for {self.counts['requests']:,} request(s) "
            f"({self.counts['created']} created, {self.counts['reattached']} reattached)"
        )

    def _wait_line(self) -> str:
        wave = [self.jobs[job] for job in self.wave]
        statuses = Counter(job.status for job in wave if job.done)
        ended = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
        answered, requests = sum(j.answered for j in wave), sum(j.requests for j in wave)
        return (
            f"{sum(statuses.values())}/{len(wave)} jobs done"
            + (f" ({ended})" if ended else "")
            + f", {answered:,}/{requests:,} requests answered"
        )

    def _collect_line(self) -> str:
        if not self.counts["finished"]:
            return ""
        return (
            f"{self.counts['ok']:,} texts ok, {self.counts['transient']:,} transient and "
            f"{self.counts['terminal']:,} terminal failure(s)"
        )

    def _write_line(self) -> str:
        return f"{self.shards_written}/{self.shards} shard(s) written"


LINE_READERS: tuple[tuple[re.Pattern[str], Callable[[RunProgress, re.Match[str]], None]], ...] = (
    (PLANNED, RunProgress._planned),
    (ESTIMATED, RunProgress._estimated),
    (SUBMITTED, RunProgress._submitted),
    (JOB_STATUS, RunProgress._job_status),
    (COLLECTED, RunProgress._collected),
    (VALIDATED, RunProgress._validated),
    (PUBLISHED, RunProgress._published),
)
STEP_LINES: dict[str, Callable[[RunProgress], str]] = {
    "submit": RunProgress._submit_line,
    "wait": RunProgress._wait_line,
    "collect": RunProgress._collect_line,
    "write": RunProgress._write_line,
}


@dataclass(frozen=True)
class View:
    """What the live panel shows, taken from the progress between two records (the panel is
    drawn on Rich's refresh thread while the run's threads log)."""

    title: str
    doing: str
    since: float  # when the step under way began
    counts: tuple[tuple[str, int, int, str], ...]  # (label, done, total, unit)

    @classmethod
    def of(cls, progress: RunProgress) -> View:
        jobs = list(progress.jobs.values())
        if progress.flow_run:
            title, doing = f"flow run {progress.flow_run!r}", f"{progress.step} ..."
        else:
            title, doing = "starting the flow run", "start: creating the flow run"
        return cls(
            title=title,
            doing=progress.line() or doing,
            since=progress.step_began,
            counts=(
                ("jobs", sum(j.done for j in jobs), len(jobs), "ended"),
                (
                    "requests",
                    sum(j.answered for j in jobs),
                    sum(j.requests for j in jobs),
                    "answered",
                ),
                ("shards", progress.shards_written, progress.shards, "written"),
            ),
        )


def panel(view: View, now: float | None = None) -> RenderableType:
    """The live panel: the step under way (with its seconds so far), then the jobs ended, the
    requests answered and the shards written, each as a bar once its total is known."""
    now = time.time() if now is None else now
    head = Table.grid(padding=(0, 1))
    head.add_row(
        Spinner("dots", style="cyan"),
        Text(view.doing),
        Text(f"{now - view.since:,.0f} s", style="dim"),
    )
    bars = Table.grid(padding=(0, 1))
    for label, done, total, unit in view.counts:
        if total:
            bar = ProgressBar(total=total, completed=done, width=30)
            bars.add_row(Text(f"  {label:<9}"), bar, Text(f"{done:,}/{total:,} {unit}"))
    return Group(Text(f"enrich: {view.title}", style="bold"), head, bars)


# The format of the records shown when logging has no Prefect console handler to borrow one from.
FALLBACK_FORMAT = logging.Formatter(
    "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s", datefmt="%H:%M:%S"
)


class RunDisplay(logging.Handler):
    """The run's records, as progress: step lines always, warnings and errors always (without
    their tracebacks unless ``verbose``), every other record only with ``verbose``; records are
    printed as ``formatter`` (Prefect's console format) has them."""

    def __init__(self, console: Console, *, verbose: bool, formatter: logging.Formatter) -> None:
        super().__init__()
        self.console = console
        self.verbose = verbose
        self.formatter = formatter
        self.progress = RunProgress()
        self.view = View.of(self.progress)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lines = self.progress.feed(record)
            self.view = View.of(self.progress)
            for line in lines:
                self._print(line, "green")
            if self.verbose or record.levelno >= logging.WARNING:
                shown = record if self.verbose else _without_traceback(record)
                self._print(self.format(shown), _style(record.levelno))
        except Exception:  # a display must never fail the run: logging's own error report
            self.handleError(record)

    def _print(self, line: str, style: str) -> None:
        if self.console.is_terminal:
            self.console.print(Text(line, style=style), soft_wrap=True)
        else:
            self.console.print(Text(line), soft_wrap=True)


def _without_traceback(record: logging.LogRecord) -> logging.LogRecord:
    brief = copy.copy(record)
    brief.exc_info = brief.exc_text = brief.stack_info = None
    return brief


def _style(level: int) -> str:
    if level >= logging.ERROR:
        return "red"
    return "yellow" if level >= logging.WARNING else "dim"


@contextmanager
def showing_progress(console: Console, *, verbose: bool = False) -> Iterator[RunProgress]:
    """Show the progress of the flow run started in the block on ``console``: a live panel when
    it is a terminal, plain lines otherwise. Prefect's console handler steps aside for the
    block (its format is kept for the records shown) and is back after it."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # now: setting it up inside the block would drop the display
    root = logging.getLogger()
    prefect_consoles = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    formatter = next(
        (h.formatter for h in prefect_consoles if h.formatter is not None), FALLBACK_FORMAT
    )
    display = RunDisplay(console, verbose=verbose, formatter=formatter)
    for handler in prefect_consoles:
        root.removeHandler(handler)
    root.addHandler(display)
    try:
        with ExitStack() as stack:
            if console.is_terminal and not console.is_dumb_terminal:
                live = Live(
                    console=console,
                    get_renderable=lambda: panel(display.view),
                    refresh_per_second=4,
                    transient=True,  # the step lines and the summary stay; the panel goes
                )
                stack.enter_context(live)
            yield display.progress
    finally:
        root.removeHandler(display)
        for handler in prefect_consoles:
            root.addHandler(handler)


def summary_markdown(key: str, flow_run_id: str) -> str | None:
    """The summary table of the flow run, as the Prefect UI shows it: the markdown artifact
    ``key`` it wrote (``tasks.core.keys.artifact_key``), or None when the API has none."""
    from uuid import UUID

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    try:
        run = UUID(flow_run_id)
    except ValueError:  # a run outside Prefect's bookkeeping: no artifact to read
        return None
    wanted = ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]),
        flow_run_id=ArtifactFilterFlowRunId(any_=[run]),
    )
    try:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=wanted, sort=ArtifactSort.CREATED_DESC, limit=1
            )
    except httpx.HTTPError:
        return None
    data = found[0].data if found else None
    return data if isinstance(data, str) else None


def print_markdown(console: Console, markdown: str) -> None:
    """A summary's markdown: as it is where it is read as text (CI, cron, a file), with its
    tables drawn in a terminal."""
    if not console.is_terminal:
        console.print(Text(markdown.rstrip("\n")), soft_wrap=True)
        return
    for part in _drawn(markdown):
        console.print(part)


def _drawn(markdown: str) -> Iterator[RenderableType]:
    """Headings in bold, tables as tables (a header of empty cells left out), code as text."""
    rows: list[list[str]] = []
    first = True
    for line in [*markdown.replace("`", "").splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if rows:
            yield _table(rows)
            rows = []
        if line.startswith("#"):
            if not first:
                yield Text("")
            yield Text(line.lstrip("#").strip(), style="bold")
        elif line.strip():
            yield Text(line)
        first = first and not line.strip()


def _table(rows: list[list[str]]) -> Table:
    header, body = rows[0], rows[2:]  # rows[1] is the |---| line
    table = Table(box=box.SIMPLE_HEAD, show_header=any(header), show_edge=False)
    for name in header:
        table.add_column(name, overflow="fold")
    for row in body:
        table.add_row(*row)
    return table
