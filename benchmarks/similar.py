"""Similarity search at scale: ``enrich similar`` over 1,000,000 rows of 1024-dimension vectors.

Run: ``.venv/bin/python benchmarks/similar.py`` (``--rows N`` to run smaller, ``--folder DIR
--keep`` to write the table once and reuse it). Needs ~4.3 GB of free disk at full size (checked
first) and, for the baseline, ~9 GB of free memory.

The table is **synthetic**: random unit vectors written in the real published layout
(``<folder>/comments/partition=<value>/part-0.parquet``, one row group per 20,000-row shard, LZ4,
``FixedSizeList(float32, 1024)`` vectors, the lineage columns) with a manifest per partition where
the publisher puts it. Producing it through the flow would take far longer (a million texts sent to
the emulator, collected, validated and published: the better part of an hour here) and would
measure the flow, not the search. One row holds the emulator's vector of the query text, so the
``--text`` search must find it first.

Each measure is the real entry point in a fresh child process, timed from the outside (wall
seconds, and the whole process's peak RSS from ``wait4``):

* ``enrich --help`` — the command's start-up alone (imports), paid by every measure below;
* ``enrich similar --id`` — the row's own vector, then the scan;
* ``enrich similar --text`` — one ``/v1/embeddings`` call to an emulator, then the scan; again
  with the vector from the local query cache (no call);
* ``naive`` — the usual script: ``polars.read_parquet`` of the whole table, its vectors as one
  numpy matrix, one matrix product, ``argsort``.

Machines here are shared and noisy: read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emulator import content
from emulator.server import EmulatorProcess

ENRICH = str(Path(sys.executable).with_name("enrich"))
TABLE = "comments"
PARTITION = "2026-11-22"
MODEL = "mistral-embed"
DIMENSION = 1024
GROUP_ROWS = 20_000  # the publisher writes a row group per staged shard (shard_size)
QUERY_TEXT = "my parcel arrived late and the box was broken"
API_KEY = "sk-similar-benchmark"
K = 10
NAIVE = """
import json, sys, time
import numpy as np, polars as pl
table, query, k = sys.argv[1], np.array(json.loads(sys.argv[2]), dtype=np.float32), int(sys.argv[3])
frame = pl.read_parquet(f"{table}/*/*.parquet", columns=["id", "embedding"])
vectors = frame["embedding"].to_numpy()
scores = vectors @ query / np.sqrt(np.einsum("ij,ij->i", vectors, vectors)) / np.linalg.norm(query)
best = np.argsort(-scores)[:k]
print(json.dumps(frame["id"].gather(best).to_list()))
"""


def write_table(folder: Path, rows: int, planted: int, planted_vector: np.ndarray) -> Path:
    """The synthetic published table, written a row group at a time (bounded memory)."""
    output = folder / TABLE
    data = output / f"partition={PARTITION}" / "part-0.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    enriched_at = pa.scalar(0, pa.timestamp("us", "UTC"))
    writer: pq.ParquetWriter | None = None
    for start in range(0, rows, GROUP_ROWS):
        count = min(GROUP_ROWS, rows - start)
        vectors = rng.standard_normal((count, DIMENSION), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        if start <= planted < start + count:
            vectors[planted - start] = planted_vector
        ids = np.arange(start, start + count)
        group = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "text": pa.array([f"comment {i}" for i in ids], pa.large_string()),
                "team": pa.array([f"team-{i % 7}" for i in ids], pa.large_string()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.ravel()), DIMENSION
                ),
                "enriched_at": pa.repeat(enriched_at, count),
                "model": pa.repeat(pa.scalar(MODEL, pa.large_string()), count),
                "model_version": pa.repeat(pa.scalar(MODEL, pa.large_string()), count),
                "batch_job_id": pa.repeat(pa.scalar("job-0", pa.large_string()), count),
                "result_source": pa.repeat(pa.scalar("batch", pa.large_string()), count),
            }
        )
        if writer is None:
            dictionary = [n for n in group.schema.names if n != "embedding"]
            writer = pq.ParquetWriter(
                data, group.schema, compression="lz4", use_dictionary=dictionary
            )
        writer.write_table(group)
    assert writer is not None
    writer.close()
    manifest = folder / "_enrich" / TABLE / "published" / f"partition={PARTITION}"
    manifest.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": "embeddings",
        "model": MODEL,
        "options": {"kind": "embeddings", "model": MODEL},
        "id_column": "id",
        "text_column": "text",
        "model_versions": {MODEL: rows},
        "partition": PARTITION,
        "counts": {"published_rows": rows, "rejected_rows": 0, "rejected_by_reason": {}},
        "run_id": "synthetic",
        "jobs": {},
    }
    (manifest / "_manifest.json").write_text(json.dumps(record))
    (data.parent / "_SUCCESS").write_bytes(b"")
    return output


def existing_rows(table: Path) -> int | None:
    try:
        return int(pq.read_metadata(table / f"partition={PARTITION}" / "part-0.parquet").num_rows)
    except OSError:
        return None


# Spawns the measured command and writes its peak RSS: from a small process, so that the
# command's peak is its own (a child forked straight from this script would count this script's
# pages, resident in the child until it execs).
PEAK = """
import os, resource, sys
status = os.spawnv(os.P_WAIT, sys.argv[2], sys.argv[2:])
open(sys.argv[1], "w").write(f"{status} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def measure(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of ``argv`` run as a child process."""
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch, "peak")
        stdout, stderr = Path(scratch, "stdout"), Path(scratch, "stderr")
        started = time.perf_counter()
        with stdout.open("w") as out, stderr.open("w") as err:
            subprocess.run(
                [sys.executable, "-c", PEAK, str(peak_file), *argv],
                stdout=out,
                stderr=err,
                env=env,
                check=True,
            )
        seconds = time.perf_counter() - started
        status, peak_kib = (int(v) for v in peak_file.read_text().split())
        if status != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{stderr.read_text()}")
        return seconds, peak_kib / 1024, stdout.read_text()


def top_ids(printed: str) -> list[int]:
    """The ids in the first column of ``enrich similar``'s table."""
    found = []
    for line in printed.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("┆")]
        if len(cells) > 1 and cells[0].isdigit():
            found.append(int(cells[0]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, help="where to write the table (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the table for another run")
    parser.add_argument("--no-text", action="store_true", help="skip the --text measures")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    args = parser.parse_args()

    folder = args.folder or Path(tempfile.mkdtemp(prefix="enrich-bench-similar-"))
    folder.mkdir(parents=True, exist_ok=True)
    needed = args.rows * DIMENSION * 4 * 1.05 + 200e6
    table = folder / TABLE
    if existing_rows(table) != args.rows and shutil.disk_usage(folder).free < needed:
        sys.exit(
            f"{folder} has {shutil.disk_usage(folder).free / 1e9:.1f} GB free; the table "
            f"needs about {needed / 1e9:.1f} GB: use --rows or --folder"
        )
    planted = args.rows // 2 + 1
    query = content.embed(MODEL, [QUERY_TEXT], DIMENSION, DIMENSION)[0]
    try:
        started = time.perf_counter()
        if existing_rows(table) != args.rows:
            shutil.rmtree(folder / TABLE, ignore_errors=True)
            write_table(folder, args.rows, planted, query)
        size = sum(p.stat().st_size for p in table.rglob("*.parquet"))
        groups = pq.ParquetFile(table / f"partition={PARTITION}" / "part-0.parquet").num_row_groups
        print(
            f"{args.rows:,} rows x {DIMENSION} float32 in {groups} row groups, "
            f"{size / 1e9:.2f} GB at {table} (ready in {time.perf_counter() - started:.0f} s)\n"
        )
        env = {**os.environ, "ENRICH_QUERY_CACHE": str(folder / "query-cache")}
        shutil.rmtree(folder / "query-cache", ignore_errors=True)
        rows: list[tuple[str, float, float, str]] = []
        seconds, peak, _ = measure([ENRICH, "--help"], env)
        rows.append(("enrich --help (start-up)", seconds, peak, ""))
        similar = [ENRICH, "similar", "--table", str(table), "-k", str(K), "--columns", "text"]
        seconds, peak, printed = measure([*similar, "--id", str(planted)], env)
        rows.append(("enrich similar --id", seconds, peak, f"top-1 id {top_ids(printed)[0]}"))
        text_ids: list[int] = []
        if not args.no_text:
            with EmulatorProcess(folder / "emulator", api_key=API_KEY) as emulator:
                served = {**env, "MISTRAL_SERVER_URL": emulator.url, "MISTRAL_API_KEY": API_KEY}
                for label in ("one API call", "cached vector"):
                    seconds, peak, printed = measure([*similar, "--text", QUERY_TEXT], served)
                    text_ids = top_ids(printed)
                    check = f"top-1 id {text_ids[0]}"
                    rows.append((f"enrich similar --text ({label})", seconds, peak, check))
        if not args.no_naive:
            argv = [sys.executable, "-c", NAIVE, str(table), json.dumps(query.tolist()), str(K)]
            seconds, peak, printed = measure(argv, env)
            naive = json.loads(printed)
            agree = " (the same top 10 as --text)" if naive == text_ids else ""
            rows.append(
                ("naive: read whole + matmul", seconds, peak, f"top-1 id {naive[0]}{agree}")
            )
        report(rows)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def report(rows: list[tuple[str, float, float, str]]) -> None:
    print(f"{'measure':<38} {'seconds':>8} {'peak MiB':>9}  check")
    for name, seconds, peak, check in rows:
        print(f"{name:<38} {seconds:8.2f} {peak:9.0f}  {check}")
    by_name = {name: (seconds, peak) for name, seconds, peak, _ in rows}
    naive = by_name.get("naive: read whole + matmul")
    if naive is None:
        return
    print()
    for name, (seconds, peak) in by_name.items():
        if name.startswith("enrich similar"):
            print(
                f"{name}: {naive[0] / seconds:.1f}x the naive script's speed, "
                f"{peak / naive[1]:.2f}x its peak memory ({naive[1] / peak:.1f}x less)"
            )


if __name__ == "__main__":
    main()
