"""Bad inputs are answered by a clear error (or a rejection) before any job exists."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from mistralai.client import Mistral

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tasks.core.inputs import InputError
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import read_table, write_dataset
from tests.support import API_KEY


def job_count(emu: EmulatorProcess) -> int:
    return Mistral(api_key=API_KEY, server_url=emu.url).batch.jobs.list(page_size=1).total


def refused(emu: EmulatorProcess, source: Path | str, tmp_path: Path, **overrides: object) -> str:
    before = job_count(emu)
    with pytest.raises(InputError) as error:
        enrich(params(source, tmp_path / "out", **overrides))
    assert job_count(emu) == before  # nothing was submitted
    return str(error.value)


def test_missing_file(tmp_path: Path, mistral: EmulatorProcess) -> None:
    message = refused(mistral, tmp_path / "nope.parquet", tmp_path)
    assert "nope.parquet" in message and "does not exist" in message


def test_missing_glob_match(tmp_path: Path, mistral: EmulatorProcess) -> None:
    message = refused(mistral, tmp_path / "*.parquet", tmp_path)
    assert "no file matches" in message


def test_missing_column_lists_the_available_ones(tmp_path: Path, mistral: EmulatorProcess) -> None:
    source = write_dataset(tmp_path / "in.parquet", ["a"], lang=["en"])
    message = refused(mistral, source, tmp_path, text_column="body")
    assert "'body'" in message and "available columns: id, text, lang" in message


def test_duplicate_ids_give_count_and_examples(tmp_path: Path, mistral: EmulatorProcess) -> None:
    source = tmp_path / "dup.parquet"
    pl.DataFrame({"id": [1, 2, 2, 3, 3, 3, 4], "text": list("abcdefg")}).write_parquet(source)
    message = refused(mistral, source, tmp_path)
    assert "2 duplicated id(s)" in message and "e.g. 2, 3" in message


def test_null_ids(tmp_path: Path, mistral: EmulatorProcess) -> None:
    source = tmp_path / "null-ids.parquet"
    pl.DataFrame({"id": [1, None, None], "text": ["a", "b", "c"]}).write_parquet(source)
    assert "2 null value(s)" in refused(mistral, source, tmp_path)


def test_wrong_text_type(tmp_path: Path, mistral: EmulatorProcess) -> None:
    source = tmp_path / "numbers.parquet"
    pl.DataFrame({"id": [1, 2], "text": [1.5, 2.5]}).write_parquet(source)
    message = refused(mistral, source, tmp_path)
    assert "has type double" in message and "needs a string column" in message
    chat = refused(
        mistral, write_dataset(tmp_path / "s.parquet", ["hi"]), tmp_path, kind="chat-moderation"
    )
    assert "list of {role: string, content: string}" in chat


def test_empty_dataset(tmp_path: Path, mistral: EmulatorProcess) -> None:
    source = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"id": pl.Int64, "text": pl.String}).write_parquet(source)
    assert "has no rows" in refused(mistral, source, tmp_path)


def test_only_null_texts_are_rejected_without_a_job(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    source = write_dataset(tmp_path / "in.parquet", [None, "", " "])
    before = job_count(mistral)
    # Allowed here: with every row rejected the gate would otherwise refuse the run.
    summary = enrich(params(source, tmp_path / "out", max_rejected_fraction=1.0))
    assert job_count(mistral) == before
    assert summary.rejected_by_reason == {"null_text": 1, "empty_text": 2}
    assert read_table(tmp_path / "_enrich" / "out" / "rejected").height == 3
    assert read_table(tmp_path / "out").height == 0


def test_missing_api_key_is_refused_before_any_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    monkeypatch.delenv("MISTRAL_SERVER_URL", raising=False)
    from tasks.edges.mistral import MissingCredentialsError

    source = write_dataset(tmp_path / "in.parquet", ["hello"])
    with pytest.raises(MissingCredentialsError, match="MISTRAL_API_KEY is not set"):
        enrich(params(source, tmp_path / "out"))
    assert not (tmp_path / "_enrich").exists()  # refused before anything was read or written


def test_bad_parameters_are_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match=r"needs options\.labels"):
        params("x", "y", kind="classification")
    with pytest.raises(ValueError, match="classifier_model"):
        params("x", "y", kind="classifier")
