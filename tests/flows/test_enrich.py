"""The enrich flow end to end, for every kind, on local disk and on a real S3 server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mistralai.client import Mistral

from emulator.catalog import DEFAULT_CLASSIFIER
from emulator.server import EmulatorProcess
from flows.enrich import enrich
from schemas.params import Kind, KindOptions
from tasks.edges import storage
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import read_table, write_dataset
from tests.seaweed import BUCKET, SeaweedS3
from tests.support import API_KEY

TEXTS = [
    "I love this product, excellent",
    "terrible service, the worst",
    "the meeting is on Tuesday",
    "you idiots, I will kill you",
]


def jobs_of_run(emu: EmulatorProcess, run_key: str) -> list[str]:
    client = Mistral(api_key=API_KEY, server_url=emu.url)
    return [
        j.id
        for j in client.batch.jobs.list(metadata={"enrich_run": run_key}, page_size=100).data or []
    ]


def test_embeddings_end_to_end(tmp_path: Path, mistral: EmulatorProcess) -> None:
    texts: list[str | None] = [f"{TEXTS[i % 4]} #{i % 60}" for i in range(250)]
    texts[7], texts[8] = None, "  "
    source = write_dataset(tmp_path / "in.parquet", texts, team=[f"t{i % 3}" for i in range(250)])
    summary = enrich(params(source, tmp_path / "out"))

    table = read_table(tmp_path / "out")
    assert table.height == 248 and summary.enriched_rows == 248
    assert table.schema["embedding"] == pl.Array(pl.Float32, 1024)
    assert table.columns == [
        "id",
        "text",
        "team",
        "embedding",
        "enriched_at",
        "model",
        "model_version",
        "batch_job_id",
        "result_source",
    ]
    assert set(table["model"]) == set(table["model_version"]) == {"mistral-embed"}
    # Each row has its own text's vector: compare with a direct call for a few rows.
    client = Mistral(api_key=API_KEY, server_url=mistral.url)
    sample = table.sort("id").head(3)
    direct = client.embeddings.create(model="mistral-embed", inputs=sample["text"].to_list())
    for row, answer in zip(sample["embedding"].to_list(), direct.data, strict=True):
        np.testing.assert_allclose(row, answer.embedding, atol=1e-7)
    # Identical texts were sent once and share a vector.
    same = table.filter(pl.col("text") == table["text"][0])
    assert same.height > 1 and same["embedding"].n_unique() == 1
    assert summary.requests == 3  # 60 distinct texts over 3 shards, packed into one line each

    rejected = read_table(tmp_path / "_enrich" / "out" / "rejected")
    assert sorted(rejected["reject_reason"]) == ["empty_text", "null_text"]
    assert summary.rejected_by_reason == {"null_text": 1, "empty_text": 1}
    assert len(jobs_of_run(mistral, summary.run_key)) == len(summary.jobs) == 3


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        (Kind.moderation, {}),
        (Kind.classification, {"labels": ["positive", "negative", "neutral"]}),
        (Kind.classifier, {"classifier_model": DEFAULT_CLASSIFIER}),
    ],
    ids=["moderation", "classification", "classifier"],
)
def test_text_kinds_end_to_end(
    tmp_path: Path, mistral: EmulatorProcess, kind: Kind, options: dict[str, object]
) -> None:
    source = write_dataset(tmp_path / "in.parquet", TEXTS * 30)
    enrich(params(source, tmp_path / "out", kind=kind, options=KindOptions.model_validate(options)))
    table = read_table(tmp_path / "out").sort("id")
    assert table.height == 120
    by_text = {row["text"]: row for row in table.head(4).iter_rows(named=True)}
    if kind is Kind.moderation:
        assert table.schema["flagged"] == pl.Boolean
        assert {"category_violence_and_threats", "score_jailbreaking"} <= set(table.columns)
        assert by_text[TEXTS[3]]["flagged"] and not by_text[TEXTS[2]]["flagged"]
        assert table.filter(pl.col("flagged")).height == 30
    elif kind is Kind.classification:
        assert set(table["label"]) == {"positive", "negative", "neutral"}
        assert by_text[TEXTS[0]]["label"] == "positive" and by_text[TEXTS[1]]["label"] == "negative"
    else:
        assert by_text[TEXTS[0]]["sentiment_label"] == "positive"
        assert by_text[TEXTS[3]]["toxicity_label"] == "toxic"
        scores = table.select(pl.col("^sentiment_score_.*$")).to_numpy()
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)


def test_chat_moderation_reads_a_messages_column(tmp_path: Path, mistral: EmulatorProcess) -> None:
    conversations = [
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "I will kill you"}],
        [{"role": "user", "content": "what time is it?"}],
        [],
    ]
    source = tmp_path / "chats.parquet"
    pl.DataFrame({"id": ["a", "b", "c"], "text": conversations}).write_parquet(source)
    summary = enrich(
        params(source, tmp_path / "out", kind=Kind.chat_moderation, max_rejected_fraction=0.5)
    )
    table = read_table(tmp_path / "out").sort("id")
    assert table["flagged"].to_list() == [True, False]
    assert summary.rejected_by_reason == {"empty_text": 1}


def test_s3_hive_input_and_output(tmp_path: Path, mistral: EmulatorProcess, s3: SeaweedS3) -> None:
    base = f"s3://{BUCKET}/{tmp_path.name}"
    for country, offset in (("fr", 0), ("de", 100)):
        frame = pl.DataFrame(
            {
                "id": [offset + i for i in range(40)],
                "text": [f"{TEXTS[i % 4]} {i}" for i in range(40)],
            }
        )
        with storage.open_write(f"{base}/input/country={country}/part-0.parquet") as sink:
            frame.write_parquet(sink)
    summary = enrich(params(f"{base}/input", f"{base}/output", shard_size=30))
    assert summary.enriched_rows == 80
    written = storage.list_files(f"{base}/output/partition=2026-11-22", ".parquet")
    assert written and all(uri.startswith("s3://") for uri in written)
    table = pl.concat([storage.read_parquet(uri) for uri in written])
    assert table.height == 80 and set(table["country"]) == {"fr", "de"}  # hive column kept
    assert storage.list_files(f"{base}/_enrich/output/staging", "job.json")  # on S3 too


def test_glob_input(tmp_path: Path, mistral: EmulatorProcess) -> None:
    write_dataset(tmp_path / "in" / "a.parquet", TEXTS)
    pl.DataFrame({"id": [10, 11], "text": ["x", "y"]}).write_parquet(tmp_path / "in" / "b.parquet")
    (tmp_path / "in" / "notes.txt").write_text("not parquet, not matched")
    summary = enrich(params(tmp_path / "in" / "*.parquet", tmp_path / "out"))
    assert summary.rows_in == 6 and summary.enriched_rows == 6


def test_rerun_replaces_the_partition_and_reattaches(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    # Without the cache (its own tests are in test_cache.py), a rerun finds its jobs by key.
    source = write_dataset(tmp_path / "in.parquet", [f"text {i}" for i in range(150)])
    first = enrich(params(source, tmp_path / "out", shard_size=50, cache_mode="off"))
    again = enrich(params(source, tmp_path / "out", shard_size=50, cache_mode="off"))
    assert again.reattached_jobs == len(again.jobs) == len(first.jobs)
    assert set(again.jobs) == set(first.jobs)  # the same jobs, not paid twice
    assert read_table(tmp_path / "out").height == 150


@pytest.mark.parametrize("key_from", ["environment", "block"])
def test_the_api_key_leaks_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistral: EmulatorProcess, key_from: str
) -> None:
    """Wherever the key comes from (MISTRAL_API_KEY, or only a MistralCredentials block), it is
    in no file, result, log, flow run, artifact or block document the API shows."""
    import asyncio
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    from tasks.edges.credentials import MistralCredentials

    block = f"leak-{uuid.uuid4().hex[:8]}"
    if key_from == "block":
        MistralCredentials(api_key=API_KEY, server_url=mistral.url).save(block)
        monkeypatch.setenv("MISTRAL_CREDENTIALS_BLOCK", block)
        monkeypatch.delenv("MISTRAL_API_KEY")
        monkeypatch.delenv("MISTRAL_SERVER_URL")
    source = write_dataset(tmp_path / "in.parquet", TEXTS)
    state = enrich(params(source, tmp_path / "out"), return_state=True)
    assert state.is_completed()
    secret = API_KEY.encode()
    for path in tmp_path.rglob("*"):  # the table, staging, job records, the cache
        if path.is_file():
            assert secret not in path.read_bytes(), path
    summary = state.result()
    assert API_KEY not in summary.model_dump_json()

    async def logs_and_run() -> tuple[list[str], str, str, dict[str, str]]:
        async with get_client() as client:
            run_id = state.state_details.flow_run_id
            flow_run = await client.read_flow_run(run_id)
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            artifacts = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            dumped = "".join(a.model_dump_json() for a in artifacts)
            # What the UI and the API show of every block: secret fields obfuscated.
            blocks = await client.read_block_documents(include_secrets=False)
            shown = {str(b.name): b.model_dump_json() for b in blocks}
            return [log.message for log in logs], flow_run.model_dump_json(), dumped, shown

    APILogHandler().flush()  # logs reach the API in batches: send what is queued first
    messages, flow_run, artifacts, blocks = asyncio.run(logs_and_run())
    assert messages and not any(API_KEY in m for m in messages)
    assert API_KEY not in flow_run
    assert "Plan" in artifacts and API_KEY not in artifacts  # the plan and summary artifacts
    assert not any(API_KEY in b for b in blocks.values())
    assert key_from == "environment" or '"api_key":"********"' in blocks[block]
