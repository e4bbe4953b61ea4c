"""Whole-or-nothing writes (local and a real S3 server) and the partition lease."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.params import EnrichParams
from tasks import lease
from tasks.core.layout import Layout
from tasks.edges import storage
from tests.seaweed import BUCKET, SeaweedS3


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedS3) -> Iterator[str]:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    yield f"s3://{BUCKET}/trust-{uuid.uuid4().hex[:8]}"


class WriterDiedError(RuntimeError):
    pass


def _fail_midway(uri: str) -> None:
    with pytest.raises(WriterDiedError), storage.open_write(uri) as sink:
        sink.write(b"x" * (6 * 1024 * 1024))  # past s3fs's 5 MiB block: a multipart upload
        sink.write(b"y" * 1024)
        raise WriterDiedError


def test_a_failed_local_write_leaves_neither_object_nor_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.bin"
    _fail_midway(str(target))
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == []


def test_a_failed_local_write_keeps_the_previous_object(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    storage.write_json(str(target), {"v": 1})
    _fail_midway(str(target))
    assert storage.read_json(str(target)) == {"v": 1}


def test_a_failed_s3_write_uploads_nothing(s3: str) -> None:
    """fsspec completes a multipart upload on the way out of ``with`` even on an exception
    (fsspec/s3fs#154): without the abort, a truncated object would be left at the key."""
    uri = f"{s3}/partial.bin"
    _fail_midway(uri)
    assert not storage.exists(uri)
    storage.write_parquet(pa.table({"a": [1, 2, 3]}), f"{s3}/whole.parquet")
    assert storage.parquet_rows(f"{s3}/whole.parquet") == 3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_exclusive_create_refuses_an_existing_object(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = request.getfixturevalue("s3") if where == "s3" else str(tmp_path)
    uri = f"{base}/lease.json"
    storage.write_json(uri, {"owner": "first"}, exclusive=True)
    with pytest.raises(FileExistsError):
        storage.write_json(uri, {"owner": "second"}, exclusive=True)
    assert storage.read_json(uri) == {"owner": "first"}


def test_moving_a_missing_source_says_file_not_found(tmp_path: Path) -> None:
    """A lost race (another run promoted the file first) must read as such, not as a
    cross-filesystem error."""
    with pytest.raises(FileNotFoundError):
        storage.move_into_place(str(tmp_path / "gone.parquet"), str(tmp_path / "there.parquet"))


def test_parquet_rows_tells_a_truncated_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.parquet")
    storage.write_parquet(pa.table({"a": list(range(100))}), uri)
    assert storage.parquet_rows(uri) == 100
    data = Path(uri).read_bytes()
    Path(uri).write_bytes(data[: len(data) // 2])
    assert storage.parquet_rows(uri) is None
    assert storage.parquet_rows(str(tmp_path / "missing.parquet")) is None


# The lease ------------------------------------------------------------------------------


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: object) -> None:
        self.lines.append(msg % args)

    warning = error = info


def test_a_second_run_is_refused_with_the_holders_name(tmp_path: Path) -> None:
    folder = str(tmp_path / "leases" / "partition=p")
    first = lease.acquire(folder, "run-one", _Log())  # type: ignore[arg-type]
    try:
        with pytest.raises(lease.LeaseHeldError) as refused:
            lease.acquire(folder, "run-two", _Log())  # type: ignore[arg-type]
        message = str(refused.value)
        assert "flow run run-one" in message and f"pid {os.getpid()}" in message
        assert "lease_wait_seconds" in message
    finally:
        first.release()
    second = lease.acquire(folder, "run-two", _Log())  # type: ignore[arg-type]
    second.check()
    second.release()


def test_a_waiting_run_takes_the_lease_when_the_holder_releases(tmp_path: Path) -> None:
    folder = str(tmp_path / "l")
    first = lease.acquire(folder, "a", _Log())  # type: ignore[arg-type]
    timer = threading.Timer(0.5, first.release)
    timer.start()
    second = lease.acquire(folder, "b", _Log(), wait_seconds=30)  # type: ignore[arg-type]
    timer.join()
    assert second.generation == first.generation + 1
    second.release()


def test_a_killed_holder_on_this_host_frees_the_partition_at_once(tmp_path: Path) -> None:
    """A SIGKILLed run leaves its lease object behind; its dead pid frees it (no expiry wait)."""
    folder = str(tmp_path / "l")
    script = (
        "import os, signal, sys; from tasks import lease; "
        "lease.acquire(sys.argv[1], 'killed-run', __import__('logging').getLogger()); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, folder],
        cwd=Path(__file__).parents[2],
        timeout=60,
        check=False,
    )
    assert done.returncode == -9
    taken = lease.acquire(folder, "next", _Log())  # type: ignore[arg-type]
    assert taken.generation == 2
    assert taken.succeeded is not None and taken.succeeded["flow_run_id"] == "killed-run"
    taken.release()


def test_taking_over_from_a_killed_run_sweeps_its_half_written_job_records(
    tmp_path: Path,
) -> None:
    """A run SIGKILLed while one thread wrote a job record leaves a hidden temporary file in its
    own records folder, which no rerun (a new flow run) writes to; the run that takes its lease
    removes it, and leaves the records and another run's files alone."""
    params = EnrichParams(
        input=str(tmp_path / "in"), output=str(tmp_path / "out"), id_column="id", text_column="t"
    )
    layout = Layout.of(params)
    folder = layout.lease_folder("2026-12-01")
    dead, live = Path(layout.run_jobs("killed-run")), Path(layout.run_jobs("live-run"))
    script = (
        "import os, signal, sys; from pathlib import Path; from tasks import lease; "
        "lease.acquire(sys.argv[1], 'killed-run', __import__('logging').getLogger()); "
        "folder = Path(sys.argv[2]); folder.mkdir(parents=True); "
        "(folder / 'job-1.json').write_text('{}'); "
        "(folder / '.job-2.json.0123456789ab.enrich-tmp').write_bytes(b''); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, folder, str(dead)],
        cwd=Path(__file__).parents[2],
        timeout=60,
        check=False,
    )
    assert done.returncode == -9
    live.mkdir(parents=True)
    (live / ".job-3.json.0123456789ab.enrich-tmp").write_bytes(b"")
    taken = lease.acquire(folder, "next", _Log())  # type: ignore[arg-type]
    try:
        assert lease.sweep_after_takeover(taken, params) == 1
    finally:
        taken.release()
    assert sorted(p.name for p in dead.iterdir()) == ["job-1.json"]
    assert len(list(live.iterdir())) == 1
    released = lease.acquire(folder, "after", _Log())  # type: ignore[arg-type]
    assert released.succeeded is None  # a released lease is no takeover: nothing is swept
    released.release()


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(tmp_path: Path) -> None:
    folder = str(tmp_path / "l")
    now = [1000.0]
    first = lease.acquire(folder, "slow", _Log(), ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]
    first._halt_renewal()  # a paused holder: no renewal
    now[0] += 11
    second = lease.acquire(folder, "next", _Log(), clock=lambda: now[0])  # type: ignore[arg-type]
    first.record["expires_at"] = 1e12  # its clock: only the takeover tells it
    with pytest.raises(lease.LeaseLostError, match="taken over by flow run next"):
        first.check()
    second.release()


def test_of_runs_racing_for_a_free_partition_exactly_one_wins(tmp_path: Path) -> None:
    folder = str(tmp_path / "l")
    won: list[lease.Lease] = []
    refused: list[str] = []
    barrier = threading.Barrier(6)

    def race(name: str) -> None:
        barrier.wait()
        try:
            won.append(lease.acquire(folder, name, _Log()))  # type: ignore[arg-type]
        except lease.LeaseHeldError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and len(refused) == 5
    won[0].release()


def test_a_holder_whose_renewals_failed_stops_before_publishing(tmp_path: Path) -> None:
    held = lease.acquire(str(tmp_path / "l"), "run", _Log(), ttl=60)  # type: ignore[arg-type]
    held._halt_renewal()
    held.record["expires_at"] = 0.0  # renewals failed for a whole ttl
    with pytest.raises(lease.LeaseLostError, match="could not be renewed"):
        held.check()


def test_a_store_that_ignores_the_create_condition_cannot_make_two_holders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs "create" the same generation; the one whose record was overwritten sees a
    foreign owner and does not hold the lease."""
    folder = str(tmp_path / "l")
    real_write_json = storage.write_json

    def unconditional(uri: str, value: object, *, exclusive: bool = False) -> None:
        real_write_json(uri, value)

    monkeypatch.setattr(storage, "write_json", unconditional)
    first = lease.acquire(folder, "first", _Log())  # type: ignore[arg-type]
    first._halt_renewal()
    monkeypatch.setattr(storage, "exists", lambda uri: False)  # as if the release marker is absent
    free = (0, None, None)
    monkeypatch.setattr(lease, "_holder_if_live", lambda f, now: free)  # both see it free
    second = lease.acquire(folder, "second", _Log())  # type: ignore[arg-type]
    second._halt_renewal()
    with pytest.raises(lease.LeaseLostError):
        first.check()
    second.check()


def test_the_hooks_release_a_cancelled_runs_lease(tmp_path: Path) -> None:
    root = str(tmp_path / "leases")
    held = lease.acquire(f"{root}/partition=p", "cancelled-run", _Log())  # type: ignore[arg-type]
    held._halt_renewal()
    assert lease.release_for_run(root, "other-run") == []
    assert len(lease.release_for_run(root, "cancelled-run")) == 1
    lease.acquire(f"{root}/partition=p", "next", _Log()).release()  # type: ignore[arg-type]


def test_a_browser_link_opens_the_object(s3: str, tmp_path: Path) -> None:
    """The quarantine's Data Docs link: a presigned https URL for an object (a browser cannot
    open s3://), an absolute file:// URL for a local file (a relative one names a host)."""
    import httpx

    uri = f"{s3}/data_docs/index.html"
    storage.write_bytes(uri, b"<html>docs</html>")
    link = storage.browser_link(uri)
    assert link.startswith("http") and "Signature" in link
    assert httpx.get(link, timeout=30).content == b"<html>docs</html>"
    local = tmp_path / "docs" / "index.html"
    local.parent.mkdir()
    local.write_text("<html>docs</html>")
    assert storage.browser_link(str(local)) == f"file://{local}"
