"""The storage edge takes its settings from the environment at each use: a test (or a worker whose
environment changed) points it elsewhere by setting the documented variables, nothing else."""

from __future__ import annotations

import pytest

from tasks.edges import storage


def test_the_s3_filesystem_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "one")
    first, path = storage.filesystem("s3://bucket/key")
    assert path == "bucket/key" and first.client_kwargs == {}
    assert storage.filesystem("s3://bucket/other")[0] is first  # built once per settings
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    second, _ = storage.filesystem("s3://bucket/key")
    assert second is not first
    assert second.endpoint_url == "http://127.0.0.1:2"
    assert second.client_kwargs == {"region_name": "eu-west-3"}


def test_paths_join_the_same_way_everywhere() -> None:
    assert storage.join("s3://b/out/", "x", "y.parquet") == "s3://b/out/x/y.parquet"
    assert storage.join("file:///tmp/out", "x") == "/tmp/out/x"
    assert not storage.is_remote("file:///tmp") and storage.is_remote("s3://b")
