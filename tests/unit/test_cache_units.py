"""Cache keys and files (lookup, fetch with row-group pruning, compaction), prices, quota."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from schemas.params import EnrichParams
from schemas.refs import CollectRef, ShardRef
from tasks import cache
from tasks.core import versions
from tasks.core.columns import BUCKET, TEXT_KEY, TEXT_KEY_2
from tasks.core.keys import text_keys
from tasks.core.pricing import PriceTable, PriceTableError
from tasks.core.quota import QuotaError, waves
from tasks.cost import load_prices


def params(**overrides: object) -> EnrichParams:
    base: dict[str, object] = {"input": "in", "id_column": "id", "text_column": "text"}
    return EnrichParams.model_validate(base | {"output": "/data/out"} | overrides)


def keys_of(texts: list[str], **overrides: object) -> pl.DataFrame:
    return pl.DataFrame({"text": texts}).select(*text_keys(params(**overrides)))


def test_keys_follow_the_normalised_text_and_every_result_option() -> None:
    same = keys_of(["caf\u00e9", "cafe\u0301"])  # NFC makes them one text
    assert same.n_unique() == 1
    assert keys_of(["Café"]).row(0) != keys_of(["café"]).row(0)  # case is kept
    assert keys_of(["café "]).row(0) != keys_of(["café"]).row(0)  # so is whitespace
    embed = keys_of(["a text"]).row(0)
    assert keys_of(["a text"]).row(0) == embed  # deterministic
    assert keys_of(["a text"], options={"model": "codestral-embed"}).row(0) != embed
    labels = {"kind": "classification", "options": {"labels": ["a", "b"]}}
    other = {"kind": "classification", "options": {"labels": ["a", "c"]}}
    assert keys_of(["a text"], **labels).row(0) != keys_of(["a text"], **other).row(0)
    first, second = embed
    assert first != second  # two independent halves of a 128-bit key


def test_default_cache_is_shared_beside_the_output() -> None:
    assert params().cache_root() == "/data/_enrich/_cache"
    assert params(output="s3://b/t/emb").cache_root() == "s3://b/t/_enrich/_cache"
    assert params(cache="s3://c/cache/").cache_root() == "s3://c/cache"
    folder = cache.folder(params(kind="classifier", options={"classifier_model": "ft:x:y"}))
    assert "/kind=classifier/model=ft%3Ax%3Ay/options=" in folder


def write_cache_file(
    path: Path, first: np.ndarray, stamp: int = 0, version: str | None = None
) -> pl.DataFrame:
    """A cache file of keys ``first``; without ``version``, as written before versions were
    recorded (no ``model_version`` column)."""
    frame = pl.DataFrame(
        {
            cache.KEY: first,
            cache.KEY_2: first * np.uint64(3),
            cache.TOKENS: np.full(first.size, 5, dtype=np.int64),
            "label": [f"label-{k % 7}" for k in first.tolist()],
            "batch_job_id": f"job-{stamp}",
            "enriched_at": datetime.fromtimestamp(stamp, UTC),
            **({cache.VERSION: version} if version is not None else {}),
        }
    ).sort(cache.KEY)
    pq.write_table(frame.to_arrow(), path, row_group_size=1_000)
    return frame


def test_lookup_and_fetch_read_only_what_they_need(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    location.mkdir()
    rng = np.random.default_rng(1)
    entries = np.unique(rng.integers(1, 2**63, 50_000, dtype=np.uint64))
    stored = write_cache_file(location / "run-a.parquet", entries)
    (location / "_pending").mkdir()
    (location / "_pending" / "other.parquet").write_bytes(b"not yet part of the cache")

    wanted_first = np.concatenate([entries[100:110], np.array([7, 9], dtype=np.uint64)])
    wanted = pl.DataFrame({TEXT_KEY: wanted_first, TEXT_KEY_2: wanted_first * np.uint64(3)})
    wanted = wanted.vstack(  # right first half, wrong second half: a miss, not a hit
        pl.DataFrame({TEXT_KEY: entries[200:201], TEXT_KEY_2: np.array([1], dtype=np.uint64)})
    )
    hits, files = cache.lookup(str(location), wanted.lazy())
    assert files == [str(location / "run-a.parquet")]
    assert sorted(hits[TEXT_KEY].to_list()) == sorted(entries[100:110].tolist())
    assert hits[cache.TOKENS].sum() == 50

    parquet = pq.ParquetFile(location / "run-a.parquet")
    groups = cache._row_groups_with(parquet, np.sort(hits[TEXT_KEY].to_numpy()))
    assert len(groups) == 1 < parquet.metadata.num_row_groups  # sorted file: one group read

    target = tmp_path / "cached"
    assert cache.fetch(files[0], 0, hits, 4, str(target)) == 10
    fetched = pl.read_parquet(target / "**/*.parquet", hive_partitioning=False)
    assert set(fetched[cache.KEY].to_list()) == set(entries[100:110].tolist())
    expected = stored.filter(pl.col(cache.KEY).is_in(entries[100:110].tolist()))
    assert dict(fetched.select(cache.KEY, "label").iter_rows()) == dict(
        expected.select(cache.KEY, "label").iter_rows()
    )
    for bucket_dir in target.iterdir():  # bucketed like the run's rows
        bucket = int(bucket_dir.name.split("=")[1])
        keys = pl.read_parquet(bucket_dir)[cache.KEY].to_numpy()
        assert bucket_dir.name.startswith(BUCKET) and (keys % 4 == bucket).all()


def test_a_relative_cache_path_finds_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("cache/_pending").mkdir(parents=True)
    write_cache_file(Path("cache/run.parquet"), np.arange(1, 4, dtype=np.uint64))
    write_cache_file(Path("cache/_pending/later.parquet"), np.arange(4, 6, dtype=np.uint64))
    assert [Path(f).name for f in cache.data_files("cache")] == ["run.parquet"]
    assert [Path(f).name for f in cache.promote_pending("cache")] == ["later.parquet"]
    assert len(cache.data_files("cache")) == 2


def test_compaction_keeps_the_newest_entry_per_key(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    location.mkdir()
    write_cache_file(location / "old.parquet", np.arange(1, 3001, dtype=np.uint64), stamp=1)
    write_cache_file(location / "new.parquet", np.arange(2001, 4001, dtype=np.uint64), stamp=2)
    files, before, after = cache.compact(str(location))
    assert (files, before, after) == (2, 5000, 4000)
    remaining = cache.data_files(str(location))
    assert len(remaining) == 1 and Path(remaining[0]).name.startswith("c-")
    table = pl.read_parquet(remaining[0])
    assert table[cache.KEY].is_sorted() and table[cache.KEY].n_unique() == 4000
    newest = table.filter(pl.col(cache.KEY) > 2000)["batch_job_id"].unique().to_list()
    assert newest == ["job-2"]
    assert not list(location.glob("_compact-*"))


def test_compaction_in_buckets_streams_big_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "COMPACT_BUCKET_BYTES", 50_000)  # force several key buckets
    location = tmp_path / "cache"
    location.mkdir()
    write_cache_file(location / "a.parquet", np.arange(1, 20_001, dtype=np.uint64), stamp=1)
    write_cache_file(location / "b.parquet", np.arange(10_001, 30_001, dtype=np.uint64), stamp=2)
    assert cache.compact(str(location)) == (2, 40_000, 30_000)
    remaining = cache.data_files(str(location))
    assert len(remaining) > 1
    merged = pl.concat([pl.read_parquet(f) for f in remaining])
    assert sorted(merged[cache.KEY].to_list()) == list(range(1, 30_001))


def test_price_table_matches_ids_then_the_most_specific_pattern(tmp_path: Path) -> None:
    table = PriceTable.model_validate(
        {
            "batch_discount": 0.5,
            "models": {
                "mistral-embed": {"input": 0.1},
                "ft:*": {"input": 9.0},
                "ft:classifier:ministral-3b*": {"input": 0.1, "output": 0.0},
                "mistral-small-*": {"input": 0.1, "output": 0.3},
            },
        }
    )
    assert table.cost("mistral-embed", 1_000_000, 0) == pytest.approx(0.05)
    assert table.cost("ft:classifier:ministral-3b-latest:abc", 2_000_000, 0) == pytest.approx(0.1)
    assert table.cost("ft:other", 1_000_000, 0) == pytest.approx(4.5)
    assert table.cost("mistral-small-latest", 1_000_000, 1_000_000) == pytest.approx(0.2)
    assert table.cost("unknown-model", 10, 10) is None
    shipped = load_prices(None)
    for model in ("mistral-embed", "mistral-moderation-latest", "mistral-small-latest"):
        assert shipped.price(model) is not None, model

    broken = tmp_path / "prices.json"
    broken.write_text(json.dumps({"models": {"x": {"input": -1}}}))
    with pytest.raises(PriceTableError, match=str(broken)):
        load_prices(str(broken))
    with pytest.raises(PriceTableError, match="does not exist"):
        load_prices(str(tmp_path / "missing.json"))


def shard(number: int, requests: int) -> ShardRef:
    return ShardRef(
        shard=number,
        attempt=0,
        requests_uri="r",
        manifest_uri="m",
        requests=requests,
        texts=requests,
        tokens=requests,
        content_hash="h",
    )


def test_quota_waves_never_hold_more_than_the_limit() -> None:
    grouped = waves([shard(0, 3), shard(1, 2), shard(2, 5), shard(3, 1)], capacity=5)
    assert [[s.shard for s in wave] for wave in grouped] == [[0, 1], [2], [3]]
    assert all(sum(s.requests for s in wave) <= 5 for wave in grouped)
    with pytest.raises(QuotaError, match="shard 1 has 6 requests, more than the whole"):
        waves([shard(0, 1), shard(1, 6)], capacity=5)


def test_purge_by_kind_or_everything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    root = tmp_path / "cache"
    for kind, model in (("embeddings", "mistral-embed"), ("moderation", "mistral-moderation-2411")):
        folder = cache.folder(params(cache=str(root), kind=kind, options={"model": model}))
        Path(folder).mkdir(parents=True)
        cache.write_options(folder, params(cache=str(root), kind=kind, options={"model": model}))
        write_cache_file(Path(folder) / "run.parquet", np.arange(1, 11, dtype=np.uint64))
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "info", "--cache", str(root)])
    assert listed.exit_code == 0 and listed.output.count("10 entries") == 2
    removed = runner.invoke(app, ["cache", "purge", "--cache", str(root), "--kind", "moderation"])
    assert "Removed 1 cache folder(s), 10 entries" in removed.output
    assert [f.kind for f in cache.folders(str(root))] == ["embeddings"]
    everything = runner.invoke(app, ["cache", "purge", "--cache", str(root), "--all"])
    assert everything.exit_code == 0 and not root.exists()


def test_the_cache_keys_results_by_the_answering_version(tmp_path: Path) -> None:
    """Entries of an older version (here: written before versions were recorded) stop matching
    once the cache holds the newer one; compaction keeps both versions of a key."""
    location = tmp_path / "cache"
    location.mkdir()
    write_cache_file(location / "old.parquet", np.arange(1, 101, dtype=np.uint64), stamp=1)
    write_cache_file(location / "new.parquet", np.arange(51, 81, dtype=np.uint64), 2, "model-2603")
    everything = np.arange(1, 101, dtype=np.uint64)
    wanted = pl.DataFrame({TEXT_KEY: everything, TEXT_KEY_2: everything * np.uint64(3)})

    hits, files = cache.lookup(str(location), wanted.lazy())
    assert sorted(hits[TEXT_KEY].to_list()) == list(range(51, 81))  # the newest version only
    assert set(hits[cache.VERSION]) == {"model-2603"}
    fetched_to = tmp_path / "fetched"
    copied = sum(
        cache.fetch(f, i, hits.filter(pl.col(cache.FILE) == i), 1, str(fetched_to))
        for i, f in enumerate(files)
    )
    assert copied == 30  # the same keys' older entries are not copied
    fetched = pl.read_parquet(fetched_to / "**/*.parquet", hive_partitioning=False)
    assert set(fetched[cache.VERSION]) == {"model-2603"}

    assert cache.compact(str(location)) == (2, 130, 130)  # (key, version) is the unit
    hits_after, _ = cache.lookup(str(location), wanted.lazy())
    assert sorted(hits_after[TEXT_KEY].to_list()) == list(range(51, 81))


def test_the_current_version_is_the_runs_majority() -> None:
    def collected(attempt: int, **texts: int) -> CollectRef:
        return CollectRef.model_validate(
            {
                "shard": 0,
                "attempt": attempt,
                "job_id": f"job-{attempt}",
                "job_status": "SUCCESS",
                "results_uri": "r",
                "failures_uri": "f",
                "succeeded_texts": sum(texts.values()),
                "transient_failures": 0,
                "terminal_failures": 0,
                "missing_lines": 0,
                "duplicate_lines": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "model_versions": texts,
            }
        )

    assert versions.current([]) is None
    assert versions.current([collected(0, v1=10, v2=90), collected(1, v1=3)]) == "v2"
    assert versions.current([collected(0, v1=90), collected(1, v2=3)]) == "v1"
    assert versions.current([collected(0, v1=5, v2=5)]) == "v2"  # a tie: the later name
    assert versions.add({"a": 1}, {"a": 2, "b": 1}) == {"a": 3, "b": 1}


def test_entries_from_before_versions_count_as_the_model_asked_for(tmp_path: Path) -> None:
    """A service that names only the alias: entries written before versions were recorded and
    entries recorded as the alias are one version, so neither hides the other."""
    location = tmp_path / "cache"
    location.mkdir()
    write_cache_file(location / "old.parquet", np.arange(1, 101, dtype=np.uint64), stamp=1)
    write_cache_file(
        location / "new.parquet", np.arange(91, 121, dtype=np.uint64), 2, "mistral-embed"
    )
    everything = np.arange(1, 121, dtype=np.uint64)
    wanted = pl.DataFrame({TEXT_KEY: everything, TEXT_KEY_2: everything * np.uint64(3)})
    hits, files = cache.lookup(str(location), wanted.lazy(), "mistral-embed")
    assert sorted(hits[TEXT_KEY].to_list()) == list(range(1, 121))  # each key once
    copied = sum(
        cache.fetch(f, i, hits.filter(pl.col(cache.FILE) == i), 1, str(tmp_path / "out"))
        for i, f in enumerate(files)
    )
    assert copied == 120


def test_the_newest_version_is_decided_on_a_tie_by_its_name() -> None:
    stamp = datetime.fromtimestamp(5, UTC)
    for order in (["model-2411", "model-2603"], ["model-2603", "model-2411"]):
        cached = pl.DataFrame({cache.VERSION: order, "enriched_at": [stamp, stamp]})
        assert cache.newest_version(cached) == "model-2603"
