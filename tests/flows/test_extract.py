"""The extract kind through the real flow: typed columns published, answers that are not JSON
objects rejected with the reason, answers of the wrong type stopped at the gate."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tasks.publish import ValidationFailedError
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import read_table, use, write_dataset
from tests.support import StartEmulator

PARTITION = "2026-11-22"
SCHEMA = {
    "type": "object",
    "properties": {
        "product": {"type": "string"},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 20},
        "price": {"type": "number"},
        "urgent": {"type": "boolean"},
        "channel": {"enum": ["email", "phone", "chat"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["product", "quantity", "channel"],
}
OPTIONS = {"json_schema": SCHEMA, "instructions": "Extract the order described by the text."}
TEXTS = [
    "Please send 3 boxes of green tea by Friday, it is urgent.",
    "I called about the 12 replacement filters I ordered last week.",
    "Chat: two chairs and one desk, no rush, around 240 euros.",
    "Email from the shop: 5 notebooks, blue, 4.50 each.",
]


def rows(n: int) -> list[str]:
    return [f"{TEXTS[i % len(TEXTS)]} (order {i})" for i in range(n)]


def test_extract_publishes_one_typed_column_per_property(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    source = write_dataset(tmp_path / "in.parquet", rows(40))
    summary = enrich(params(source, tmp_path / "out", kind="extract", options=OPTIONS))
    assert summary.enriched_rows == 40 and summary.rejected_rows == 0

    table = read_table(tmp_path / "out")
    expected = {
        "product": pl.String,
        "quantity": pl.Int64,
        "price": pl.Float64,
        "urgent": pl.Boolean,
        "channel": pl.String,
        "tags": pl.List(pl.String),
    }
    assert {name: table.schema[name] for name in expected} == expected
    assert not [c for c in table.columns if c.startswith("_")]  # gate-only columns stay out
    assert table["channel"].is_in(["email", "phone", "chat"]).all()
    assert table["quantity"].is_between(1, 20).all() and table["product"].is_not_null().all()

    again = enrich(params(source, tmp_path / "out", kind="extract", options=OPTIONS))
    assert again.jobs == {} and again.enriched_rows == 40  # the cache answers, nothing is paid


def test_answers_that_are_not_json_objects_are_rejected_with_the_reason(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_emulator: StartEmulator,
) -> None:
    use(
        monkeypatch,
        start_emulator({"seed": 3, "corrupt": {"rate": 0.25, "mode": "malformed_json"}}),
    )
    source = write_dataset(tmp_path / "in.parquet", rows(60))
    run = params(
        source, tmp_path / "out", kind="extract", options=OPTIONS, max_rejected_fraction=0.6
    )
    summary = enrich(run)
    assert summary.rejected_rows > 0 and summary.enriched_rows + summary.rejected_rows == 60

    rejected = read_table(tmp_path / "_enrich" / "out" / "rejected")
    assert rejected.height == summary.rejected_rows
    assert set(rejected["reject_reason"]) == {"invalid_answer"}
    assert rejected["reject_message"].str.contains("not valid JSON|cut off").all()
    assert rejected["attempts"].to_list() == [1] * rejected.height  # terminal: never re-sent
    assert read_table(tmp_path / "out").height == summary.enriched_rows


def test_answers_of_the_wrong_type_stop_at_the_gate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_emulator: StartEmulator,
) -> None:
    use(monkeypatch, start_emulator({"seed": 3, "corrupt": {"rate": 0.3, "mode": "wrong_type"}}))
    source = write_dataset(tmp_path / "in.parquet", rows(40))
    with pytest.raises(ValidationFailedError) as refused:
        enrich(params(source, tmp_path / "out", kind="extract", options=OPTIONS))
    message = str(refused.value)
    assert "type_errors" in message and "e.g. ids" in message, message
    assert not (tmp_path / "out").exists() or read_table(tmp_path / "out").height == 0
