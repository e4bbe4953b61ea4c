"""Which model version made each value: the emulator answers a new version under the same
alias between two runs, and the run re-sends, refuses or accepts the mix, as it is told.

Whether the real service names the version (in a response's or a job's ``model``) is uncertain,
so the emulator is run each way: versions named in responses, only in jobs, or nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import polars as pl
import pytest

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from schemas.params import EnrichParams
from tasks.core.layout import Layout
from tasks.core.versions import MixedVersionsError
from tests.flows.conftest import flow_params, use
from tests.support import StartEmulator

LATEST = "mistral-moderation-latest"
OLD, NEW = "mistral-moderation-2411", "mistral-moderation-2603"  # 9 and 11 categories
EMBED, EMBED_2312 = "mistral-embed", "mistral-embed-2312"


def texts(n: int) -> list[str]:
    return [f"comment {i} about parcels and invoices" for i in range(n)]


def write(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": list(range(n)), "text": texts(n)}).write_parquet(path)
    return path


def jobs(emu: EmulatorProcess) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = httpx.get(f"{emu.url}/emulator/jobs", timeout=10).json()[
        "jobs"
    ]
    return listed


def manifest(params: EnrichParams) -> dict[str, object]:
    assert params.partition is not None
    path = Path(Layout.of(params).manifest_file(params.partition))
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def published(params: EnrichParams) -> pl.DataFrame:
    return pl.read_parquet(Path(params.output, f"partition={params.partition}", "part-0.parquet"))


class Service:
    """One emulator data folder, restarted with an alias pointing at another version."""

    def __init__(self, start: StartEmulator, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.start, self.data, self.monkeypatch = start, tmp / "service", monkeypatch
        self.running: EmulatorProcess | None = None

    def answering(self, alias: str, version: str | None, *naming: str) -> EmulatorProcess:
        if self.running is not None:
            self.running.stop()
        args = [*naming, *(["--alias", f"{alias}={version}"] if version else [])]
        self.running = use(self.monkeypatch, self.start(None, *args, data_dir=self.data))
        return self.running


@pytest.fixture
def service(
    start_emulator: StartEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Service:
    return Service(start_emulator, tmp_path, monkeypatch)


def moderation(source: Path, out: Path, partition: str, **extra: object) -> EnrichParams:
    return flow_params(source, out, kind="moderation", partition=partition, **extra)


def test_an_alias_that_moved_is_resent_so_the_partition_has_one_version(
    tmp_path: Path, service: Service
) -> None:
    """Moderation's alias goes from 2411 (9 categories) to 2603 (11) between two nights: the
    second night's cached rows were answered by 2411, its new rows by 2603; by default the old
    ones are sent again and the partition is published from 2603 alone, cache updated."""
    out = tmp_path / "out" / "comments"
    service.answering(LATEST, OLD, "--answer-model", "version")
    first = moderation(write(tmp_path / "in" / "a.parquet", 30), out, "2026-12-01")
    enrich(first)
    night_one = published(first)
    assert night_one["model"].unique().to_list() == [LATEST]
    assert night_one["model_version"].unique().to_list() == [OLD]
    assert "score_jailbreaking" not in night_one.columns  # 2411 has 9 categories

    emu = service.answering(LATEST, NEW, "--answer-model", "version")
    second = moderation(write(tmp_path / "in" / "a.parquet", 40), out, "2026-12-02")
    summary = enrich(second)
    night_two = published(second)
    assert summary.resent_texts == 30  # the cached 2411 answers, sent again once 2603 answered
    assert summary.cache_hit_rows == 0 and summary.cost_avoided_usd == 0  # none was used
    assert summary.retried_texts == 0  # a re-send is not a retry
    assert summary.model_versions == {NEW: 40}
    assert night_two["model_version"].unique().to_list() == [NEW]
    assert night_two["score_jailbreaking"].null_count() == 0  # every row has 2603's categories
    assert night_two.height == 40 and night_two["id"].n_unique() == 40
    sent = [j for j in jobs(emu) if j["status"] == "SUCCESS"]
    assert len(sent) == 3  # night one's, night two's new rows, night two's re-send

    third = moderation(tmp_path / "in" / "a.parquet", out, "2026-12-03")
    again = enrich(third)
    assert again.cache_hit_rows == 40 and again.sent_texts == 0  # the cache keys 2603 now
    assert again.model_versions == {NEW: 40}
    assert len([j for j in jobs(emu) if j["status"] == "SUCCESS"]) == 3


def embeddings(source: Path, out: Path, partition: str, **extra: object) -> EnrichParams:
    return flow_params(source, out, kind="embeddings", partition=partition, **extra)


def test_refuse_publishes_nothing_and_the_rerun_reuses_the_jobs(
    tmp_path: Path, service: Service
) -> None:
    out = tmp_path / "out" / "vectors"
    service.answering(EMBED, EMBED_2312, "--answer-model", "version")
    enrich(embeddings(write(tmp_path / "in" / "a.parquet", 20), out, "2026-12-01"))

    emu = service.answering(EMBED, None, "--answer-model", "version")  # mistral-embed itself
    grown = write(tmp_path / "in" / "a.parquet", 25)
    refused = embeddings(grown, out, "2026-12-02", on_mixed_versions="refuse")
    with pytest.raises(MixedVersionsError) as caught:
        enrich(refused)
    message = str(caught.value)
    assert f"{EMBED_2312} (20 texts)" in message and f"{EMBED} (5 texts)" in message
    assert "on_mixed_versions=resend" in message and "=accept" in message
    assert not Path(out, "partition=2026-12-02").exists()  # nothing published
    jobs_after_refusal = len(jobs(emu))

    resent = enrich(embeddings(grown, out, "2026-12-02", on_mixed_versions="resend"))
    assert resent.reattached_jobs == 1  # the refused run's job: not paid twice
    assert len(jobs(emu)) == jobs_after_refusal + 1  # only the re-send of the 20 old texts
    assert published(refused)["model_version"].unique().to_list() == [EMBED]


def test_accept_publishes_the_mix_and_says_so(tmp_path: Path, service: Service) -> None:
    out = tmp_path / "out" / "vectors"
    service.answering(EMBED, EMBED_2312, "--answer-model", "version")
    enrich(embeddings(write(tmp_path / "in" / "a.parquet", 20), out, "2026-12-01"))

    service.answering(EMBED, None, "--answer-model", "version")
    accepted = embeddings(
        write(tmp_path / "in" / "a.parquet", 25), out, "2026-12-02", on_mixed_versions="accept"
    )
    summary = enrich(accepted)
    assert summary.model_versions == {EMBED: 5, EMBED_2312: 20}
    assert summary.resent_texts == 0
    rows = published(accepted)
    by_version = dict(rows.group_by("model_version").len().iter_rows())
    assert by_version == {EMBED: 5, EMBED_2312: 20}
    assert set(rows.filter(pl.col("result_source") == "cache")["model_version"]) == {EMBED_2312}
    record = manifest(accepted)
    assert record["model_versions"] == {EMBED: 5, EMBED_2312: 20}
    assert record["mixed_model_versions"] is True


def test_a_version_named_only_by_the_job_is_recorded_and_the_job_is_still_found(
    tmp_path: Path, service: Service
) -> None:
    """A service whose responses name the alias but whose jobs name the version: each row
    takes the job's, and a rerun finds its own job though the job's model is not the alias."""
    emu = service.answering(LATEST, OLD, "--job-model", "version")
    source = write(tmp_path / "in" / "a.parquet", 12)
    params = moderation(source, tmp_path / "out", "2026-12-01", cache_mode="off")
    enrich(params)
    assert {j["model"] for j in jobs(emu)} == {OLD}
    assert published(params)["model_version"].unique().to_list() == [OLD]
    again = enrich(params)
    assert again.reattached_jobs == 1 and len(jobs(emu)) == 1


def test_a_service_that_names_only_the_alias_records_the_alias(
    tmp_path: Path, service: Service
) -> None:
    service.answering(LATEST, OLD)  # the alias moved, but nothing says so
    params = moderation(write(tmp_path / "in" / "a.parquet", 12), tmp_path / "out", "2026-12-01")
    summary = enrich(params)
    assert summary.model_versions == {LATEST: 12}
    assert published(params)["model_version"].unique().to_list() == [LATEST]
