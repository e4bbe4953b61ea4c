"""``make screenshots``: the PNGs of the README's "Screenshots", taken from a real Prefect UI.

Starts a ``prefect server`` (temporary PREFECT_HOME, SQLite) and the emulator on free loopback
ports, runs the enrich flow twice in this process (classification of the demo comments, which
publishes; then a table of mostly empty texts, which the validation gate refuses), applies the
``adhoc`` deployment of prefect.yaml, and has headless Chromium (Debian's ``chromium``) save four
pages as PNGs under ``docs/screenshots/``: the deployment's run form, the summary artifact, the
results artifact and the failed flow run. Everything it starts is stopped at the end; its data
goes to ``.demo/screenshots/``, emptied first so the runs send their texts again.

Not part of ``make test``: it needs Chromium and takes a few minutes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from emulator.server import ChildService, EmulatorProcess

PROJECT = Path(__file__).resolve().parents[1]
SHOTS = PROJECT / "docs" / "screenshots"
WORK = PROJECT / ".demo" / "screenshots"
BIN = Path(sys.executable).parent
API_KEY = "screenshots-key"
WIDTH = 1400
# Virtual milliseconds Chromium gives a page before the shot: the UI is a single-page app that
# loads its code, then asks the API for the run, the artifact or the deployment.
PAGE_BUDGET_MS = 15_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return value


def prefect_env(api: str, home: Path) -> dict[str, str]:
    """This machine's environment without its Prefect and Mistral settings, pointed at ``api``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MISTRAL_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def prefect(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def published_run(data: Path) -> None:
    """Classification of the demo comments: a summary and a results artifact with label bars."""
    from flows.demo import sample_dataset
    from flows.enrich import enrich
    from schemas.params import EnrichParams

    source = sample_dataset(data / "input" / "comments.parquet")
    params = EnrichParams.model_validate(
        {
            "input": str(source),
            "id_column": "comment_id",
            "text_column": "text",
            "kind": "classification",
            "options": {"labels": ["positive", "negative", "neutral"]},
            "output": str(data / "output" / "comments"),
            "shard_size": 1_000,
            "poll_interval": 0.5,
        }
    )
    enrich(params)


def failed_run(data: Path) -> str:
    """A table whose texts are mostly empty: rejected rows over the limit, the gate refuses it.
    Returns the flow run's id."""
    import polars as pl

    from flows.enrich import enrich
    from schemas.params import EnrichParams

    texts = [f"Delivery {i} arrived on time" if i % 4 == 0 else None for i in range(200)]
    source = data / "input" / "tickets.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"ticket_id": [f"t{i:04d}" for i in range(200)], "body": texts}).write_parquet(
        source
    )
    params = EnrichParams.model_validate(
        {
            "input": str(source),
            "id_column": "ticket_id",
            "text_column": "body",
            "kind": "moderation",
            "output": str(data / "output" / "tickets"),
            "poll_interval": 0.5,
        }
    )
    state = enrich(params, return_state=True)
    if not state.is_failed():
        raise RuntimeError(f"the run meant to fail ended {state.type.value}")
    return str(state.state_details.flow_run_id)


def artifact_id(http: httpx.Client, key: str) -> str:
    response = http.post(
        "/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1},
    )
    response.raise_for_status()
    found = response.json()
    if not found:
        raise RuntimeError(f"no artifact with key {key}")
    return str(found[0]["id"])


def screenshot(chromium: str, url: str, png: Path, height: int, profile: Path) -> None:
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{height}",
            f"--virtual-time-budget={PAGE_BUDGET_MS}",
            f"--screenshot={png}",
            url,
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    if not png.exists():
        raise RuntimeError(f"chromium saved no screenshot of {url}")
    print(f"{png.relative_to(PROJECT)}  <-  {url}")


def use_server(env: dict[str, str], emulator_url: str) -> None:
    """Point this process at the server (its Prefect client) and the emulator: the flows run
    here. Prefect is not imported yet, so it reads these settings when it is."""
    for name in [k for k in os.environ if k.startswith(("PREFECT_", "MISTRAL_"))]:
        del os.environ[name]
    os.environ.update(env | {"MISTRAL_SERVER_URL": emulator_url, "MISTRAL_API_KEY": API_KEY})


def main() -> None:
    started = time.monotonic()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium not found: apt-get install -y chromium (Debian's package)")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="enrich-screenshots-") as tmp:
        home = Path(tmp) / "prefect-home"
        home.mkdir()
        port = free_port()
        ui = f"http://127.0.0.1:{port}"
        env = prefect_env(f"{ui}/api", home)
        server = ChildService("prefect server")
        emulator = EmulatorProcess(WORK / "emulator", api_key=API_KEY)
        try:
            server.launch(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                lambda line: "API reference" in line or "dashboard" in line,
                env=env,
                timeout=120,
            )
            http = httpx.Client(base_url=f"{ui}/api", timeout=30)

            # The ready line comes before the API answers on a busy machine.
            def healthy() -> bool:
                try:
                    return http.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until("the Prefect API", healthy, 120)
            emulator.start()
            use_server(env, emulator.url)
            published_run(WORK)
            failed = failed_run(WORK)
            prefect(env, "work-pool", "create", "enrich-process", "--type", "process")
            prefect(env, "--no-prompt", "deploy", "--name", "adhoc")
            adhoc = http.get("/deployments/name/enrich/adhoc")
            adhoc.raise_for_status()
            summary = artifact_id(http, "enrich-comments-classification-summary")
            results = artifact_id(http, "enrich-comments-classification-results")
            # Page and window height: the results page is taller so its chart fits whole; the
            # failed run's Details tab shows its state message (the Logs tab starts at the top).
            pages = {
                "form": (f"/deployments/deployment/{adhoc.json()['id']}/run", 1000),
                "summary": (f"/artifacts/artifact/{summary}", 1000),
                "results": (f"/artifacts/artifact/{results}", 1080),
                "failed-run": (f"/runs/flow-run/{failed}?tab=Details", 1000),
            }
            for name, (path, height) in pages.items():
                # /v2: the UI a browser without a saved preference gets at the server's root.
                url = f"{ui}/v2{path}"
                screenshot(chromium, url, SHOTS / f"{name}.png", height, Path(tmp) / "chromium")
        finally:
            emulator.stop()
            server.stop(timeout=30)
    print(f"Screenshots done in {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
