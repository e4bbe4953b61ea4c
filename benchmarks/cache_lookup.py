"""Deciding what to send: 1,000,000 input rows against a 10,000,000-entry content cache.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/cache_lookup.py``; ``--rows`` and
``--entries`` change the sizes). Target: at most 10 s and 2 GB peak memory.

The input is a nightly table that grew: 90% of its rows were enriched before (their keys are in
the cache), 10% are new. The cache holds 10M entries in 20 files, as 20 runs would have added
them (each sorted by key, 16k-row row groups, plus a short result column; a lookup reads only the
key and token columns, so the width of the results does not change its cost).

Each measure runs in a fresh child process, so its peak RSS is its own (Prefect and polars
imports included, paid before the clock starts):

* ``plan + cache`` — the whole plan step: id checks, NFC keys, bucketing the rows to staging,
  reading the cache's keys, the join, and the hits written to staging;
* ``plan, cache off`` — the same plan step without the lookup: what the cache adds is the
  difference;
* ``naive`` — the usual script: every cache key into a Python set, a Python loop over the rows.

Machines here are shared and noisy: read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from benchmarks.child import report, run_phase
from benchmarks.inputs import make_input
from schemas.params import CacheMode, EnrichParams

FILES = 20
HIT_FRACTION = 0.9


def params_for(work: Path, mode: CacheMode = CacheMode.use) -> EnrichParams:
    return EnrichParams(
        input=str(work / "input.parquet"),
        id_column="id",
        text_column="text",
        output=str(work / "output"),
        partition="2026-11-22",
        cache_mode=mode,
    )


def make_cache(work: Path, frame: pl.DataFrame, entries: int) -> str:
    """``entries`` cache entries: the keys of the first 90% of the input, the rest random."""
    from tasks import cache
    from tasks.core.columns import TEXT_KEY, TEXT_KEY_2
    from tasks.core.keys import text_keys

    params = params_for(work)
    known = frame.head(int(frame.height * HIT_FRACTION)).select(*text_keys(params))
    rng = np.random.default_rng(7)
    filler = entries - known.height
    keys = pl.concat(
        [
            known.rename({TEXT_KEY: cache.KEY, TEXT_KEY_2: cache.KEY_2}),
            pl.DataFrame(
                {
                    cache.KEY: rng.integers(0, 2**63, filler, dtype=np.uint64),
                    cache.KEY_2: rng.integers(0, 2**63, filler, dtype=np.uint64),
                }
            ),
        ]
    ).sample(fraction=1.0, shuffle=True, seed=3)
    location = cache.folder(params)
    Path(location).mkdir(parents=True, exist_ok=True)
    cache.write_options(location, params)
    per_file = -(-entries // FILES)
    for index in range(FILES):
        part = keys.slice(index * per_file, per_file).with_columns(
            pl.lit(31, pl.Int64).alias(cache.TOKENS),
            pl.lit("positive").alias("label"),
            pl.lit("job-0").alias("batch_job_id"),
            pl.lit(0).cast(pl.Datetime("us", "UTC")).alias("enriched_at"),
        )
        pq.write_table(
            part.sort(cache.KEY).to_arrow(),
            f"{location}/run{index:02d}.parquet",
            compression="lz4",
            row_group_size=cache.ROW_GROUP_ROWS,
        )
    return location


def phase_plan(work: Path, mode: CacheMode) -> dict[str, Any]:
    from tasks.plan import plan_run

    ref = plan_run(params_for(work, mode), "2026-11-22")
    return {
        "rows": ref.rows,
        "hit_rows": ref.cache_hit_rows,
        "to_send": ref.rows_to_send - ref.cache_hit_rows,
    }


def phase_naive(work: Path) -> dict[str, Any]:
    from tasks import cache
    from tasks.core.keys import text_keys

    location = cache.folder(params_for(work))
    known: set[tuple[int, int]] = set()
    for path in sorted(Path(location).glob("*.parquet")):
        table = pq.read_table(path, columns=[cache.KEY, cache.KEY_2])
        known.update(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    frame = pl.read_parquet(work / "input.parquet").with_columns(*text_keys(params_for(work)))
    to_send = []
    for row_id, first, second in frame.select("id", "_text_key", "_text_key_2").iter_rows():
        if (first, second) not in known:
            to_send.append(row_id)
    return {"rows": frame.height, "hit_rows": frame.height - len(to_send), "to_send": len(to_send)}


PHASES = {
    "plan-cache": lambda work: phase_plan(work, CacheMode.use),
    "plan-off": lambda work: phase_plan(work, CacheMode.off),
    "naive": phase_naive,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.phase:
        import tasks.cache
        import tasks.plan

        del tasks
        report(PHASES[args.phase], args.work)
        return

    work = Path(tempfile.mkdtemp(prefix="enrich-bench-cache-"))
    try:
        started = time.perf_counter()
        frame = make_input(work, args.rows)
        make_cache(work, frame, args.entries)
        print(
            f"{args.rows:,} input rows, {args.entries:,} cache entries in {FILES} files "
            f"(set up in {time.perf_counter() - started:.0f} s)\n"
        )
        print(f"{'measure':<20} {'seconds':>8} {'peak MiB':>9}  rows sent / from the cache")
        seconds = {}
        for name in ("plan-cache", "plan-off", "naive"):
            seconds[name], peak, counts = run_phase(__file__, name, work)
            print(
                f"{name:<20} {seconds[name]:8.2f} {peak:9.0f}  "
                f"{counts['to_send']:,} / {counts['hit_rows']:,}"
            )
        lookup = seconds["plan-cache"] - seconds["plan-off"]
        ratio = seconds["naive"] / seconds["plan-cache"]
        print(
            f"\nthe cache lookup adds {lookup:.2f} s to the plan step; the whole decision is "
            f"{ratio:.1f}x faster than the naive script (target: <= 10 s, <= 2,048 MiB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
