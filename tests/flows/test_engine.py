"""The Dask task runner: the same flow with its shard tasks on a LocalCluster of two worker
processes, against the local folder and against S3, must publish the thread pool's table."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import polars as pl
import pytest

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from schemas.refs import RunSummary
from tasks.edges import storage
from tests.flows.conftest import flow_params, write_dataset
from tests.seaweed import BUCKET, SeaweedS3

# What differs between two runs of the same input by design.
RUN_COLUMNS = ["enriched_at", "batch_job_id", "result_source"]


def _table(output: str, partition: str = "2026-11-22") -> pl.DataFrame:
    files = storage.list_files(f"{output}/partition={partition}", ".parquet")
    assert files, f"nothing published under {output}"
    return pl.concat([storage.read_parquet(uri) for uri in files]).drop(RUN_COLUMNS).sort("id")


def test_dask_local_cluster_publishes_the_thread_pool_table(
    tmp_path: Path, mistral: EmulatorProcess, s3: SeaweedS3
) -> None:
    texts = [f"row {i}: the meeting moved to room {i % 37}" for i in range(400)]
    local_input = write_dataset(tmp_path / "in.parquet", texts, team=[i % 3 for i in range(400)])
    bucket = f"s3://{BUCKET}/{tmp_path.name}"
    with storage.open_write(f"{bucket}/in.parquet") as sink:
        sink.write(local_input.read_bytes())

    def run(base: str, **overrides: object) -> tuple[str, RunSummary]:
        params = flow_params(
            f"{base}/in.parquet", f"{base}/out", shard_size=50, cache_mode="off", **overrides
        )
        return params.output, enrich(params)

    threads_out, threads = run(str(tmp_path))
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert threads.processes == [here] and threads.enriched_rows == 400
    expected = _table(threads_out)
    for base in (str(tmp_path / "dask"), bucket):  # the local folder, then S3
        if not base.startswith("s3://"):
            Path(base).mkdir()
            (Path(base) / "in.parquet").write_bytes(local_input.read_bytes())
        output, on_dask = run(base, task_runner="dask:2")
        # Eight shards written by the two worker processes, none by the flow's own process.
        assert len(on_dask.processes) == 2 and here not in on_dask.processes, on_dask.processes
        assert on_dask.enriched_rows == 400
        assert _table(output).equals(expected), base


def test_a_running_scheduler_by_its_address(
    tmp_path: Path, mistral: EmulatorProcess, s3: SeaweedS3
) -> None:
    """``task_runner=tcp://…``: a cluster the run did not start (here a LocalCluster of one
    worker process, as `dask scheduler` + `dask worker` would be), reached by address."""
    from distributed import Client, LocalCluster

    bucket = f"s3://{BUCKET}/{tmp_path.name}"
    local = write_dataset(tmp_path / "in.parquet", [f"shared cluster text {i}" for i in range(60)])
    with storage.open_write(f"{bucket}/in.parquet") as sink:
        sink.write(local.read_bytes())
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        params = flow_params(
            f"{bucket}/in.parquet", f"{bucket}/out", shard_size=20, task_runner=address
        )
        summary = enrich(params)
        with Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
    assert summary.enriched_rows == 60
    assert {int(p.rsplit(":", 1)[1]) for p in summary.processes} == worker_pids
    assert _table(params.output).height == 60


def test_a_shared_cluster_refuses_local_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot see this machine's folders"):
        flow_params(tmp_path / "in.parquet", tmp_path / "out", task_runner="tcp://10.0.0.5:8786")
    with pytest.raises(ValueError, match="must be 'threads', 'dask'"):
        flow_params(tmp_path / "in.parquet", tmp_path / "out", task_runner="spark")
    shared = flow_params(
        "s3://b/in", "s3://b/out", task_runner="tcp://10.0.0.5:8786", cache_mode="off"
    )
    assert shared.task_runner == "tcp://10.0.0.5:8786"
