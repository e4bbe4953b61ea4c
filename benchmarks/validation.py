"""Validating embeddings: derived columns + Great Expectations, for 1M rows of 1024 dims.

Run: ``.venv/bin/python benchmarks/validation.py [--rows 1000000]``.

Measures the gate as the flow runs it — reduce the vectors to derived columns with numpy, then the
``rows`` and ``embeddings`` suites in GX — and, in the same run, a baseline doing the same checks in
plain numpy without GX. Extra memory is the peak RSS during the step above the RSS before it
(the 4 GB of vectors themselves are not counted), sampled every 5 ms.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import polars as pl

import kinds
from schemas.params import EnrichParams, Kind
from tasks.core.checks import derive, rows_frame, validate


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def measured(step: Callable[[], Any]) -> tuple[float, float, Any]:
    """Seconds and extra peak RSS (GiB) of ``step``."""
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, (max(peak[0], rss_bytes()) - before) / 2**30, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows, dim = args.rows, 1024
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    published = pl.DataFrame(
        {
            "doc": pl.int_range(rows, eager=True),
            "embedding": pl.Series(vectors.reshape(-1)).reshape((rows, dim)),
        }
    )
    del vectors
    params = EnrichParams(
        input="x", id_column="doc", text_column="t", output="y", kind=Kind.embeddings
    )
    # Warm GX up (import, context) outside the clock: it is paid once per process.
    validate(
        rows_frame(pl.Series([1]), pl.Series([], dtype=pl.Int64)),
        "rows",
        {"input_rows": 1, "max_rejected_fraction": 0.01},
    )

    def gate() -> bool:
        derived = derive(params, published)
        kind = validate(
            derived,
            "embeddings",
            kinds.get("embeddings").suite_parameters(params, published.columns, derived),
        )
        everything = validate(
            rows_frame(derived["id"], pl.Series([], dtype=derived["id"].dtype)),
            "rows",
            {"input_rows": rows, "max_rejected_fraction": 0.01},
        )
        return kind.success and everything.success

    def plain_numpy() -> bool:
        values = published["embedding"].arr.explode().to_numpy().reshape(rows, dim)
        norms = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float64))
        ids = published["doc"].to_numpy()
        return bool(
            np.isfinite(values).all()
            and np.all(np.abs(norms - 1) <= 1e-3)
            and np.unique(ids).size == rows
        )

    gx_s, gx_gib, gx_ok = measured(gate)
    np_s, np_gib, np_ok = measured(plain_numpy)
    assert gx_ok and np_ok
    print(f"embeddings: {rows:,} rows x {dim} dims ({rows * dim * 4 / 2**30:.1f} GiB of vectors)")
    print(f"{'step':<40}{'seconds':>9}{'extra GiB':>11}")
    print(f"{'derived columns + GX (rows, embeddings)':<40}{gx_s:>9.2f}{gx_gib:>11.2f}")
    print(f"{'baseline: same checks in plain numpy':<40}{np_s:>9.2f}{np_gib:>11.2f}")
    print("target: <= 5 s and <= 1 GiB extra for 1M rows")


if __name__ == "__main__":
    main()
