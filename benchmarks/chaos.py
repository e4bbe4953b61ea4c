"""Chaos: `enrich run` SIGKILLed at every failpoint in a hostile workspace; what survives?

Run: ``.venv/bin/python benchmarks/chaos.py --kills 9 --seed 1`` (``make bench`` runs it too).

One emulator and one real Prefect server (``prefect server start``, temporary home, SQLite) are
started on free loopback ports; every ``enrich run`` is a child process talking to both. The
emulator's workspace is hostile: listings ignore filters, pages are capped at 10 jobs, a new job
is listed a second late, three RUNNING jobs of another team carry an ``enrich_key`` of their own,
and the first job creation is accepted but answered 504.

1. Kills: a schedule drawn from ``--seed`` over ``tasks.failpoints.POINTS`` (each point once per
   round, rounds shuffled; the n-th hit, 1 or 2, drawn for points reached once per shard or poll).
   Before each kill but the first the input grows by new rows, so the run has texts to send and
   the batch points are reachable (an unchanged input is answered from the content cache). The
   run is started with ``ENRICH_FAILPOINT=<point>:<n>``; it dies by SIGKILL or, when the point is
   not reached, finishes. A killed run is rerun without failpoint and must exit 0.
2. A clean run (exit 0): the last kill's rerun, or a run of its own when there were no kills;
   then a second clean run of the unchanged input, which must create no job.
3. Concurrency: two runs started at once on a new input and output (``--lease-wait-seconds``):
   both must exit 0, one waiting for the other's lease.

Checks, after every run that exited 0 (whole-object checks after kills too); each object, row or
job is counted once, with the run after which it was first seen:

* rows lost / duplicated: every input id exactly once across the published table and the
  rejected rows its manifest names;
* duplicate paid jobs: this project's jobs (``GET /emulator/jobs``) sharing request content;
* foreign jobs touched: the other team's jobs no longer RUNNING;
* partial objects: a Parquet file without a readable footer, a JSON file that does not parse, no
  ``_SUCCESS``, a manifest whose run is not the data file's, a rejected-rows file missing or not
  alone in its folder;
* leftover temporary files (``*.enrich-tmp``) and uploaded request files no job uses.

Exit code 0 when every check holds, 1 otherwise. Child logs are under ``<workdir>/logs``; a
temporary workdir is removed unless ``--keep`` (a given ``--workdir`` is left in place).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import polars as pl
import pyarrow.parquet as pq
import yaml

from emulator.server import ChildService, EmulatorProcess
from tasks.failpoints import POINTS

PROJECT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
ENRICH = str(Path(sys.executable).with_name("enrich"))
PARTITION = "2026-11-22"
# Reached once per shard or per poll: a second hit exists. The others are reached once a run.
REPEATED = frozenset({"upload", "create", "poll", "download", "write"})
LISTING_LAG_SECONDS = 1.0
# How long a run waits for a lagging listing after an ambiguous create: above the lag.
CLIENT_LISTING_LAG_SECONDS = 3.0
FOREIGN_JOBS = 3
TEMPORARY_SUFFIX = ".enrich-tmp"
PUBLISH_KEY = b"enrich.publish"
WORDS = ("parcel", "late", "great", "support", "refund", "broken", "fast", "order", "app", "kind")


@dataclass(frozen=True)
class Kill:
    point: str
    nth: int

    @property
    def spec(self) -> str:
        return f"{self.point}:{self.nth}"


def schedule(kills: int, seed: int) -> list[Kill]:
    """``kills`` failpoints: every point once per round, in a shuffled order per round."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < kills:
        round_ = list(POINTS)
        rng.shuffle(round_)
        order += round_
    return [Kill(p, rng.choice((1, 2)) if p in REPEATED else 1) for p in order[:kills]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


class Dataset:
    """An input Parquet file of ``id`` (unique) and ``text``: some texts repeated, a few empty.
    ``grow`` appends new rows (new texts, some repeating older ones) and rewrites the file."""

    def __init__(self, path: Path, salt: str, rows: int, rng: random.Random) -> None:
        self.path = path
        self.salt = salt
        self.rng = rng
        self.ids: list[int] = []
        self.texts: list[str] = []
        self._add(rows, empties=max(1, rows // 200))

    def _add(self, rows: int, empties: int) -> None:
        start = len(self.ids)
        fresh: list[str] = []
        for i in range(start, start + rows):
            words = [WORDS[self.rng.randrange(len(WORDS))] for _ in range(3)]
            text = f"{self.salt} comment {i}: the {words[0]} was {words[1]} and {words[2]}"
            if fresh and self.rng.random() < 0.1:  # a repeated text: sent once
                text = self.rng.choice(fresh)
            elif self.texts and self.rng.random() < 0.05:  # an older text: from the cache
                text = self.rng.choice([t for t in self.texts if t.strip()])
            fresh.append(text)
        for position in self.rng.sample(range(rows), empties):
            fresh[position] = self.rng.choice(("", "   "))
        self.ids += list(range(start, start + rows))
        self.texts += fresh
        self._write()

    def grow(self, rows: int) -> None:
        self._add(rows, empties=0)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(f".{self.path.name}.writing")
        pl.DataFrame({"id": self.ids, "text": self.texts}).write_parquet(scratch)
        scratch.replace(self.path)


@dataclass
class Outcome:
    label: str
    returncode: int | None  # None: still running at the timeout (then SIGKILLed)
    seconds: float
    log: Path

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        if self.returncode is None:
            return "timeout"
        if self.killed:
            return "SIGKILL"
        return f"exit {self.returncode}"

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(f"      | {line}" for line in text[-lines:])


@dataclass
class Child:
    label: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float

    def wait(self, timeout: float) -> Outcome:
        return wait_all([self], timeout)[0]

    def outcome(self, code: int | None) -> Outcome:
        return Outcome(self.label, code, time.monotonic() - self.started, self.log)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def wait_all(children: list[Child], timeout: float) -> list[Outcome]:
    """Each child's outcome, timed when it ended; one still running at ``timeout`` is killed."""
    deadline = time.monotonic() + timeout
    ended: dict[int, Outcome] = {}
    while len(ended) < len(children):
        for i, child in enumerate(children):
            if i not in ended and (code := child.process.poll()) is not None:
                ended[i] = child.outcome(code)
        if time.monotonic() > deadline:
            for i, child in enumerate(children):
                if i not in ended:
                    child.stop()
                    ended[i] = child.outcome(None)
        time.sleep(0.05)
    return [ended[i] for i in range(len(children))]


@dataclass
class Services:
    root: Path
    emulator: EmulatorProcess
    api_key: str
    env: dict[str, str]
    http: httpx.Client
    children: list[Child] = field(default_factory=list)

    def start_run(
        self,
        label: str,
        dataset: Dataset,
        output: Path,
        args: argparse.Namespace,
        failpoint: str | None = None,
        lease_wait: float | None = None,
    ) -> Child:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{len(self.children) + 1:03d}-{label.replace(' ', '-')}.log"
        command = [ENRICH, "run"]
        command += ["--input", str(dataset.path), "--id-column", "id", "--text-column", "text"]
        command += ["--output", str(output), "--partition", PARTITION]
        command += ["--shard-size", str(args.shard_size), "--poll-interval", "0.1"]
        if lease_wait is not None:
            command += ["--lease-wait-seconds", str(lease_wait)]
        env = dict(self.env)
        if failpoint is not None:
            env["ENRICH_FAILPOINT"] = failpoint
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                cwd=PROJECT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(label, process, log, time.monotonic())
        self.children.append(child)
        return child

    def run(
        self,
        label: str,
        dataset: Dataset,
        output: Path,
        args: argparse.Namespace,
        failpoint: str | None = None,
    ) -> Outcome:
        return self.start_run(label, dataset, output, args, failpoint).wait(args.run_timeout)

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.http.get("/emulator/jobs").json()["jobs"]
        return jobs

    def files(self) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = self.http.get("/emulator/files").json()["files"]
        return files

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(
            f"/v1/batch/jobs/{job_id}", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        return job


def fault_plan() -> dict[str, Any]:
    return {
        "seed": 11,
        "http": [
            {"route": "POST /v1/batch/jobs", "status": 504, "after_handling": True, "limit": 1}
        ],
        "listing": {
            "ignore_filters": True,
            "page_size_cap": 10,
            "lag_seconds": LISTING_LAG_SECONDS,
        },
        "workspace": {
            "foreign_jobs": [
                {
                    "count": FOREIGN_JOBS,
                    "status": "RUNNING",
                    "endpoint": "/v1/embeddings",
                    "model": "mistral-embed",
                    "metadata": {"enrich_key": "0123456789abcdef0123456789abcdef", "team": "ads"},
                    "requests": 50,
                }
            ]
        },
    }


@contextmanager
def services(root: Path) -> Iterator[Services]:
    """The emulator and a Prefect server, stopped on the way out (with any run still going)."""
    home = root / "prefect-home"
    home.mkdir(parents=True)
    plan = root / "faults.yaml"
    plan.write_text(yaml.safe_dump(fault_plan()))
    api_key = f"sk-chaos-{secrets.token_hex(8)}"
    emulator = EmulatorProcess(
        root / "emulator",
        api_key=api_key,
        faults=plan,
        # Jobs stay QUEUED a second: a poll sweep finds them unfinished, so `poll:2` is reached.
        extra_args=("--queue-seconds", "1", "--workers", "1"),
    )
    server = ChildService("prefect server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MISTRAL_"))}
    base.pop("ENRICH_FAILPOINT", None)
    prefect_env = base | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    http: httpx.Client | None = None
    started: Services | None = None
    try:
        emulator.start()
        server.launch(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            lambda line: "API reference" in line or "dashboard" in line,
            env=prefect_env
            | {"PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"},
            timeout=120,
        )
        with httpx.Client(timeout=10) as probe:

            def healthy() -> bool:
                try:
                    return probe.get(f"{api}/health").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until("the Prefect API", healthy, 90)
        http = httpx.Client(base_url=emulator.url, timeout=30)
        env = prefect_env | {
            "MISTRAL_SERVER_URL": emulator.url,
            "MISTRAL_API_KEY": api_key,
            "MISTRAL_LISTING_LAG_SECONDS": str(CLIENT_LISTING_LAG_SECONDS),
        }
        started = Services(root, emulator, api_key, env, http)
        yield started
    finally:
        for child in started.children if started else []:
            child.stop()
        if http is not None:
            http.close()
        server.stop(timeout=30)
        emulator.stop()


CHECKS = (
    ("rows_lost", "rows lost"),
    ("rows_duplicated", "rows duplicated"),
    ("duplicate_paid_jobs", "duplicate paid jobs"),
    ("foreign_jobs_touched", "foreign jobs touched"),
    ("partial_objects", "partial objects"),
    ("temp_files", "leftover temp files"),
    ("unused_uploads", "uploads no job uses"),
    ("failed_runs", "runs that failed"),
)


@dataclass
class Findings:
    """Violations by check, each object / row / job once, with the run after which it was first
    seen."""

    seen: dict[str, dict[str, tuple[str, str]]] = field(
        default_factory=lambda: {name: {} for name, _ in CHECKS}
    )
    checkpoint: str = "start"

    def add(self, check: str, key: str, detail: str) -> None:
        self.seen[check].setdefault(key, (self.checkpoint, detail))

    def count(self, check: str) -> int:
        return len(self.seen[check])


@dataclass
class Target:
    """An output table and the input it must hold."""

    output: Path
    dataset: Dataset

    @property
    def work(self) -> Path:
        return self.output.parent / "_enrich" / self.output.name

    @property
    def partition(self) -> Path:
        return self.output / f"partition={PARTITION}"


def check_objects(tree: Path, findings: Findings, *, temp_files: bool) -> None:
    """Every Parquet file has a readable footer, every JSON file parses; temporary files left."""
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        where = str(path.relative_to(tree))
        if path.name.endswith(TEMPORARY_SUFFIX):
            if temp_files:
                findings.add("temp_files", where, f"{path.stat().st_size} bytes")
        elif path.suffix == ".parquet":
            try:
                pq.read_metadata(path)
            except Exception as exc:  # any reader error is the finding
                findings.add("partial_objects", where, f"unreadable Parquet footer: {exc}")
        elif path.suffix == ".json":
            try:
                json.loads(path.read_bytes())
            except ValueError as exc:
                findings.add("partial_objects", where, f"JSON does not parse: {exc}")


def check_target(target: Target, tree: Path, findings: Findings) -> None:
    """The partition describes one run, and holds every input id exactly once."""
    data = target.partition / "part-0.parquet"
    manifest_path = target.work / "published" / f"partition={PARTITION}" / "_manifest.json"
    rejected_folder = target.work / "rejected" / f"partition={PARTITION}"

    def partial(path: Path, detail: str) -> None:
        findings.add("partial_objects", f"{path.relative_to(tree)}: {detail}", detail)

    if not (target.partition / "_SUCCESS").is_file():
        partial(target.partition / "_SUCCESS", "missing")
    manifest: dict[str, Any] | None = None
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError) as exc:
        partial(manifest_path, f"no readable manifest ({exc})")
    footer: dict[str, Any] | None = None
    try:
        raw = (pq.read_metadata(data).metadata or {}).get(PUBLISH_KEY)
        footer = json.loads(raw) if raw else None
    except Exception as exc:  # any reader error is the finding
        partial(data, f"unreadable data file ({exc})")
    if manifest is None:
        return
    if footer is None or footer.get("run_id") != manifest.get("run_id"):
        partial(
            manifest_path,
            f"manifest run {manifest.get('run_id')} != data footer run "
            f"{footer.get('run_id') if footer else None}",
        )
    named = manifest["files"]["rejected"]
    others = sorted(
        p.name
        for p in (rejected_folder.iterdir() if rejected_folder.is_dir() else [])
        if not p.name.endswith(TEMPORARY_SUFFIX)
        and (named is None or p.resolve() != Path(named).resolve())
    )
    if named is not None and not Path(named).is_file():
        partial(Path(named), "rejected-rows file named by the manifest is missing")
    if others:
        partial(rejected_folder, f"files beside the manifest's rejected rows: {others}")

    check_ids(
        target, {"table": data, "rejected": Path(named) if named else None}, partial, findings
    )


def check_ids(
    target: Target,
    files: dict[str, Path | None],
    partial: Callable[[Path, str], None],
    findings: Findings,
) -> None:
    """Every input id exactly once across the table and the rejected rows."""
    name = target.output.name
    found: list[int] = []
    sources: dict[int, list[str]] = {}
    for label, path in files.items():
        if path is None or not path.is_file():
            continue
        try:
            ids = pl.read_parquet(path, columns=["id"])["id"].to_list()
        except Exception as exc:  # any reader error is the finding
            partial(path, f"cannot read ids ({exc})")
            continue
        found += ids
        for i in ids:
            sources.setdefault(i, []).append(label)
    counts = Counter(found)
    expected = set(target.dataset.ids)
    for missing in sorted(expected - counts.keys()):
        findings.add(
            "rows_lost", f"{name}:{missing}", f"id {missing} in neither table nor rejected"
        )
    for row, n in sorted(counts.items()):
        if n > 1 or row not in expected:
            findings.add(
                "rows_duplicated",
                f"{name}:{row}",
                f"id {row} found {n} time(s) ({', '.join(sources[row])})"
                + ("" if row in expected else "; not in the input"),
            )


def check_emulator(stack: Services, foreign: dict[str, str], findings: Findings) -> None:
    jobs = stack.jobs()
    ours = [j for j in jobs if j["content_sha256"] is not None]
    by_content: dict[str, list[dict[str, Any]]] = {}
    for job in ours:
        by_content.setdefault(job["content_sha256"], []).append(job)
    for digest, same in by_content.items():
        for extra in same[1:]:
            meta = extra["metadata"] or {}
            findings.add(
                "duplicate_paid_jobs",
                extra["id"],
                f"job {extra['id']} repeats job {same[0]['id']} (content {digest[:12]}, run "
                f"{meta.get('enrich_run')}, shard {meta.get('enrich_shard')}, attempt "
                f"{meta.get('enrich_attempt')}, flow run {meta.get('enrich_flow_run')})",
            )
    now = {j["id"]: j["status"] for j in jobs}
    for job_id, status in foreign.items():
        if now.get(job_id) != status:
            findings.add(
                "foreign_jobs_touched", job_id, f"{status} -> {now.get(job_id, 'deleted')}"
            )
    outputs: set[str] = set()
    for job in ours:
        if job["status"] in {"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"}:
            detail = stack.job(job["id"])
            outputs |= {f for f in (detail.get("output_file"), detail.get("error_file")) if f}
    for file in stack.files():
        if not file["used_by"] and file["id"] not in outputs:
            findings.add(
                "unused_uploads", file["id"], f"{file['filename']} ({file['bytes']} bytes)"
            )


@dataclass
class Step:
    kill: Kill
    rows: int
    first: Outcome
    rerun: Outcome | None


def check_all(
    stack: Services, targets: list[Target], foreign: dict[str, str], findings: Findings
) -> None:
    tree = stack.root / "data"
    check_objects(tree, findings, temp_files=True)
    for target in targets:
        check_target(target, tree, findings)
    check_emulator(stack, foreign, findings)


def failed(findings: Findings, outcome: Outcome) -> None:
    findings.add("failed_runs", outcome.label, f"{outcome.describe()}, log {outcome.log}")


def chaos(stack: Services, args: argparse.Namespace, findings: Findings) -> dict[str, Any]:
    rng = random.Random(args.seed)
    data = stack.root / "data"
    main_target = Target(
        data / "comments", Dataset(data / "input.parquet", "chaos", args.rows, rng)
    )
    foreign = {j["id"]: j["status"] for j in stack.jobs() if j["content_sha256"] is None}
    if len(foreign) != FOREIGN_JOBS:
        raise RuntimeError(f"expected {FOREIGN_JOBS} foreign jobs in the emulator, got {foreign}")
    growth = max(10, args.rows // 10)
    steps: list[Step] = []
    for n, kill in enumerate(schedule(args.kills, args.seed), start=1):
        if n > 1:
            main_target.dataset.grow(growth)
        findings.checkpoint = f"kill {n} ({kill.spec})"
        first = stack.run(
            f"kill-{n}-{kill.spec}",
            main_target.dataset,
            main_target.output,
            args,
            failpoint=kill.spec,
        )
        rerun = None
        if first.killed:
            check_objects(data, findings, temp_files=False)  # whole or absent, even mid-run
            findings.checkpoint = f"rerun {n} (after {kill.spec})"
            rerun = stack.run(f"rerun-{n}", main_target.dataset, main_target.output, args)
            if not rerun.ok:
                failed(findings, rerun)
        elif not first.ok:
            failed(findings, first)
        if (rerun or first).ok:
            check_all(stack, [main_target], foreign, findings)
        steps.append(Step(kill, len(main_target.dataset.ids), first, rerun))
        print(
            f"  kill {n:>2} {kill.spec:<11} {first.describe():<8} {first.seconds:6.1f} s"
            + (f"   rerun {rerun.describe():<7} {rerun.seconds:6.1f} s" if rerun else ""),
            flush=True,
        )

    if not steps:  # otherwise the last kill's rerun (or finished run) was the clean run
        findings.checkpoint = "clean run"
        clean = stack.run("clean", main_target.dataset, main_target.output, args)
        if not clean.ok:
            failed(findings, clean)
        check_all(stack, [main_target], foreign, findings)
        print(f"  clean run {clean.describe()} {clean.seconds:.1f} s", flush=True)
    findings.checkpoint = "second clean run"
    before = len(stack.jobs())
    again = stack.run("clean-again", main_target.dataset, main_target.output, args)
    new_jobs = len(stack.jobs()) - before
    if not again.ok:
        failed(findings, again)
    check_all(stack, [main_target], foreign, findings)
    print(
        f"  second clean run {again.describe()} {again.seconds:.1f} s, {new_jobs} new job(s)",
        flush=True,
    )

    findings.checkpoint = "concurrent runs"
    concurrent = Target(
        data / "comments_concurrent",
        Dataset(data / "input-concurrent.parquet", "concurrent", args.rows, rng),
    )
    pair = [
        stack.start_run(
            f"concurrent-{i}",
            concurrent.dataset,
            concurrent.output,
            args,
            lease_wait=args.lease_wait,
        )
        for i in (1, 2)
    ]
    both = wait_all(pair, args.run_timeout + args.lease_wait)
    for outcome in both:
        if not outcome.ok:
            failed(findings, outcome)
    check_all(stack, [main_target, concurrent], foreign, findings)
    print(
        "  concurrent runs: "
        + ", ".join(f"{o.label} {o.describe()} {o.seconds:.1f} s" for o in both),
        flush=True,
    )
    return {"steps": steps, "new_jobs": new_jobs, "concurrent": both}


def report(result: dict[str, Any], findings: Findings, kills: int, seconds: float) -> bool:
    steps: list[Step] = result["steps"]
    fired = [s for s in steps if s.first.killed]
    survived = [s for s in fired if s.rerun is not None and s.rerun.ok]
    finished = [s.kill.spec for s in steps if not s.first.killed]
    concurrent_ok = sum(1 for o in result["concurrent"] if o.ok)
    rows: list[tuple[str, int, bool | None]] = [
        ("kills scheduled", kills, None),
        ("kills fired (died by SIGKILL)", len(fired), None),
        ("kills survived (rerun exited 0)", len(survived), len(survived) == len(fired)),
        ("jobs created by the unchanged rerun", result["new_jobs"], result["new_jobs"] == 0),
        ("concurrent runs exited 0", concurrent_ok, concurrent_ok == 2),
    ]
    rows += [(label, findings.count(name), findings.count(name) == 0) for name, label in CHECKS]
    print()
    print("Kills (point:hit, outcome, seconds of the killed run + its rerun):")
    for n, step in enumerate(steps, start=1):
        total = step.first.seconds + (step.rerun.seconds if step.rerun else 0.0)
        rerun = f"rerun {step.rerun.describe()}" if step.rerun else "no rerun needed"
        print(
            f"  {n:>3}  {step.kill.spec:<11} {step.first.describe():<8} {rerun:<16} "
            f"{total:7.1f} s   input {step.rows} rows"
        )
    if finished:
        print(f"  not reached (the run finished): {', '.join(finished)}")
    print()
    print(f"{'check':<40} {'figure':>7}  verdict")
    for label, value, ok in rows:
        verdict = "" if ok is None else ("ok" if ok else "VIOLATION")
        print(f"{label:<40} {value:>7}  {verdict}")
    print(f"{'wall time (s)':<40} {seconds:>7.0f}")
    violations = [(name, label) for name, label in CHECKS if findings.count(name)]
    for name, label in violations:
        print(f"\n{label}:")
        for key, (where, detail) in findings.seen[name].items():
            print(f"  - {key}: {detail}  [first seen after: {where}]")
    logged = [
        o
        for s in steps
        for o in (s.first, s.rerun)
        if o is not None and o.returncode not in (0, -signal.SIGKILL)
    ] + [o for o in result["concurrent"] if not o.ok]
    for outcome in logged:
        print(f"\nlog of {outcome.label} ({outcome.describe()}), last lines:\n{outcome.tail()}")
    return all(ok is not False for _, _, ok in rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, required=True, help="how many kills to schedule")
    parser.add_argument("--seed", type=int, required=True, help="seed of the schedule and data")
    parser.add_argument("--rows", type=int, default=600, help="rows of the first input")
    parser.add_argument("--shard-size", type=int, default=100, help="rows per shard")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--lease-wait", type=float, default=180.0, help="concurrent runs' wait")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="enrich-chaos-")) if temporary else args.workdir
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    findings = Findings()
    started = time.monotonic()
    print(f"chaos: {args.kills} kill(s), seed {args.seed}, {args.rows} rows, workdir {root}")
    try:
        with services(root) as stack:
            result = chaos(stack, args, findings)
        ok = report(result, findings, args.kills, time.monotonic() - started)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
