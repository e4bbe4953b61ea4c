"""Two runs sharing a cache: a promotion already done is a no-op; staged hits are rebuilt."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from schemas.params import EnrichParams
from tasks import cache
from tasks.core.layout import Staging
from tasks.edges import storage
from tasks.plan import plan_run


def test_a_promotion_another_run_already_did_is_a_no_op(tmp_path: Path) -> None:
    location = str(tmp_path / "cache" / "folder")
    part = str(tmp_path / "part.parquet")
    storage.write_parquet(
        pa.table(
            {"text_key": pa.array([1], pa.uint64()), "text_key_2": pa.array([2], pa.uint64())}
        ),
        part,
    )
    pending = cache.stage_additions([part], location, "run")
    assert pending is not None
    assert cache.promote_pending(location) != []  # another run's lookup promoted it first
    target = cache.promote(pending)  # this run's own promotion: nothing left to do, no error
    assert storage.parquet_rows(target) == 1
    assert cache.data_files(location) == [target]


def test_a_plan_never_keeps_cache_hits_a_killed_run_staged(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pl.DataFrame({"id": [1, 2], "text": ["a", "b"]}).write_parquet(source)
    params = EnrichParams(
        input=str(source), id_column="id", text_column="text", output=str(tmp_path / "out")
    )
    first = plan_run(params, "p")
    stale = storage.join(Staging(first.staging).cached(0), "f00007-0000-0.parquet")
    storage.write_parquet(pa.table({"text_key": pa.array([9], pa.uint64())}), stale)
    leftover = Path(first.staging, "shards", ".results.parquet.0123.enrich-tmp")
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    plan_run(params, "p")
    assert not storage.exists(stale) and not leftover.exists()
