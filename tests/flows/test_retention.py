"""After a publish, staging keeps job records and the validation result, nothing bulky; the
request files are deleted from Mistral's file store once their job is over."""

from __future__ import annotations

from pathlib import Path

import httpx

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import read_table, write_dataset


def staged_names(root: Path) -> set[str]:
    return {p.name for p in (root / "staging").rglob("*") if p.is_file()}


def request_files(emu: EmulatorProcess) -> list[str]:
    files = httpx.get(f"{emu.url}/emulator/files", timeout=10).json()["files"]
    return [f["id"] for f in files if f["filename"].startswith("enrich-")]


def test_a_published_run_leaves_only_records_in_staging(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    before = set(request_files(mistral))
    source = write_dataset(tmp_path / "in.parquet", [f"kept text {i}" for i in range(150)])
    summary = enrich(params(source, tmp_path / "out"))
    assert summary.enriched_rows == 150 and read_table(tmp_path / "out").height == 150
    assert staged_names(tmp_path / "_enrich" / "out") == {
        "job.json",
        "create-intent.json",
        "validation.json",
    }
    assert set(request_files(mistral)) <= before  # this run's request files are gone


def test_keep_staging_keeps_everything_for_debugging(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    source = write_dataset(tmp_path / "in.parquet", ["debug me", "and me"])
    enrich(params(source, tmp_path / "out", keep_staging=True))
    names = staged_names(tmp_path / "_enrich" / "out")
    assert {"requests.jsonl", "results.parquet", "job.json"} <= names
