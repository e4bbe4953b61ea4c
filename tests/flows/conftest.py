"""Flow tests: the enrich flow under one Prefect test server, against emulators and real S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from emulator.server import EmulatorProcess
from schemas.params import EnrichParams
from tests.seaweed import SeaweedS3
from tests.support import API_KEY


@pytest.fixture(autouse=True)
def _prefect(prefect_server: None) -> None:
    """Every flow test runs under the session's Prefect test server."""


@pytest.fixture
def mistral(monkeypatch: pytest.MonkeyPatch, emulator: EmulatorProcess) -> EmulatorProcess:
    """Point the flow at the shared emulator through the documented variables."""
    monkeypatch.setenv("MISTRAL_SERVER_URL", emulator.url)
    monkeypatch.setenv("MISTRAL_API_KEY", API_KEY)
    return emulator


def use(monkeypatch: pytest.MonkeyPatch, emu: EmulatorProcess) -> EmulatorProcess:
    monkeypatch.setenv("MISTRAL_SERVER_URL", emu.url)
    monkeypatch.setenv("MISTRAL_API_KEY", API_KEY)
    return emu


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedS3) -> Iterator[SeaweedS3]:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    yield s3_server


def flow_params(source: Path | str, output: Path | str, **overrides: object) -> EnrichParams:
    """The flow's parameters for a test: small shards, quick polls, a fixed partition."""
    base: dict[str, object] = {
        "input": str(source),
        "id_column": "id",
        "text_column": "text",
        "output": str(output),
        "partition": "2026-11-22",
        "poll_interval": 0.1,
        "shard_size": 100,
    }
    return EnrichParams.model_validate(base | overrides)


def write_dataset(path: Path, texts: list[Any], **columns: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": list(range(len(texts))), "text": texts, **columns}).write_parquet(path)
    return path


def read_table(folder: str | Path) -> pl.DataFrame:
    files = sorted(Path(folder).glob("partition=*/*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()
