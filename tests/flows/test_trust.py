"""Edge cases of trust, through the enrich flow: a rerun whose only new text is over the
model's context, bad partition values, an output inside the input, a publish cut short."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import polars as pl
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tasks import publish
from tasks.core.inputs import InputError
from tasks.edges import storage
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import read_table, write_dataset

LONG = "token " * 9_000  # over mistral-embed's 8,192-token context, far under the byte bound


def jobs(emu: EmulatorProcess) -> int:
    return len(httpx.get(f"{emu.url}/emulator/jobs", timeout=10).json()["jobs"])


def test_a_rerun_whose_only_new_text_is_too_long_submits_nothing(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    """The shard has texts but no request: it takes no quota slot (a 0-slot request crashed),
    creates no job, and the estimate counts no token for the text it never sends."""
    run = params(
        tmp_path / "in.parquet", tmp_path / "out", max_rejected_fraction=0.5, shard_size=1000
    )
    write_dataset(tmp_path / "in.parquet", ["first", "second", "third"])
    enrich(run)
    before = jobs(mistral)
    write_dataset(tmp_path / "in.parquet", ["first", "second", "third", LONG])
    for _ in range(2):  # and again: it used to crash on every later run of the table
        summary = enrich(run)
        assert jobs(mistral) == before
        assert summary.estimated.prompt_tokens == 0 and summary.estimated.requests == 0
        assert summary.rejected_by_reason == {"text_too_long": 1}
        assert summary.enriched_rows == 3 and summary.cache_hit_rows == 3
    rejected = read_table(tmp_path / "_enrich" / "out" / "rejected")
    assert rejected["id"].to_list() == [3]


def test_a_huge_text_is_rejected_before_it_is_tokenized(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    run = params(tmp_path / "in.parquet", tmp_path / "out", max_rejected_fraction=0.5)
    write_dataset(tmp_path / "in.parquet", ["short", "x" * (3 << 20)])
    summary = enrich(run)
    assert summary.rejected_by_reason == {"text_too_long": 1}
    assert summary.estimated.texts == 1


@pytest.mark.parametrize("value", ["../escape", "a/b", "a\\b", "k=v", "..", "tab\there", "x" * 129])
def test_a_partition_value_that_is_not_a_plain_name_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError, match="partition"):
        params(tmp_path / "in.parquet", tmp_path / "out", partition=value)


@pytest.mark.parametrize(
    ("source", "output"),
    [("data", "data/enriched"), ("data", "data"), ("data/**/*.parquet", "data/sub/out")],
)
def test_an_output_the_input_would_read_back_is_refused_before_anything_is_written(
    tmp_path: Path, mistral: EmulatorProcess, source: str, output: str
) -> None:
    write_dataset(tmp_path / "data" / "sub" / "in.parquet", ["a", "b"])
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InputError, match="inside the input"):
        enrich(params(tmp_path / source, tmp_path / output))
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_publish_cut_short_is_completed_by_the_next_run(
    tmp_path: Path, mistral: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data moved into place, then the run died before the manifest: ``_SUCCESS`` is absent
    (so readers can tell), and the next run completes that publish from the data file's footer
    before its own."""
    source = write_dataset(tmp_path / "in.parquet", ["one", "two", None])
    run = params(source, tmp_path / "out", max_rejected_fraction=0.5)
    first = enrich(run)
    work = tmp_path / "_enrich" / "out"
    manifest_path = work / "published" / "partition=2026-11-22" / "_manifest.json"
    success = tmp_path / "out" / "partition=2026-11-22" / "_SUCCESS"
    first_run = json.loads(manifest_path.read_text())["run_id"]
    assert success.exists() and first.enriched_rows == 2

    class DiedError(RuntimeError):
        pass

    def die(name: str) -> None:
        if name == "publish":
            raise DiedError(name)

    monkeypatch.setattr(publish, "failpoint", die)
    write_dataset(source, ["one", "two", "three", None, ""])
    with pytest.raises(DiedError):
        enrich(run)
    data = tmp_path / "out" / "partition=2026-11-22" / "part-0.parquet"
    footer = publish.footer_record(str(data))
    assert footer is not None and footer["run_id"] != first_run
    assert json.loads(manifest_path.read_text())["run_id"] == first_run  # not yet rewritten
    assert not success.exists()
    assert pl.read_parquet(data).height == 3

    assert publish.repair_published(run, "2026-11-22") == footer["run_id"]
    manifest = json.loads(manifest_path.read_text())
    assert manifest["run_id"] == footer["run_id"] and success.exists()
    assert manifest["counts"]["published_rows"] == 3
    rejected = sorted((work / "rejected" / "partition=2026-11-22").iterdir())
    assert [str(p) for p in rejected] == [manifest["files"]["rejected"]]
    assert pl.read_parquet(rejected[0]).height == 2
    assert (
        json.loads(pq.read_metadata(data).metadata[publish.PUBLISH_KEY])["run_id"]
        == (manifest["run_id"])
    )
    assert storage.list_files(str(tmp_path / "out"), ".enrich-tmp") == []
