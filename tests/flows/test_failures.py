"""What the API does in between: failed lines, 429 storms, FAILED and timed-out jobs, crashes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from mistralai.client import Mistral

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tasks.batch import submit_job
from tasks.core.packing import build
from tasks.edges import storage
from tasks.edges.mistral import MistralGateway
from tasks.edges.settings import MistralSettings
from tasks.edges.tokens import TOKENS
from tasks.plan import plan_run
from tasks.requests import shard_texts, write_shard
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import read_table, use, write_dataset
from tests.support import API_KEY, StartEmulator


def job_statuses(emu: EmulatorProcess) -> list[str]:
    client = Mistral(api_key=API_KEY, server_url=emu.url)
    return [str(j.status) for j in client.batch.jobs.list(page_size=100).data or []]


def texts(n: int) -> list[str]:
    return [f"comment number {i} about the parcel" for i in range(n)]


def test_failed_lines_are_retried_then_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    plan_ = {"seed": 1, "lines": {"rate": 0.5, "status": 503, "times": -1, "limit": 10}}
    emu = use(monkeypatch, start_emulator(plan_))
    source = write_dataset(tmp_path / "in.parquet", texts(60))
    # Classification sends one text per line, so line faults hit single rows.
    summary = enrich(
        params(source, tmp_path / "out", kind="classification", options={"labels": ["a", "b"]})
    )
    assert summary.enriched_rows == 60 and summary.rejected_rows == 0
    assert summary.retried_texts == 10
    assert len(job_statuses(emu)) == 2  # the first job, and one follow-up for the failed rows


def test_failures_of_every_quota_wave_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    """An attempt too big for the quota goes in waves; the retry takes the failures of all of
    them, not only the last wave's."""
    plan_ = {"seed": 1, "lines": {"rate": 0.5, "status": 503, "times": -1, "limit": 10}}
    emu = use(monkeypatch, start_emulator(plan_))
    monkeypatch.setenv("ENRICH_QUOTA_NAME", f"quota-{tmp_path.name}")
    monkeypatch.setenv("ENRICH_QUOTA_SIZE", "55")  # two shards of about 30 requests: two waves
    source = write_dataset(tmp_path / "in.parquet", texts(60))
    summary = enrich(
        params(
            source,
            tmp_path / "out",
            kind="classification",
            options={"labels": ["a", "b"]},
            shard_size=30,
        )
    )
    statuses = job_statuses(emu)
    assert len([s for s in statuses if s]) >= 3, statuses  # two waves, then the retry
    assert summary.enriched_rows == 60 and summary.rejected_rows == 0
    assert summary.retried_texts == 10


def test_failed_lines_are_rejected_after_the_last_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    use(
        monkeypatch,
        start_emulator(
            {
                "seed": 2,
                "lines": {"rate": 0.2, "status": 500, "times": -1, "message": "model overloaded"},
            }
        ),
    )
    source = write_dataset(tmp_path / "in.parquet", texts(50))
    summary = enrich(
        params(
            source,
            tmp_path / "out",
            kind="classification",
            options={"labels": ["a", "b"]},
            max_retries=2,
            max_rejected_fraction=1.0,
        )
    )
    rejected = read_table(tmp_path / "_enrich" / "out" / "rejected")
    assert 0 < rejected.height < 50 and summary.enriched_rows + rejected.height == 50
    assert set(rejected["reject_reason"]) == {"api_error"}
    assert set(rejected["reject_message"]) == {"model overloaded"}
    assert set(rejected["attempts"]) == {3}  # the first attempt and two retries
    assert set(rejected["status_code"]) == {500}


def test_terminal_errors_are_rejected_without_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistral: EmulatorProcess
) -> None:
    long_text = "word " * 9000  # over the 8,192-token context: refused before sending
    source = write_dataset(tmp_path / "in.parquet", ["short", long_text])
    summary = enrich(params(source, tmp_path / "out", max_rejected_fraction=0.5))
    rejected = read_table(tmp_path / "_enrich" / "out" / "rejected")
    assert rejected["reject_reason"].to_list() == ["text_too_long"]
    assert "tokens" in rejected["reject_message"][0]
    assert summary.enriched_rows == 1 and len(summary.jobs) == 1


def test_429_storms_on_create_and_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    use(
        monkeypatch,
        start_emulator(
            {
                "seed": 3,
                "http": [
                    {
                        "route": "POST /v1/batch/jobs",
                        "status": 429,
                        "rate": 1.0,
                        "retry_after": 0.05,
                        "limit": 4,
                    },
                    {
                        "route": "GET /v1/batch/jobs/*",
                        "status": 429,
                        "rate": 0.6,
                        "retry_after": 0.05,
                    },
                    {"route": "GET /v1/batch/jobs", "status": 503, "rate": 0.3},
                ],
            }
        ),
    )
    source = write_dataset(tmp_path / "in.parquet", texts(40))
    summary = enrich(params(source, tmp_path / "out", shard_size=20))
    assert summary.enriched_rows == 40 and set(summary.jobs.values()) == {"SUCCESS"}


@pytest.mark.parametrize(
    ("ending", "status"), [("fail", "FAILED"), ("timeout", "TIMEOUT_EXCEEDED")]
)
def test_a_job_that_ends_early_keeps_its_partial_output(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_emulator: StartEmulator,
    ending: str,
    status: str,
) -> None:
    emu = use(
        monkeypatch,
        start_emulator({"jobs": {ending: {"rate": 1.0, "after_fraction": 0.5, "limit": 1}}}),
    )
    source = write_dataset(tmp_path / "in.parquet", texts(40))
    summary = enrich(
        params(source, tmp_path / "out", kind="classification", options={"labels": ["a", "b"]})
    )
    assert sorted(summary.jobs.values()) == sorted([status, "SUCCESS"])
    assert summary.enriched_rows == 40
    table = read_table(tmp_path / "out")
    first_job = next(job for job, s in summary.jobs.items() if s == status)
    assert table.filter(pl.col("batch_job_id") == first_job).height == 20  # partial output kept
    assert sorted(job_statuses(emu)) == sorted([status, "SUCCESS"])


def test_crash_after_submit_then_rerun_reattaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    emu = use(monkeypatch, start_emulator(None, "--requests-per-second", "2"))
    source = write_dataset(tmp_path / "in.parquet", texts(90))
    run = params(
        source,
        tmp_path / "out",
        shard_size=30,
        kind="classification",
        options={"labels": ["a", "b"]},
    )
    # The first run plans, builds and submits every shard, then its process dies.
    planned = plan_run(run, run.partition_value(datetime.now(UTC)))
    api = MistralGateway(MistralSettings())
    for shard in range(planned.shards):
        found = shard_texts(planned, run, shard)
        submit_job(
            api,
            write_shard(build(found, run, shard, 0, TOKENS), planned, shard, 0),
            planned,
            run,
        )
    submitted = job_statuses(emu)
    assert len(submitted) == planned.shards

    # The rerun meets the same jobs, still running at 2 requests a second.
    summary = enrich(run)
    assert summary.reattached_jobs == planned.shards
    assert len(job_statuses(emu)) == planned.shards  # exactly one job per shard
    assert summary.enriched_rows == 90
    records = storage.list_files(storage.join(planned.staging, "shards"), "job.json")
    assert len(records) == planned.shards  # job ids recorded in staging
