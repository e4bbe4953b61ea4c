"""The validation gate and atomic publishing: what analysts read, and what never reaches them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from schemas.params import EnrichParams
from schemas.refs import PlanRef, WriteRef
from tasks.edges import storage
from tasks.publish import ValidationFailedError
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import use, write_dataset
from tests.flows.test_enrich import TEXTS
from tests.seaweed import BUCKET, SeaweedS3
from tests.support import StartEmulator

PARTITION = "2026-11-22"


def readers(output: Path) -> dict[str, pl.DataFrame]:
    """The analysts' three ways in, exactly as the README shows them."""
    return {
        "polars": pl.scan_parquet(output).collect(),
        "pyarrow": pl.from_arrow(ds.dataset(output, partitioning="hive").to_table()),  # type: ignore[dict-item]
        "duckdb": duckdb.sql(
            f"SELECT * FROM read_parquet('{output}/*/*.parquet', hive_partitioning=true)"
        ).pl(),
    }


def test_readers_see_exactly_the_published_rows(tmp_path: Path, mistral: EmulatorProcess) -> None:
    texts: list[str | None] = [f"{TEXTS[i % 4]} {i}" for i in range(200)]
    texts[10] = None  # one rejected row (0.5%), kept out of the table
    source = write_dataset(tmp_path / "in.parquet", texts)
    summary = enrich(params(source, tmp_path / "out", shard_size=70))
    assert summary.enriched_rows == 199

    for name, table in readers(tmp_path / "out").items():
        assert table.height == 199, name
        assert sorted(table["id"].to_list()) == [i for i in range(200) if i != 10], name
        assert set(table["partition"].cast(pl.String)) == {PARTITION}, name
    # The table folder holds the data file and the marker, nothing else.
    assert sorted(p.name for p in (tmp_path / "out" / f"partition={PARTITION}").iterdir()) == [
        "_SUCCESS",
        "part-0.parquet",
    ]
    assert pl.read_parquet(tmp_path / "out" / f"partition={PARTITION}" / "part-0.parquet").schema[
        "embedding"
    ] == pl.Array(pl.Float32, 1024)

    manifest = json.loads(
        (
            tmp_path / "_enrich" / "out" / "published" / f"partition={PARTITION}" / "_manifest.json"
        ).read_text()
    )
    assert manifest["run_key"] == summary.run_key and manifest["model"] == "mistral-embed"
    assert manifest["counts"]["published_rows"] == 199
    assert manifest["counts"]["rejected_by_reason"] == {"null_text": 1}
    assert set(manifest["jobs"]) == set(summary.jobs)
    assert (
        manifest["validation"]["success"] is True
        and manifest["validation"]["expectations_evaluated"] >= 9
    )
    types = {entry["name"]: entry["type"] for entry in manifest["schema"]}
    assert types["embedding"] == "fixed_size_list<element: float>[1024]"
    assert manifest["input_fingerprint"] and manifest["run_id"]


def test_a_rerun_replaces_the_partition_whole(tmp_path: Path, mistral: EmulatorProcess) -> None:
    first = write_dataset(tmp_path / "a.parquet", [f"first {i}" for i in range(120)])
    enrich(params(first, tmp_path / "out", shard_size=40))
    second = tmp_path / "b.parquet"
    pl.DataFrame(
        {"id": list(range(1000, 1030)), "text": [f"second {i}" for i in range(30)]}
    ).write_parquet(second)
    enrich(params(second, tmp_path / "out"))
    for name, table in readers(tmp_path / "out").items():
        assert sorted(table["id"].to_list()) == list(range(1000, 1030)), name


@pytest.mark.parametrize(
    ("mode", "kind", "options", "expected"),
    [
        (
            "wrong_dimension",
            "embeddings",
            {},
            "whose embedding_length is not dimension = ",
        ),
        (
            "out_of_range",
            "moderation",
            {},
            "whose score_max is outside [0, 1]",
        ),
        (
            "unknown_label",
            "classification",
            {"labels": ["positive", "negative", "neutral"]},
            "whose label is outside the allowed values",
        ),
        (
            "drop",
            "classification",
            {"labels": ["positive", "negative", "neutral"]},
            "of rows rejected, more than max_rejected_fraction = 0",
        ),
    ],
)
def test_a_wrong_batch_stops_at_the_gate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_emulator: StartEmulator,
    mistral: EmulatorProcess,
    mode: str,
    kind: str,
    options: dict[str, object],
    expected: str,
) -> None:
    source = write_dataset(tmp_path / "in.parquet", [f"{TEXTS[i % 4]} {i}" for i in range(60)])
    output = tmp_path / "out"
    enrich(params(source, output, kind=kind, options=options))  # a good run first, by a healthy API
    before = readers(output)["polars"].sort("id")

    use(monkeypatch, start_emulator({"seed": 5, "corrupt": {"rate": 0.3, "mode": mode}}))
    with pytest.raises(ValidationFailedError) as refused:  # refresh: send again, skip the cache
        enrich(params(source, output, kind=kind, options=options, cache_mode="refresh"))
    message = str(refused.value)
    assert expected in message and "e.g. ids" in message, message
    assert "nothing was published and the previous partition is unchanged" in message

    after = readers(output)["polars"].sort("id")
    assert after.equals(before)  # analysts still read yesterday's table, untouched
    cached = list((tmp_path / "_enrich" / "_cache").rglob("*.parquet"))
    assert len(cached) == 1  # the first run's results; the refused ones were not cached
    quarantined = list((tmp_path / "_enrich" / "out" / "quarantine").iterdir())
    assert len(quarantined) == 1 and str(quarantined[0]) in message
    folder = quarantined[0]
    assert (folder / "data_docs" / "index.html").is_file()
    result = json.loads((folder / "validation.json").read_text())
    assert any(not suite["success"] for suite in result.values())
    assert list((folder / "ids").glob("*.parquet"))


PUBLISH_IN_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from schemas.params import EnrichParams
    from schemas.refs import GateRef, PlanRef, WriteRef
    from tasks.publish import publish_run

    spec = json.loads(sys.argv[1])
    plan = PlanRef.model_validate(spec["plan"])
    params = EnrichParams.model_validate(spec["params"])
    written = [WriteRef.model_validate(w) for w in spec["written"]]
    verdict = GateRef(success=True, evaluated=0, failures=[], result_uri="none")
    marker = spec["marker"]

    def slowly() -> None:  # the parent kills this process once the first part is written
        open(marker, "w").close()
        time.sleep(0.2)

    publish_run(plan, params, written, verdict, {}, "child", after_part=slowly)
    """
)


def kill_while_publishing(output: str, work: str, run_params: EnrichParams, tmp_path: Path) -> None:
    """Stage a bigger, different run and have a child process publish it; kill it mid-way."""
    before = read_published(output)
    staging = storage.join(work, "staging", "killed")
    written = []
    for shard in range(30):
        part = storage.join(staging, "enriched", f"part-{shard:05d}.parquet")
        frame = before.with_columns(pl.col("id") + 1000 * (shard + 1)).drop("partition")
        storage.write_parquet(frame.to_arrow(), part)
        written.append(
            WriteRef(shard=shard, enriched_uri=part, enriched_rows=frame.height, rejected_rows=0)
        )
    plan = PlanRef(
        run_key="killed",
        staging=staging,
        input_fingerprint="x",
        rows=1500,
        rows_to_send=1500,
        shards=30,
        input_columns=["id", "text"],
        partition=PARTITION,
    )
    marker = tmp_path / "publishing"
    spec = json.dumps(
        {
            "plan": plan.model_dump(),
            "params": run_params.model_dump(mode="json"),
            "written": [w.model_dump() for w in written],
            "marker": str(marker),
        }
    )
    child = subprocess.Popen([sys.executable, "-c", PUBLISH_IN_CHILD, spec])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, "publish never started"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    after = read_published(output)
    assert after.sort("id").equals(before.sort("id"))  # the previous partition, intact


def read_published(output: str) -> pl.DataFrame:
    if storage.is_remote(output):
        fs, path = storage.arrow_filesystem(output)
        table = ds.dataset(path, filesystem=fs, partitioning="hive").to_table()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame.sort("id")
    return pl.scan_parquet(output).collect().sort("id")


def test_a_process_killed_while_publishing_leaves_the_previous_partition(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    source = write_dataset(tmp_path / "in.parquet", [f"text {i}" for i in range(50)])
    run = params(source, tmp_path / "out")
    enrich(run)
    kill_while_publishing(str(tmp_path / "out"), run.work_root(), run, tmp_path)
    for name, table in readers(tmp_path / "out").items():  # each reader's own types: compare values
        assert sorted(table["id"].to_list()) == list(range(50)), name
    assert storage.exists(str(tmp_path / "out" / f"partition={PARTITION}" / "_SUCCESS"))


def test_atomic_publish_on_s3(tmp_path: Path, mistral: EmulatorProcess, s3: SeaweedS3) -> None:
    base = f"s3://{BUCKET}/{tmp_path.name}"
    source = write_dataset(tmp_path / "in.parquet", [f"text {i}" for i in range(50)])
    run = params(source, f"{base}/table")
    enrich(run)
    assert storage.list_files(f"{base}/table") == [
        f"{base}/table/partition={PARTITION}/_SUCCESS",
        f"{base}/table/partition={PARTITION}/part-0.parquet",
    ]  # staging, rejected rows and manifests live beside the table, not in it
    assert storage.exists(f"{base}/_enrich/table/published/partition={PARTITION}/_manifest.json")
    kill_while_publishing(f"{base}/table", run.work_root(), run, tmp_path)
    # Polars reads the same rows straight from S3 with the same AWS settings.
    options = {
        "aws_endpoint_url": s3.endpoint,
        "aws_access_key_id": s3.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3.env["AWS_SECRET_ACCESS_KEY"],
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    table = pl.scan_parquet(f"{base}/table/", storage_options=options).collect()
    assert sorted(table["id"].to_list()) == list(range(50))

    second = tmp_path / "b.parquet"
    pl.DataFrame(
        {"id": list(range(500, 520)), "text": [f"new {i}" for i in range(20)]}
    ).write_parquet(second)
    enrich(params(second, f"{base}/table"))
    assert read_published(f"{base}/table")["id"].to_list() == list(range(500, 520))
