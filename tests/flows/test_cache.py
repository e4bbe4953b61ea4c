"""The content cache, cost estimate, dry run, budget guard and pending-requests quota, through the
enrich flow against the emulator (jobs and sent inputs counted by the emulator itself)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from mistralai.client import Mistral
from typer.testing import CliRunner

from emulator.server import EmulatorProcess
from flows.cli import app
from flows.enrich import enrich
from schemas.refs import RunSummary
from tasks.core.pricing import BudgetExceededError, usd
from tasks.edges import storage
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import read_table, use
from tests.seaweed import BUCKET, SeaweedS3
from tests.support import API_KEY, StartEmulator

LABELS = ["positive", "negative", "neutral"]


def write(path: Path, ids: list[int], texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": ids, "text": texts}).write_parquet(path)
    return path


def counts(emu: EmulatorProcess) -> tuple[int, int]:
    """(jobs, files) the emulator holds."""
    health = httpx.get(f"{emu.url}/emulator/health", timeout=10).json()
    return health["jobs"], health["files"]


def sent_texts(emu: EmulatorProcess, summary: RunSummary, work: Path) -> list[str]:
    """Every input the run's jobs carried. Request files are deleted from Mistral once their job
    is collected, so they are read from the run's staging (kept with ``keep_staging``), matched
    to each job by the content digest the emulator took when the job was created."""
    digests = {
        job["id"]: job["content_sha256"]
        for job in httpx.get(f"{emu.url}/emulator/jobs", timeout=10).json()["jobs"]
    }
    staged = {
        hashlib.sha256(path.read_bytes()).hexdigest(): path
        for path in (work / "staging").rglob("requests.jsonl")
    }
    texts: list[str] = []
    for job_id in summary.jobs:
        for raw in staged[digests[job_id]].read_text().splitlines():
            body = json.loads(raw)["body"]
            if "messages" in body:
                texts.append(body["messages"][-1]["content"])
            else:
                inputs = body["input"]
                texts += inputs if isinstance(inputs, list) else [inputs]
    return texts


def published(output: Path) -> pl.DataFrame:
    return read_table(output).sort("id")


def test_unchanged_rerun_creates_no_job_and_publishes_the_same_table(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    texts = [f"review number {i % 150}" for i in range(300)]  # 150 distinct texts
    source = write(tmp_path / "in.parquet", list(range(300)), texts)
    first = enrich(params(source, tmp_path / "out"))
    assert first.cache_hit_rows == 0 and first.sent_texts == 150 and first.cache_added == 150
    before = published(tmp_path / "out")
    jobs_before = counts(mistral)

    again = enrich(params(source, tmp_path / "out"))
    assert counts(mistral) == jobs_before  # zero jobs, zero files: nothing paid
    assert again.jobs == {} and again.requests == 0 and again.sent_texts == 0
    assert again.cache_hit_rows == 300 and again.cache_hit_texts == 150
    assert again.cost_avoided_usd is not None and again.cost_avoided_usd > 0
    after = published(tmp_path / "out")
    assert set(after["result_source"]) == {"cache"}  # lineage says where the results came from
    assert after.drop("result_source").equals(before.drop("result_source"))


def test_appended_and_edited_rows_are_the_only_ones_sent(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    texts = [f"row {i}" for i in range(200)]
    source = write(tmp_path / "in.parquet", list(range(200)), texts)
    enrich(params(source, tmp_path / "out"))

    grown = [*texts, *(f"appended row {i}" for i in range(20))]
    for i in (3, 50, 199):
        grown[i] = f"edited row {i}"
    grown[7] = "row 8"  # edited into a text the cache already holds: not sent
    source = write(tmp_path / "in.parquet", list(range(220)), grown)
    summary = enrich(params(source, tmp_path / "out", keep_staging=True))

    expected = {f"appended row {i}" for i in range(20)} | {f"edited row {i}" for i in (3, 50, 199)}
    sent = sent_texts(mistral, summary, tmp_path / "_enrich" / "out")
    assert sorted(sent) == sorted(expected)  # exactly the new and changed texts, once each
    assert summary.cache_hit_rows == 220 - 23 and summary.sent_texts == 23
    table = published(tmp_path / "out")
    assert table.height == 220
    sources = dict(zip(table["text"], table["result_source"], strict=True))
    assert all(sources[t] == "batch" for t in expected)
    assert sources["row 8"] == "cache"


def test_unicode_forms_of_one_text_share_a_cache_entry(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    composed, decomposed = "caf\u00e9 cr\u00e8me", "cafe\u0301 cre\u0300me"
    source = write(tmp_path / "in.parquet", [1], [composed])
    enrich(params(source, tmp_path / "out"))
    source = write(tmp_path / "in.parquet", [1, 2], [composed, decomposed])
    summary = enrich(params(source, tmp_path / "out"))
    assert summary.jobs == {} and summary.cache_hit_rows == 2
    assert published(tmp_path / "out")["text"].to_list() == [composed, decomposed]  # as given


def test_changing_model_options_misses_the_cache(tmp_path: Path, mistral: EmulatorProcess) -> None:
    texts = [f"I love it {i}" for i in range(30)]
    source = write(tmp_path / "in.parquet", list(range(30)), texts)
    labels = {"kind": "classification", "options": {"labels": LABELS}}
    enrich(params(source, tmp_path / "out", **labels))

    other = {"kind": "classification", "options": {"labels": [*LABELS, "mixed"]}}
    changed = enrich(params(source, tmp_path / "out", keep_staging=True, **other))
    sent = sent_texts(mistral, changed, tmp_path / "_enrich" / "out")
    assert changed.cache_hit_rows == 0 and sorted(sent) == sorted(texts)
    instructions = {
        "kind": "classification",
        "options": {"labels": LABELS, "instructions": "Label the mood of the text."},
    }
    assert enrich(params(source, tmp_path / "out", **instructions)).cache_hit_rows == 0

    back = enrich(params(source, tmp_path / "out", **labels))  # both sets stay cached
    assert back.jobs == {} and back.cache_hit_rows == 30


def test_dry_run_creates_nothing_and_shows_the_estimate(
    tmp_path: Path, mistral: EmulatorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "in.parquet", list(range(50)), [f"text {i}" for i in range(50)])
    before = counts(mistral)
    summary = enrich(params(source, tmp_path / "out", dry_run=True))
    assert counts(mistral) == before  # no file uploaded, no job created
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "_enrich" / "_cache").exists()
    estimate = summary.estimated
    assert summary.dry_run and estimate is not None
    assert estimate.texts == 50 and estimate.requests == 1
    # mistral-embed: SentencePiece v1 tokens + BOS/EOS; $0.10 per 1M tokens, batch -50%.
    assert estimate.prompt_tokens > 100
    assert estimate.cost_usd == pytest.approx(estimate.prompt_tokens * 0.10 / 1e6 * 0.5)
    out = capsys.readouterr().out
    assert "Plan (dry run: nothing submitted)" in out
    assert f"{estimate.prompt_tokens:,} prompt" in out


def test_cli_dry_run_prints_the_plan(tmp_path: Path, mistral: EmulatorProcess) -> None:
    source = write(tmp_path / "in.parquet", [1, 2], ["one", "two"])
    before = counts(mistral)
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--input",
            str(source),
            "--id-column",
            "id",
            "--text-column",
            "text",
            "--output",
            str(tmp_path / "out"),
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| to send | 2 texts in 1 requests, 1 job(s) |" in result.output
    assert "estimated cost | $0.0000" in result.output
    assert "Dry run: nothing was uploaded, submitted or published." in result.output
    assert counts(mistral) == before


def test_budget_guard_refuses_before_anything_is_sent(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps({"batch_discount": 0.5, "models": {"mistral-embed": {"input": 1000.0}}})
    )
    source = write(tmp_path / "in.parquet", list(range(40)), [f"text {i}" for i in range(40)])
    dry = enrich(params(source, tmp_path / "out", dry_run=True, price_table=str(prices)))
    assert dry.estimated is not None and dry.estimated.cost_usd is not None
    expected = dry.estimated.prompt_tokens * 1000.0 / 1e6 * 0.5
    assert dry.estimated.cost_usd == pytest.approx(expected)

    before = counts(mistral)
    with pytest.raises(BudgetExceededError) as refused:
        enrich(params(source, tmp_path / "out", max_cost_usd=0.05, price_table=str(prices)))
    assert str(refused.value) == (
        f"this run is estimated at {usd(expected)}, over max_cost_usd = $0.05; nothing was "
        "submitted. Raise max_cost_usd, unset it, or enrich fewer rows (filter the input); the "
        "plan artifact and a dry run (the dry_run parameter) show the estimate."
    )
    assert counts(mistral) == before
    assert not (tmp_path / "out").exists()

    fits = enrich(params(source, tmp_path / "out", max_cost_usd=1.0, price_table=str(prices)))
    assert fits.enriched_rows == 40


def test_budget_guard_refuses_a_model_without_a_price(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"codestral-embed": {"input": 0.15}}}))
    source = write(tmp_path / "in.parquet", [1], ["text"])
    with pytest.raises(BudgetExceededError, match="no price for model mistral-embed"):
        enrich(params(source, tmp_path / "out", max_cost_usd=1.0, price_table=str(prices)))


def test_two_concurrent_runs_queue_on_a_small_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    # The emulator refuses a job that would take the workspace over 4 pending requests; each run
    # sends 3 (one chat request per text), so the two can only pass one after the other.
    emu = use(
        monkeypatch,
        start_emulator(None, "--pending-requests-limit", "4", "--requests-per-second", "6"),
    )
    monkeypatch.setenv("ENRICH_QUOTA_NAME", f"quota-{tmp_path.name}")
    monkeypatch.setenv("ENRICH_QUOTA_SIZE", "4")
    runs: dict[str, Any] = {}

    def run(name: str) -> None:
        source = write(tmp_path / name / "in.parquet", [1, 2, 3], [f"{name} {i}" for i in range(3)])
        try:
            runs[name] = enrich(
                params(
                    source,
                    tmp_path / name / "out",
                    kind="classification",
                    options={"labels": LABELS},
                )
            )
        except BaseException as exc:  # reported below
            runs[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert all(isinstance(runs.get(n), RunSummary) for n in ("a", "b")), runs
    assert all(runs[n].enriched_rows == 3 for n in ("a", "b"))

    client = Mistral(api_key=API_KEY, server_url=emu.url)
    jobs = [client.batch.jobs.get(job_id=j) for n in ("a", "b") for j in runs[n].jobs]
    assert len(jobs) == 2
    first, second = sorted(jobs, key=lambda j: j.created_at)
    assert first.completed_at is not None and second.created_at >= first.completed_at

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        limit = prefect.read_global_concurrency_limit_by_name(f"quota-{tmp_path.name}")
    assert limit.limit == 4 and limit.active_slots == 0  # created, and every slot given back


def test_a_crash_between_publish_and_cache_update_costs_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistral: EmulatorProcess
) -> None:
    from prefect import task

    import flows.enrich as flow_module

    @task(name="update-cache")
    def crash(pending: str) -> str:
        raise RuntimeError("the worker died")  # stands for a process killed at this point

    source = write(tmp_path / "in.parquet", list(range(60)), [f"line {i}" for i in range(60)])
    monkeypatch.setattr(flow_module, "update_cache", crash)
    with pytest.raises(RuntimeError, match="the worker died"):
        enrich(params(source, tmp_path / "out"))
    table = published(tmp_path / "out")
    assert table.height == 60  # published before the crash
    pending = list((tmp_path / "_enrich" / "_cache").rglob("_pending/*.parquet"))
    assert len(pending) == 1  # the additions wait in the cache's pending area

    monkeypatch.undo()
    use(monkeypatch, mistral)
    before = counts(mistral)
    recovered = enrich(params(source, tmp_path / "out"))
    assert counts(mistral) == before and recovered.cache_hit_rows == 60
    assert not list((tmp_path / "_enrich" / "_cache").rglob("_pending/*.parquet"))
    assert published(tmp_path / "out").drop("result_source").equals(table.drop("result_source"))


def test_cache_on_s3_and_the_maintenance_commands(
    tmp_path: Path, mistral: EmulatorProcess, s3: SeaweedS3
) -> None:
    base = f"s3://{BUCKET}/{tmp_path.name}"
    cache = f"{base}/_enrich/_cache"
    for day, count in (("d1", 40), ("d2", 70)):  # the second day appends 30 rows
        frame = pl.DataFrame(
            {"id": list(range(count)), "text": [f"s3 text {i}" for i in range(count)]}
        )
        with storage.open_write(f"{base}/input/{day}.parquet") as sink:
            frame.write_parquet(sink)
        summary = enrich(params(f"{base}/input/{day}.parquet", f"{base}/out", partition=day))
        assert summary.sent_texts == (40 if day == "d1" else 30)
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--cache", cache])
    assert info.exit_code == 0 and "2 files" in info.output and "70 entries" in info.output

    compacted = runner.invoke(app, ["cache", "compact", "--cache", cache])
    assert compacted.exit_code == 0, compacted.output
    assert "2 files, 70 entries -> 70 unique entries" in compacted.output
    assert "1 files" in runner.invoke(app, ["cache", "info", "--cache", cache]).output
    again = enrich(params(f"{base}/input/d2.parquet", f"{base}/out", partition="d2"))
    assert again.jobs == {} and again.cache_hit_rows == 70  # the compacted file answers

    refused = runner.invoke(app, ["cache", "purge", "--cache", cache])
    assert refused.exit_code != 0 and "--all" in refused.output
    kept = runner.invoke(app, ["cache", "purge", "--cache", cache, "--kind", "moderation"])
    assert "Removed 0 cache folder(s)" in kept.output
    purged = runner.invoke(app, ["cache", "purge", "--cache", cache, "--model", "mistral-embed"])
    assert "Removed 1 cache folder(s), 70 entries" in purged.output
    assert (
        enrich(params(f"{base}/input/d2.parquet", f"{base}/out", partition="d2")).sent_texts == 70
    )


def test_a_retry_that_would_break_the_budget_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_emulator: StartEmulator
) -> None:
    plan_ = {"seed": 1, "lines": {"rate": 0.5, "status": 503, "times": -1, "limit": 10}}
    emu = use(monkeypatch, start_emulator(plan_))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"mistral-small-*": {"input": 100.0}}}))
    source = write(tmp_path / "in.parquet", list(range(60)), [f"mood {i}" for i in range(60)])
    options = {"kind": "classification", "options": {"labels": LABELS}, "price_table": str(prices)}
    dry = enrich(params(source, tmp_path / "out", dry_run=True, **options))
    assert dry.estimated is not None and dry.estimated.cost_usd is not None
    budget = dry.estimated.cost_usd * 1.05  # the first pass fits; a retry of 10 texts does not

    from tasks.publish import ValidationFailedError

    with pytest.raises(ValidationFailedError):  # 10 of 60 rows rejected: over the 1% allowed
        enrich(params(source, tmp_path / "out", max_cost_usd=budget, **options))
    client = Mistral(api_key=API_KEY, server_url=emu.url)
    assert len(client.batch.jobs.list(page_size=100).data or []) == 1  # no follow-up job
