"""Similarity search on small synthetic tables in the published layout: the top k against a
brute-force numpy reference, one row group read at a time (never a whole file), the vectors a
view of the Arrow buffer, and query vectors from the local cache (no service involved)."""

from __future__ import annotations

import json
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import enrich
from enrich.query import QueryCache
from enrich.search import Hits, Source, matrix, scan
from enrich.tables import open_parquet
from tasks.edges.mistral import MissingCredentialsError

DIM = 8
GROUP_ROWS = 7  # row groups of the files, as the publisher writes one per staged shard
FIRST, SECOND = "2026-11-22", "2026-11-23"


def vectors(seed: int, rows: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)


def write_table(
    root: Path, parts: dict[str, np.ndarray], manifest: dict[str, Any] | None = None
) -> str:
    """An embeddings table in the published layout (``partition=<v>/part-0.parquet``, small row
    groups) with a manifest per partition under the default work root; ids count on across
    partitions."""
    output = root / "vectors"
    start = 0
    for partition, values in parts.items():
        rows = len(values)
        ids = list(range(start, start + rows))
        start += rows
        flat = pa.array(values.reshape(-1), pa.float32())
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "text": [f"text {i}" for i in ids],
                "team": [f"team-{i % 3}" for i in ids],
                "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM),
                "model": ["mistral-embed"] * rows,
            }
        )
        folder = output / f"partition={partition}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet", row_group_size=GROUP_ROWS)
        record = {
            "kind": "embeddings",
            "model": "mistral-embed",
            "options": {"kind": "embeddings", "model": "mistral-embed"},
            "id_column": "id",
            "text_column": "text",
            "model_versions": {"mistral-embed": rows},
            "counts": {"published_rows": rows, "rejected_rows": 0, "rejected_by_reason": {}},
        } | (manifest or {})
        published = root / "_enrich" / "vectors" / "published" / f"partition={partition}"
        published.mkdir(parents=True)
        (published / "_manifest.json").write_text(json.dumps(record))
    return str(output)


def brute_force(parts: dict[str, np.ndarray], query: np.ndarray) -> pl.DataFrame:
    """Every row's cosine with ``query`` in float64, best first."""
    every = np.concatenate(list(parts.values())).astype(np.float64)
    scores = every @ query / np.linalg.norm(every, axis=1) / np.linalg.norm(query)
    partitions = [p for p, values in parts.items() for _ in range(len(values))]
    frame = pl.DataFrame({"id": range(len(every)), "score": scores, "partition": partitions})
    return frame.sort("score", descending=True)


class RowGroupSpy:
    """A ParquetFile that records every read of a row group (whole, or in batches) and refuses
    any read of several row groups or of the whole file."""

    def __init__(self, file: pq.ParquetFile, reads: list[tuple[int, tuple[str, ...]]]) -> None:
        self._file = file
        self._reads = reads

    def read_row_group(self, group: int, columns: list[str] | None = None) -> pa.Table:
        assert columns is not None, "a row group is read with its columns named"
        self._reads.append((group, tuple(columns)))
        return self._file.read_row_group(group, columns=columns)

    def iter_batches(
        self, batch_size: int, row_groups: list[int], columns: list[str]
    ) -> Iterator[pa.RecordBatch]:
        assert len(row_groups) == 1, f"batches of {row_groups}: one row group at a time"
        self._reads.append((row_groups[0], tuple(columns)))
        for batch in self._file.iter_batches(batch_size, row_groups, columns):
            assert batch.num_rows <= GROUP_ROWS
            yield batch

    def __getattr__(self, name: str) -> Any:
        if name in {"read", "read_row_groups", "scan_contents"}:
            raise AssertionError(f"ParquetFile.{name}: more than one row group at a time")
        return getattr(self._file, name)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, tuple[str, ...]]]:
    found: list[tuple[int, tuple[str, ...]]] = []
    monkeypatch.setattr(
        "enrich.search.open_parquet", lambda uri: RowGroupSpy(open_parquet(uri), found)
    )
    return found


PARTS = {FIRST: vectors(1, 30), SECOND: vectors(2, 25)}  # 5 + 4 row groups


@pytest.mark.parametrize("k", [1, 3, 10, 55, 80])
def test_top_k_by_id_is_the_brute_force_top_k(tmp_path: Path, k: int) -> None:
    table = write_table(tmp_path, PARTS)
    found = enrich.similar(table, id=40, k=k)
    reference = brute_force(PARTS, np.concatenate(list(PARTS.values()))[40]).head(k)
    assert found.height == min(k, 55)
    assert found["id"].to_list() == reference["id"].to_list()
    assert found["partition"].to_list() == reference["partition"].to_list()
    np.testing.assert_allclose(found["score"], reference["score"], atol=1e-6)
    assert found["id"][0] == 40 and found["score"][0] == pytest.approx(1.0, abs=1e-6)


def test_the_scan_reads_one_row_group_at_a_time_and_columns_for_the_winners_only(
    tmp_path: Path, reads: list[tuple[int, tuple[str, ...]]]
) -> None:
    table = write_table(tmp_path, PARTS)
    query = vectors(3, 1)[0]
    cache = tmp_path / "cache"
    QueryCache(cache).put(
        QueryCache.key("mistral-embed", {}, "q"),
        {"answered_by": "mistral-embed", "vector": query.tolist()},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENRICH_QUERY_CACHE", str(cache))
        found = enrich.similar(table, text="q", k=4, where="team <> 'team-0'", columns=["text"])

    scan = [r for r in reads if "embedding" in r[1]]
    assert [group for group, _ in scan] == [0, 1, 2, 3, 4, 0, 1, 2, 3]  # each group once
    assert {columns for _, columns in scan} == {("id", "embedding", "team")}
    fetched = [r for r in reads if "embedding" not in r[1]]
    assert {columns for _, columns in fetched} == {("text",)}
    assert len(fetched) <= 4  # at most one read per row group holding a winner

    reference = brute_force(PARTS, query).filter(pl.col("id") % 3 != 0).head(4)
    assert found["id"].to_list() == reference["id"].to_list()
    assert found["text"].to_list() == [f"text {i}" for i in reference["id"]]


def test_where_sees_partition_and_nulls_do_not_match(tmp_path: Path) -> None:
    table = write_table(tmp_path, PARTS)
    found = enrich.similar(table, id=3, k=100, where=f"partition = '{SECOND}' OR NULL")
    assert found.height == 25 and set(found["partition"]) == {SECOND}
    only = enrich.similar(table, id=3, k=100, partitions=[FIRST])
    assert only.height == 30 and only["id"][0] == 3


def test_vectors_are_a_view_of_the_arrow_buffer() -> None:
    values = vectors(4, 10)
    flat = pa.array(values.reshape(-1), pa.float32())
    column = pa.chunked_array([pa.FixedSizeListArray.from_arrays(flat, DIM).slice(3, 5)])
    found, valid = matrix(column)
    assert not found.flags.owndata and found.dtype == np.float32
    np.testing.assert_array_equal(found, values[3:8])
    assert valid.all()


def test_null_and_zero_vectors_are_never_hits(tmp_path: Path) -> None:
    values = vectors(5, 6)
    values[2] = 0.0  # no direction
    flat = pa.array(values.reshape(-1), pa.float32())
    null_last = pa.array([False] * 5 + [True])
    column = pa.FixedSizeListArray.from_arrays(flat, DIM, mask=null_last)
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"id": range(6), "embedding": column}), path, row_group_size=4)
    source = Source("p", pq.ParquetFile(path))
    hits = scan([source], values[0], 10, ids="id", vector="embedding")
    assert hits.ids.take(pa.array(hits.ranked())).to_pylist()[0] == 0
    assert sorted(hits.ids.to_pylist()) == [0, 1, 3, 4]


def test_running_top_k_keeps_the_best_across_groups() -> None:
    rng = np.random.default_rng(6)
    hits = Hits.empty(5, pa.int64())
    every = []
    for group in range(20):
        scores = rng.random(13).astype(np.float32)
        hits.offer(scores, np.arange(13), pa.array(range(group * 13, group * 13 + 13)), 0, group)
        every.append(scores)
    best = np.argsort(-np.concatenate(every))[:5]
    assert hits.ids.take(pa.array(hits.ranked())).to_pylist() == best.tolist()


def test_a_cached_query_needs_no_service_unless_another_version_answered_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the pipeline's cache, the query cache counts only answers of the table's version:
    a vector of another version is asked for again (here, with no key, that fails)."""
    table = write_table(tmp_path, PARTS, {"options": {"output_dimension": DIM}})
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    monkeypatch.delenv("MISTRAL_SERVER_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no block lookup: no Prefect here
    monkeypatch.setenv("ENRICH_QUERY_CACHE", str(tmp_path / "cache"))
    composed = unicodedata.normalize("NFC", "café")
    cached = QueryCache(tmp_path / "cache")
    key = QueryCache.key("mistral-embed", {"output_dimension": DIM}, composed)
    cached.put(key, {"answered_by": "mistral-embed", "vector": PARTS[FIRST][5].tolist()})
    decomposed = unicodedata.normalize("NFD", "café")
    with warnings.catch_warnings():
        warnings.simplefilter("error", enrich.ModelVersionWarning)
        found = enrich.similar(table, text=decomposed, k=1)
    assert found["id"].to_list() == [5]
    with pytest.raises(MissingCredentialsError, match="MISTRAL_API_KEY is not set"):
        enrich.similar(table, text="not cached", k=1)
    cached.put(key, {"answered_by": "mistral-embed-2312", "vector": PARTS[FIRST][5].tolist()})
    with pytest.raises(MissingCredentialsError, match="MISTRAL_API_KEY is not set"):
        enrich.similar(table, text=decomposed, k=1)


def test_an_older_manifest_without_id_column_asks_for_it(tmp_path: Path) -> None:
    table = write_table(tmp_path, PARTS, {"id_column": None})
    with pytest.raises(enrich.TableMetadataError, match="give it with `id_column="):
        enrich.similar(table, id=1)
    assert enrich.similar(table, id=1, k=1, id_column="id")["id"].to_list() == [1]


def test_partitions_of_different_models_are_refused(tmp_path: Path) -> None:
    table = write_table(tmp_path, PARTS)
    manifest = Path(tmp_path, "_enrich/vectors/published", f"partition={SECOND}", "_manifest.json")
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"model": "codestral-embed"}))
    with pytest.raises(enrich.TableMetadataError, match="disagree on model"):
        enrich.similar(table, text="anything", k=1)


def test_vectors_written_as_plain_lists_are_read_too() -> None:
    values = vectors(7, 5)
    column = pa.chunked_array([pa.array(values.tolist(), pa.list_(pa.float32()))])
    found, valid = matrix(column)
    np.testing.assert_array_equal(found, values)
    assert valid.all()


def test_a_column_an_older_partition_lacks_is_null_there(tmp_path: Path) -> None:
    table = write_table(tmp_path, PARTS)
    older = Path(table, f"partition={FIRST}", "part-0.parquet")
    pq.write_table(pq.read_table(older).drop_columns(["team"]), older, row_group_size=GROUP_ROWS)
    found = enrich.similar(table, id=0, k=55, columns=["team", "text"])
    by_partition = found.group_by("partition").agg(pl.col("team").null_count()).sort("partition")
    assert by_partition.rows() == [(FIRST, 30), (SECOND, 0)]
    assert found.filter(pl.col("id") == 40)["text"].to_list() == ["text 40"]


def test_a_column_an_older_partition_lacks_reads_as_null(tmp_path: Path) -> None:
    """A condition or a shown column that only newer partitions have (``model_version`` next to
    partitions published before it existed) does not fail: the older rows hold nulls."""
    table = write_table(tmp_path, PARTS)
    newer = Path(table, f"partition={SECOND}", "part-0.parquet")
    rows = pq.read_table(newer)
    versions = pa.array(["mistral-embed"] * rows.num_rows)
    pq.write_table(rows.append_column("model_version", versions), newer, row_group_size=7)
    found = enrich.similar(
        table, id=1, k=50, where="model_version = 'mistral-embed'", columns=["model_version"]
    )
    assert set(found["partition"]) == {SECOND}  # the older rows' null does not match
    shown = enrich.similar(table, id=1, k=3, columns=["partition", "id", "model_version"])
    assert shown.columns == ["id", "score", "partition", "model_version"]
    assert shown["model_version"][0] is None  # row 1 is in the older partition


def published_table(root: Path, name: str, kind: str, columns: dict[str, Any]) -> str:
    """A one-partition table of ``kind`` whose manifest records its input columns."""
    folder = root / name / f"partition={FIRST}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table(columns), folder / "part-0.parquet")
    record = {
        "kind": kind,
        "model": "m",
        "options": {"kind": kind, "model": "m"},
        "id_column": "id",
        "input_columns": ["category_id", "id", "text"],
        "counts": {"published_rows": 2, "rejected_rows": 0, "rejected_by_reason": {}},
    }
    manifest = root / "_enrich" / name / "published" / f"partition={FIRST}"
    manifest.mkdir(parents=True)
    (manifest / "_manifest.json").write_text(json.dumps(record))
    return str(root / name)


def test_read_takes_the_input_columns_the_manifests_record(tmp_path: Path) -> None:
    """An input column that looks like a result (``category_id`` beside moderation's
    ``category_<name>``) stays an input column, once, unprefixed."""
    inputs = {"category_id": [7, 8], "id": [1, 2], "text": ["a", "b"]}
    flat = pa.array(np.ones(2 * DIM, np.float32))
    vectors_of = pa.FixedSizeListArray.from_arrays(flat, DIM)
    tables = {
        "embeddings": published_table(
            tmp_path, "e", "embeddings", inputs | {"embedding": vectors_of, "model": ["m"] * 2}
        ),
        "moderation": published_table(
            tmp_path,
            "m",
            "moderation",
            inputs | {"flagged": [True, False], "category_hate": [True, False], "model": ["m"] * 2},
        ),
    }
    view = enrich.read(tables).collect()
    assert view.columns[:3] == ["category_id", "id", "text"]
    assert {"embedding", "flagged", "category_hate", "embeddings_model", "moderation_model"} <= set(
        view.columns
    )
    assert view.height == 2 and "moderation_category_id" not in view.columns
