"""The shipped path, end to end: a real `prefect server start` (temporary PREFECT_HOME, SQLite) on
loopback, the deployments applied from prefect.yaml with `prefect deploy --all`, a
`prefect worker start` process on the pool, the API key in a Prefect Secret block (the worker has
no MISTRAL_API_KEY), and the emulator as Mistral. The last tests stop the worker and run the same
deployments with `enrich serve`.

Schedules are tested through the server's scheduler service, the only part of Prefect that turns
a schedule into runs on its own (creating a deployment does not): a library upgrade that breaks it
(SQLAlchemy 2.1 with Prefect 3.8.8) leaves nightly deployments that never run, while every run
triggered through the API still works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import polars as pl
import pytest
from mistralai.client import Mistral

from emulator.server import ChildService, EmulatorProcess
from tests.support import API_KEY

PROJECT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
SCHEDULED = {
    "nightly-embeddings",
    "nightly-moderation",
    "nightly-classification",
    "reconcile",
    "resume-finished",
}
# The scheduler's loop (60 s by default) is what a due schedule waits for; the recent-deployments
# loop (5 s) only looks at deployments whose row changed, which adding a schedule does not do.
SCHEDULER_LOOP_SECONDS = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


@dataclass
class Stack:
    api: str
    http: httpx.Client
    emulator: EmulatorProcess
    data: Path
    server: ChildService
    worker: ChildService

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; SQLite answers 503 while another writer holds it: try again."""
        for _ in range(20):
            response = self.http.request(method, path, **kwargs)
            if response.status_code != 503:
                return response
            time.sleep(0.5)
        return response

    def deployment(self, name: str, flow: str = "enrich") -> dict[str, Any]:
        response = self.call("GET", f"/deployments/name/{flow}/{name}")
        response.raise_for_status()
        deployment: dict[str, Any] = response.json()
        return deployment

    def run(self, name: str, parameters: dict[str, Any]) -> str:
        deployment = self.deployment(name)
        response = self.call(
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": parameters},
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def state(self, run_id: str) -> str:
        return str(self.call("GET", f"/flow_runs/{run_id}").json()["state"]["type"])

    def wait_final(self, run_id: str, timeout: float) -> str:
        return str(
            wait_until(
                f"flow run {run_id} to end",
                lambda: (s := self.state(run_id)) in FINAL and s,
                timeout,
            )
        )

    def deployments(self) -> list[dict[str, Any]]:
        response = self.call("POST", "/deployments/filter", json={})
        response.raise_for_status()
        deployments: list[dict[str, Any]] = response.json()
        return deployments

    def runs_of(self, deployment_id: str, *states: str) -> list[dict[str, Any]]:
        """The deployment's flow runs, in any of ``states`` (all states when none is named)."""
        flow_runs: dict[str, Any] = {"deployment_id": {"any_": [deployment_id]}}
        if states:
            flow_runs["state"] = {"type": {"any_": list(states)}}
        response = self.call("POST", "/flow_runs/filter", json={"flow_runs": flow_runs})
        response.raise_for_status()
        runs: list[dict[str, Any]] = response.json()
        return runs

    def scheduler_runs(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        """The deployment's SCHEDULED runs that the scheduler created from its active schedules.

        The scheduler marks what it creates: ``auto_scheduled`` and ``created_by`` naming the
        schedule. A run created through the API (``create_flow_run``) carries neither."""
        active = {s["id"] for s in deployment["schedules"] if s["active"]}
        return [
            run for run in self.runs_of(deployment["id"], "SCHEDULED") if from_schedule(run, active)
        ]

    def wait_scheduler_runs(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = wait_until(
            f"the scheduler to create runs of {deployment['name']}",
            lambda: self.scheduler_runs(deployment),
            timeout=30 + 3 * SCHEDULER_LOOP_SECONDS,
        )
        return runs

    @contextmanager
    def due_schedule(
        self, deployment: dict[str, Any], parameters: dict[str, Any], in_seconds: float
    ) -> Iterator[dict[str, Any]]:
        """An extra schedule on ``deployment``, with its own parameters, due ``in_seconds`` from
        now and then once a day; deleted on exit (which also deletes its runs not yet started), so
        it fires no more."""
        anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=in_seconds)
        created = self.call(
            "POST",
            f"/deployments/{deployment['id']}/schedules",
            json=[
                {
                    "schedule": {"interval": 86400, "anchor_date": anchor.isoformat()},
                    "active": True,
                    "parameters": parameters,
                }
            ],
        )
        created.raise_for_status()
        schedule: dict[str, Any] = created.json()[0]
        assert schedule["parameters"] == parameters
        try:
            yield schedule
        finally:
            self.call(
                "DELETE", f"/deployments/{deployment['id']}/schedules/{schedule['id']}"
            ).raise_for_status()

    def run_due_schedule(
        self, name: str, parameters: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Add a schedule to deployment ``name`` due in a few seconds; return its run once the
        scheduler has created it and a worker or serve process has finished it."""
        deployment = self.deployment(name)
        with self.due_schedule(deployment, parameters, in_seconds=15) as schedule:
            anchor = datetime.fromisoformat(schedule["schedule"]["anchor_date"])

            def due_run() -> dict[str, Any] | None:
                runs = self.runs_of(deployment["id"])
                ours = [r for r in runs if from_schedule(r, {schedule["id"]})]
                return min(ours, key=lambda r: r["expected_start_time"], default=None)

            # Nobody else creates it: it must exist before it is due, or the schedule is missed.
            run: dict[str, Any] = wait_until(
                f"the scheduler to create the run due at {anchor}", due_run, timeout=12
            )
            assert datetime.fromisoformat(run["expected_start_time"]) == anchor
            assert run["parameters"] == parameters  # the schedule's, not the deployment's
            self.wait_final(run["id"], timeout=timeout)
            finished: dict[str, Any] = self.call("GET", f"/flow_runs/{run['id']}").json()
        return finished


def from_schedule(run: dict[str, Any], schedule_ids: set[str]) -> bool:
    created_by = run.get("created_by") or {}
    return bool(
        run["auto_scheduled"]
        and created_by.get("type") == "SCHEDULE"
        and created_by.get("id") in schedule_ids
    )


def prefect_env(api: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MISTRAL_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [PREFECT, *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    home = root / "prefect-home"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(api, home)
    server, worker = ChildService("prefect server"), ChildService("prefect worker")
    emulator = EmulatorProcess(
        root / "emulator",
        api_key=API_KEY,
        extra_args=(
            "--requests-per-second",
            "10",
        ),
    ).start()
    try:
        server.launch(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            lambda line: "API reference" in line or "dashboard" in line,
            env=env
            | {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(SCHEDULER_LOOP_SECONDS)},
            timeout=120,
        )
        http = httpx.Client(base_url=api, timeout=30)

        def healthy() -> bool:
            try:
                return http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until("the Prefect API", healthy, 90)
        cli(env, "work-pool", "create", "enrich-process", "--type", "process")
        cli(env, "--no-prompt", "deploy", "--all")
        # The key lives in a Secret block; the worker's environment has none.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import os; from prefect.blocks.system import Secret; "
                "Secret(value=os.environ['SECRET_VALUE']).save('mistral-api-key')",
            ],
            env=env | {"SECRET_VALUE": API_KEY},
            check=True,
            timeout=120,
        )
        worker.launch(
            [PREFECT, "worker", "start", "--pool", "enrich-process", "--type", "process"],
            lambda line: (
                "started!" in line.lower() or ("worker" in line.lower() and "start" in line)
            ),
            env=env | {"MISTRAL_SERVER_URL": emulator.url},
            cwd=root,
            timeout=120,
        )
        yield Stack(
            api=api,
            http=http,
            emulator=emulator,
            data=root / "data",
            server=server,
            worker=worker,
        )
    finally:
        worker.stop(timeout=30)
        server.stop(timeout=30)
        emulator.stop()


def parameters(
    source: Path,
    output: Path,
    kind: str | None = None,
    options: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A run's parameters as the run form sends them: the kind inside its options."""
    chosen = {"options": {"kind": kind, **(options or {})}} if kind else {}
    return {
        "params": {
            "input": str(source),
            "id_column": "id",
            "text_column": "text",
            "output": str(output),
            "partition": "2026-11-22",
            "poll_interval": 0.5,
            **chosen,
            **extra,
        }
    }


def write(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": list(range(len(texts))), "text": texts}).write_parquet(path)
    return path


def test_the_deployments_are_applied_with_a_kind_dropdown(stack: Stack) -> None:
    names = {d["name"] for d in stack.call("POST", "/deployments/filter", json={}).json()}
    assert {"nightly-embeddings", "nightly-moderation", "nightly-classification", "adhoc"} <= names
    nightly = stack.deployment("nightly-embeddings")
    schedule = nightly["schedules"][0]["schedule"]
    assert schedule["cron"] == "0 4 * * *" and schedule["timezone"] == "Europe/Paris"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    schema = stack.deployment("adhoc")["parameter_openapi_schema"]
    fields = schema["definitions"]["EnrichParams"]["properties"]
    assert {"input", "options", "output", "max_cost_usd", "dry_run", "on_cancel"} <= set(fields)
    assert "kind" not in fields  # it is chosen inside options: one set of options per kind
    variants = {v["properties"]["kind"]["const"]: v for v in fields["options"]["anyOf"]}
    assert list(variants) == [
        "embeddings",
        "moderation",
        "chat-moderation",
        "classification",
        "classifier",
        "extract",
    ]
    required = {kind: sorted(v["required"]) for kind, v in variants.items()}
    assert required["classification"] == ["kind", "labels"]
    assert required["extract"] == ["json_schema", "kind"]
    assert required["classifier"] == ["classifier_model", "kind"]
    assert variants["classification"]["properties"]["labels"]["minItems"] == 2
    assert set(variants["embeddings"]["properties"]) == {"kind", "model", "output_dimension"}
    assert "json_schema" in variants["extract"]["properties"]
    for name in ("cache_mode", "on_cancel", "wait"):  # titled sections, not class names
        assert (
            fields[name]["title"] in ("Cache mode", "On cancel", "Wait") and "enum" in fields[name]
        )
    for name in ("partition", "work", "cache", "price_table"):  # a text box, no null toggle
        assert fields[name]["type"] == "string" and fields[name]["default"] == ""
    reconcile = stack.deployment("reconcile", flow="reconcile")
    assert reconcile["schedules"][0]["schedule"]["cron"] == "10 * * * *"


def test_the_scheduler_creates_runs_for_every_active_schedule(stack: Stack) -> None:
    deployments = {d["name"]: d for d in stack.deployments()}
    scheduled = {n for n, d in deployments.items() if any(s["active"] for s in d["schedules"])}
    assert scheduled == SCHEDULED
    for name in sorted(scheduled):
        runs = stack.wait_scheduler_runs(deployments[name])
        assert all(r["parameters"] == deployments[name]["parameters"] for r in runs)
    paris = ZoneInfo("Europe/Paris")
    nightly = stack.scheduler_runs(deployments["nightly-embeddings"])
    starts = [datetime.fromisoformat(r["expected_start_time"]).astimezone(paris) for r in nightly]
    assert {(t.hour, t.minute) for t in starts} == {(4, 0)}
    assert stack.runs_of(deployments["adhoc"]["id"], "SCHEDULED") == []  # it has no schedule


def test_an_adhoc_run_through_the_api_publishes_the_table(stack: Stack) -> None:
    source = write(stack.data / "adhoc" / "in.parquet", [f"an ad hoc text {i}" for i in range(40)])
    output = stack.data / "adhoc" / "out"
    run_id = stack.run("adhoc", parameters(source, output, kind="moderation"))
    assert stack.wait_final(run_id, timeout=240) == "COMPLETED"
    table = pl.read_parquet(output / "partition=2026-11-22" / "part-0.parquet")
    assert table.height == 40 and "flagged" in table.columns
    assert (output / "partition=2026-11-22" / "_SUCCESS").exists()


def test_cancelling_a_run_cancels_its_mistral_jobs(stack: Stack) -> None:
    texts = [f"a long running text {i}" for i in range(600)]  # 600 requests at 10 a second
    source = write(stack.data / "cancel" / "in.parquet", texts)
    run_id = stack.run(
        "adhoc",
        parameters(
            source,
            stack.data / "cancel" / "out",
            kind="classification",
            options={"labels": ["positive", "negative"]},
            shard_size=300,
        ),
    )
    client = Mistral(api_key=API_KEY, server_url=stack.emulator.url)

    def running_jobs() -> list[Any]:
        listed = client.batch.jobs.list(metadata={"enrich_flow_run": run_id}, page_size=10)
        jobs = listed.data or []
        return jobs if len(jobs) == 2 and any(j.status == "RUNNING" for j in jobs) else []

    wait_until("the run's batch jobs to run", running_jobs, timeout=180)
    cancelled = stack.call(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING"}, "force": True},
    )
    cancelled.raise_for_status()

    def all_cancelled() -> bool:
        jobs = client.batch.jobs.list(metadata={"enrich_flow_run": run_id}, page_size=10).data
        return bool(jobs) and all(j.status == "CANCELLED" for j in jobs)

    wait_until("the run's batch jobs to be CANCELLED", all_cancelled, timeout=90)
    assert stack.wait_final(run_id, timeout=60) == "CANCELLED"


def flow_processes(parent: int, run_id: str) -> list[int]:
    """Processes under ``parent`` (the worker) running flow run ``run_id``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if run_id.encode() in environ:
            found.append(pid)
    return found


def paid_jobs(stack: Stack) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = httpx.get(f"{stack.emulator.url}/emulator/jobs").json()["jobs"]
    return jobs


def test_a_suspended_run_frees_its_worker_and_resumes_with_no_new_job(stack: Stack) -> None:
    # One job of 600 requests (classification sends one text a request) at 10 a second: ~60 s.
    texts = [f"a text that waits for hours {i}" for i in range(600)]
    source = write(stack.data / "suspend" / "in.parquet", texts)
    output = stack.data / "suspend" / "out"
    run_id = stack.run(
        "adhoc",
        parameters(
            source,
            output,
            kind="classification",
            options={"labels": ["positive", "negative"]},
            wait="suspend",
            shard_size=600,
        ),
    )

    def suspended() -> dict[str, Any] | None:
        run: dict[str, Any] = stack.call("GET", f"/flow_runs/{run_id}").json()
        assert run["state"]["type"] not in FINAL, run["state"]
        return run if run["state"]["name"] == "Suspended" else None

    run = wait_until("the run to suspend", suspended, timeout=180)
    waiting = run["labels"]["enrich.waiting_on"].split(",")
    client = Mistral(api_key=API_KEY, server_url=stack.emulator.url)
    assert len(waiting) == 1
    # Mistral still works on the job, and the worker holds no process for this run.
    worker = stack.worker.pid
    assert worker is not None
    gone = wait_until(
        "the suspended run's process to exit",
        lambda: not flow_processes(worker, run_id) or None,
        30,
    )
    assert gone and client.batch.jobs.get(job_id=waiting[0]).status in {"QUEUED", "RUNNING"}
    before = paid_jobs(stack)

    resumer = stack.deployment("resume-finished", flow="resume-finished")

    def resume_once() -> str:
        """One run of resume-finished. Its schedule (every 5 minutes) may start one at the same
        time: the deployment's one slot cancels the newcomer (CANCEL_NEW), so try again."""
        for _ in range(3):
            response = stack.call(
                "POST", f"/deployments/{resumer['id']}/create_flow_run", json={"parameters": {}}
            )
            response.raise_for_status()
            resumer_run = str(response.json()["id"])
            final = stack.wait_final(resumer_run, timeout=120)
            if final != "CANCELLED":
                break
        if final != "COMPLETED":  # say why, for a failure seen only in CI
            state = stack.call("GET", f"/flow_runs/{resumer_run}").json()["state"]
            return f"{final}: {state.get('message')}\n" + "".join(stack.worker.output[-60:])
        return final

    assert resume_once() == "COMPLETED"
    if client.batch.jobs.get(job_id=waiting[0]).status in {"QUEUED", "RUNNING"}:
        assert stack.call("GET", f"/flow_runs/{run_id}").json()["state"]["name"] == "Suspended"
    wait_until(
        "the job to end",
        lambda: client.batch.jobs.get(job_id=waiting[0]).status == "SUCCESS",
        timeout=180,
    )
    assert resume_once() == "COMPLETED"
    assert stack.wait_final(run_id, timeout=240) == "COMPLETED", "".join(stack.worker.output[-60:])
    # The resumed run created no job: it reattached to the one it waited on.
    assert [j["id"] for j in paid_jobs(stack)] == [j["id"] for j in before]
    table = pl.read_parquet(output / "partition=2026-11-22" / "part-0.parquet")
    assert table.height == 600 and set(table["batch_job_id"]) == {waiting[0]}


def test_a_due_schedule_is_run_by_the_worker(stack: Stack) -> None:
    texts = [f"a scheduled text {i}" for i in range(5)]
    source = write(stack.data / "scheduled" / "in.parquet", texts)
    output = stack.data / "scheduled" / "out"
    run = stack.run_due_schedule("adhoc", parameters(source, output, kind="moderation"), 180)
    assert run["state"]["type"] == "COMPLETED", "".join(stack.worker.output[-60:])
    table = pl.read_parquet(output / "partition=2026-11-22" / "part-0.parquet")
    assert table.height == 5 and "flagged" in table.columns
    assert any(run["id"] in line for line in stack.worker.output)  # run by the worker
    # The deleted schedule left nothing behind to fire later.
    assert stack.runs_of(run["deployment_id"], "SCHEDULED") == []


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildService]:
    """`enrich serve` in place of the worker: from here on the only process that runs flows."""
    stack.worker.stop(timeout=30)
    # A single machine serves instead of deploying: start from a server without the worker's
    # deployments (serve does not clear the pull steps `prefect deploy` stored under a name).
    for deployment in stack.deployments():
        stack.call("DELETE", f"/deployments/{deployment['id']}").raise_for_status()
    home = tmp_path_factory.mktemp("serve")
    env = prefect_env(stack.api, home) | {
        "MISTRAL_SERVER_URL": stack.emulator.url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    service = ChildService("enrich serve")
    try:
        service.launch(
            [str(Path(sys.executable).with_name("enrich")), "serve"],
            lambda line: "being served" in line,
            env=env,
            cwd=home,
            timeout=120,
        )
        yield service
    finally:
        service.stop(timeout=30)


def test_enrich_serve_runs_the_same_deployments_without_a_worker(
    stack: Stack, served: ChildService
) -> None:
    assert {d["name"] for d in stack.deployments()} >= {
        "nightly-embeddings",
        "nightly-moderation",
        "nightly-classification",
        "adhoc",
        "reconcile",
    }
    source = write(stack.data / "served" / "in.parquet", ["served one", "served two"])
    output = stack.data / "served" / "out"
    run_id = stack.run("adhoc", parameters(source, output))
    state = stack.wait_final(run_id, timeout=180)
    assert state == "COMPLETED", "".join(served.output[-60:])
    assert pl.read_parquet(output / "partition=2026-11-22" / "part-0.parquet").height == 2
    assert any(run_id in line for line in served.output)  # run by the serve process


def test_the_served_schedules_get_runs_from_the_scheduler(
    stack: Stack, served: ChildService
) -> None:
    deployments = {d["name"]: d for d in stack.deployments()}
    scheduled = {n for n, d in deployments.items() if any(s["active"] for s in d["schedules"])}
    assert scheduled == SCHEDULED
    for name in sorted(scheduled):
        stack.wait_scheduler_runs(deployments[name])


def test_a_due_schedule_is_run_by_enrich_serve(stack: Stack, served: ChildService) -> None:
    source = write(stack.data / "served-scheduled" / "in.parquet", ["due one", "due two", "3"])
    output = stack.data / "served-scheduled" / "out"
    run = stack.run_due_schedule("adhoc", parameters(source, output), 180)
    assert run["state"]["type"] == "COMPLETED", "".join(served.output[-60:])
    assert pl.read_parquet(output / "partition=2026-11-22" / "part-0.parquet").height == 3
    assert any(run["id"] in line for line in served.output)  # run by the serve process
    assert stack.runs_of(run["deployment_id"], "SCHEDULED") == []


# SQLite refuses a write at once, busy timeout or not, when a DEFERRED transaction read before
# someone else committed. Prefect's server logs it and recovers in two places we have seen on a busy
# 2-core machine: the worker-channel heartbeat (the channel closes, the worker reconnects) and state
# validation (the API answers 503, `is_client_retryable_exception`, and the client sends the state
# again). Prefect's maintainers call SQLite locking expected (PrefectHQ/prefect#19771). Anything
# else in the log fails the test.
TRANSIENT = (
    ("Worker channel heartbeat persistence failed", "database is locked"),
    ("Encountered error during state validation", "sqlite3.OperationalError: database is locked"),
)


def tracebacks(lines: list[str]) -> dict[int, str]:
    """Each traceback of a log by its first line, told in one line: the log line before it, then
    the first exception it names."""
    told = {}
    for i, line in enumerate(lines):
        if not line.startswith("Traceback") or (i > 1 and "above exception" in lines[i - 2]):
            continue
        ends = (s for s in lines[i + 1 :] if s.strip() and not s[0].isspace())
        told[i] = f"{lines[i - 1].strip() if i else ''} -> {next(ends, '').strip()}"
    return told


def test_the_server_logged_no_traceback(stack: Stack) -> None:
    """Last of the module: the scheduler and the other services only log their errors (SQLAlchemy
    2.1 made the scheduler fail every loop while the API kept answering), so read the log."""
    lines = stack.server.output
    found = {
        i: told
        for i, told in tracebacks(lines).items()
        if not any(all(part in told for part in known) for known in TRANSIENT)
    }
    errors = [line for line in lines if "InvalidRequestError" in line]
    first = min(found, default=0)
    assert not found and not errors, "\n".join(
        [
            *list(found.values())[:20],
            *errors[:3],
            "The first in full:",
            "".join(lines[max(0, first - 1) : first + 80]),
        ]
    )


def test_the_server_refuses_a_bad_form_before_a_run_exists(stack: Stack) -> None:
    """ "Validate parameters" and "Run" are checked against the stored schema: a classification
    without labels never becomes a run; a good one does."""
    adhoc = stack.deployment("adhoc")
    source, output = stack.data / "refused" / "in.parquet", stack.data / "refused" / "out"
    for bad in (
        parameters(source, output, kind="classification"),  # no labels
        parameters(source, output, kind="classification", options={"labels": ["only"]}),
        parameters(source, output, kind="embeddings", options={"labels": ["a", "b"]}),
        parameters(source, output, kind="extract"),  # no json_schema
    ):
        response = stack.call(
            "POST", f"/deployments/{adhoc['id']}/create_flow_run", json={"parameters": bad}
        )
        assert response.status_code in (409, 422), (bad, response.text)
        assert "params.options" in response.text
    runs = stack.call(
        "POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": [adhoc["id"]]}}}
    ).json()
    assert not [r for r in runs if r["parameters"]["params"].get("output") == str(output)]
