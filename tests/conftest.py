"""Fixtures shared by every tier: emulator processes, a real S3 server, a Prefect test server.

Every server is started on loopback with ports chosen at run time and stopped by the fixture.
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mistralai.client import Mistral

from emulator.server import EmulatorProcess
from tests.seaweed import SeaweedS3
from tests.support import API_KEY, StartEmulator


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One shared emulator (worker processes included) for tests that need no faults."""
    data = tmp_path_factory.mktemp("emulator")
    with EmulatorProcess(data, api_key=API_KEY, extra_args=("--queue-seconds", "0.2")) as emu:
        yield emu


@pytest.fixture
def client(emulator: EmulatorProcess) -> Mistral:
    return Mistral(api_key=API_KEY, server_url=emulator.url)


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[StartEmulator]:
    """Start a dedicated emulator (a fault plan, timing options); every one is stopped after."""
    started: list[EmulatorProcess] = []

    def start(
        faults: dict[str, Any] | None = None,
        *args: str,
        data_dir: Path | None = None,
    ) -> EmulatorProcess:
        plan = None
        if faults is not None:
            plan = tmp_path / f"faults-{len(started)}.yaml"
            plan.write_text(yaml.safe_dump(faults))
        emu = EmulatorProcess(
            data_dir or tmp_path / f"data-{len(started)}",
            api_key=API_KEY,
            faults=plan,
            extra_args=("--queue-seconds", "0.1", "--workers", "1", *args),
        )
        started.append(emu)
        return emu.start()

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3 server (SeaweedFS) on loopback for the whole session."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server per session (it takes ~10-13 s to start here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
