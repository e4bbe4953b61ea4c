"""Column descriptions through the real flow: in the published data file's and the rejected rows'
Parquet field metadata, in the manifest, and harmless to the analysts' readers."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from schemas.tables import LINEAGE, REJECTED_COLUMNS
from tests.flows.conftest import flow_params as params

PARTITION = "2026-11-22"
SCHEMA = {
    "type": "object",
    "properties": {
        "product": {"type": "string", "description": "the product the customer ordered"},
        "quantity": {"type": "integer"},
    },
}


def described(path: Path) -> dict[str, str | None]:
    return {
        field.name: (field.metadata or {}).get(b"description", b"").decode() or None
        for field in pq.read_schema(path)
    }


def test_published_files_and_manifest_describe_every_column(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    texts: list[str | None] = [f"order {i}: {i % 5 + 1} boxes of tea" for i in range(40)]
    texts[3] = None  # a rejected row, so the rejected-rows file is written too
    source = tmp_path / "in.parquet"
    team = pa.field("team", pa.string(), metadata={b"description": b"the team that owns the row"})
    inputs = pa.table(
        {"id": list(range(40)), "text": texts, "team": [f"t{i % 3}" for i in range(40)]},
        schema=pa.schema([("id", pa.int64()), ("text", pa.string()), team]),
    )
    pq.write_table(inputs, source)
    options = {"json_schema": SCHEMA}
    summary = enrich(
        params(source, tmp_path / "out", kind="extract", options=options, max_rejected_fraction=0.1)
    )
    assert summary.enriched_rows == 39 and summary.rejected_rows == 1

    data = tmp_path / "out" / f"partition={PARTITION}" / "part-0.parquet"
    copied = f"input column, copied from {source}"
    descriptions = described(data)
    lineage = {c.name: c.description for c in LINEAGE if c.name in descriptions}
    assert descriptions == {
        "id": copied,
        "text": copied,
        "team": "the team that owns the row",
        "product": "the product the customer ordered",
        "quantity": "property quantity of options.json_schema, as the model extracted it; null "
        "when absent or not of its type",
        **lineage,
    }
    assert set(lineage) >= {"enriched_at", "model", "batch_job_id", "result_source"}
    assert pq.read_schema(data).metadata[b"enrich.publish"]  # the publish record is still there

    work = tmp_path / "_enrich" / "out"
    manifest = json.loads(
        (work / "published" / f"partition={PARTITION}" / "_manifest.json").read_text()
    )
    assert {e["name"]: e["description"] for e in manifest["schema"]} == descriptions
    assert {e["name"]: e["type"] for e in manifest["schema"]}["quantity"] == "int64"

    rejected = work / manifest["files"]["rejected"].removeprefix(f"{work}/")
    assert described(rejected) == {
        "id": copied,
        "text": copied,
        "team": "the team that owns the row",
        **{c.name: c.description for c in REJECTED_COLUMNS},
    }

    # The analysts' readers take the described file as before.
    frame = pl.read_parquet(data)
    assert frame.height == 39 and frame.schema["quantity"] == pl.Int64
    assert pl.scan_parquet(tmp_path / "out").collect().height == 39
    rows = duckdb.sql(f"SELECT count(*), count(product) FROM read_parquet('{data}')").fetchall()
    assert rows == [(39, 39)]
