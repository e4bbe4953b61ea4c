"""Local overhead of an embeddings run, beside a naive baseline measured in the same run.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/local_overhead.py --rows 100000 400000``).

For each dataset size the script plans and builds the request shards, has the emulator's engine
answer them into output files (as the Batch API would; not measured), then measures, each in a
fresh child process so peak RSS is its own:

* build — bucketing rows by text hash, token counting, packing, writing JSONL shards;
* parse+write — parsing the output files, unpacking, joining to the rows, writing Parquet;
* naive build / naive parse+write — what typical batch scripts do: a Python loop with
  ``json.dumps``/``json.loads`` per line, results in Python lists, then ``pyarrow`` from lists.

Machines here are shared and noisy: read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.child import report, run_phase
from benchmarks.inputs import make_input
from schemas.params import EnrichParams

SHARD_SIZE = 20_000
PARTITION = "2026-11-22"


def params_for(work: Path) -> EnrichParams:
    return EnrichParams(
        input=str(work / "input.parquet"),
        id_column="id",
        text_column="text",
        output=str(work / "output"),
        partition=PARTITION,
        shard_size=SHARD_SIZE,
    )


# --- phases, each run in its own process -----------------------------------------------------


def phase_build(work: Path) -> dict[str, object]:
    from tasks.core.packing import build
    from tasks.edges.tokens import TOKENS
    from tasks.plan import plan_run
    from tasks.requests import shard_texts, write_shard

    params = params_for(work)
    planned = plan_run(params, PARTITION)
    shards = []
    for shard in range(planned.shards):
        texts = shard_texts(planned, params, shard)
        ref = write_shard(build(texts, params, shard, 0, TOKENS), planned, shard, 0)
        shards.append(ref.model_dump())
    (work / "plan.json").write_text(planned.model_dump_json())
    (work / "shards.json").write_text(json.dumps(shards))
    return {"requests": sum(int(s["requests"]) for s in shards)}


def phase_parse(work: Path) -> dict[str, object]:
    from schemas.refs import CollectRef, PlanRef, ShardRef
    from tasks.core.parsing import parse
    from tasks.edges import storage
    from tasks.write import write_shard

    params = params_for(work)
    planned = PlanRef.model_validate_json((work / "plan.json").read_text())
    written = 0
    parse_seconds = 0.0
    for raw in json.loads((work / "shards.json").read_text()):
        shard = ShardRef.model_validate(raw)
        manifest = storage.read_parquet(shard.manifest_uri)
        output = work / "answers" / f"{shard.shard:05d}.jsonl"
        start = time.perf_counter()
        parsed = parse(params, manifest, output, None, f"job-{shard.shard}", "SUCCESS")
        parse_seconds += time.perf_counter() - start
        folder = Path(shard.requests_uri).parent
        storage.write_parquet(parsed.results.to_arrow(), str(folder / "results.parquet"))
        storage.write_parquet(parsed.failures.to_arrow(), str(folder / "failures.parquet"))
        collected = CollectRef(
            shard=shard.shard,
            attempt=0,
            job_id=f"job-{shard.shard}",
            job_status="SUCCESS",
            results_uri=str(folder / "results.parquet"),
            failures_uri=str(folder / "failures.parquet"),
            succeeded_texts=parsed.results.height,
            transient_failures=0,
            terminal_failures=0,
            missing_lines=0,
            duplicate_lines=0,
            prompt_tokens=parsed.prompt_tokens,
            completion_tokens=0,
        )
        ref = write_shard(planned, params, shard.shard, [collected], datetime.now(UTC))
        written += ref.enriched_rows
    return {"rows_written": written, "parse_seconds": parse_seconds}


def phase_naive_build(work: Path) -> dict[str, object]:
    """A typical script: dedupe in a dict, count tokens per text, pack greedily, dumps per line."""
    from tasks.edges.tokens import TokenCounter

    counter = TokenCounter()
    table = pq.read_table(work / "input.parquet", columns=["id", "text"])
    unique: dict[str, int] = {}
    for text in table.column("text").to_pylist():
        if text and text.strip():
            unique.setdefault(text, len(unique))
    out_dir = work / "naive"
    out_dir.mkdir(exist_ok=True)
    requests = 0
    texts = list(unique)
    for start in range(0, len(texts), SHARD_SIZE):
        batch: list[str] = []
        batch_tokens, line_no = 0, 0
        with (out_dir / f"{start:09d}.jsonl").open("w") as sink:
            for text in texts[start : start + SHARD_SIZE]:
                tokens = int(counter.per_input("mistral-embed", [text])[0])
                if batch and (len(batch) == 512 or batch_tokens + tokens > 16_384):
                    sink.write(
                        json.dumps({"custom_id": str(line_no), "body": {"input": batch}}) + "\n"
                    )
                    batch, batch_tokens, line_no = [], 0, line_no + 1
                batch.append(text)
                batch_tokens += tokens
            if batch:
                sink.write(json.dumps({"custom_id": str(line_no), "body": {"input": batch}}) + "\n")
                line_no += 1
        requests += line_no
    return {"requests": requests}


def phase_naive_parse(work: Path) -> dict[str, object]:
    """A typical script: json.loads per line, vectors into Python lists, pyarrow from lists."""
    import polars as pl

    shards = json.loads((work / "shards.json").read_text())
    written = 0
    parse_seconds = 0.0
    out_dir = work / "naive-out"
    out_dir.mkdir(exist_ok=True)
    for raw in shards:
        manifest = pl.read_parquet(raw["manifest_uri"])
        by_line: dict[str, list[int]] = {}
        for custom_id, key in manifest.select("custom_id", "_text_key").iter_rows():
            by_line.setdefault(custom_id, []).append(key)
        result_keys: list[int] = []
        vectors: list[list[float]] = []
        start = time.perf_counter()
        with (work / "answers" / f"{raw['shard']:05d}.jsonl").open() as source:
            for line in source:
                answer = json.loads(line)
                keys = by_line[answer["custom_id"]]
                for item in answer["response"]["body"]["data"]:
                    result_keys.append(keys[item["index"]])
                    vectors.append(item["embedding"])
        # The typed results table, as ours ends its parsing with one.
        results = pa.table(
            {
                "_text_key": pa.array(result_keys, pa.uint64()),
                "embedding": pa.array(vectors, type=pa.list_(pa.float32(), 1024)),
            }
        )
        del vectors
        parse_seconds += time.perf_counter() - start
        rows = pq.read_table(
            Path(raw["requests_uri"]).parents[3] / "rows" / f"_bucket={raw['shard']}"
        )
        where = {key: i for i, key in enumerate(results.column("_text_key").to_pylist())}
        picks = [where[key] for key in rows.column("_text_key").to_pylist()]
        table = pa.table(
            {
                "id": rows.column("id"),
                "text": rows.column("text"),
                "embedding": results.column("embedding").take(pa.array(picks)),
            }
        )
        pq.write_table(table, out_dir / f"{raw['shard']:05d}.parquet")
        written += table.num_rows
    return {"rows_written": written, "parse_seconds": parse_seconds}


def _warm_up_parsers(work: Path) -> None:
    """First calls pay one-off setup (thread pools, allocators): spend it before the clock."""
    answers = sorted((work / "answers").glob("*.jsonl"))
    if not answers:
        return
    with answers[0].open("rb") as source:
        first = source.readline()
    sample = work / "warm-up.jsonl"
    sample.write_bytes(first)
    json.loads(first)
    pl.read_ndjson(sample)
    sample.unlink()


PHASES = {
    "build": phase_build,
    "parse": phase_parse,
    "naive-build": phase_naive_build,
    "naive-parse": phase_naive_parse,
}


def answer_shards(work: Path) -> int:
    """The Batch API's part, not measured: the emulator's engine answers every request file."""
    from emulator.catalog import Catalog
    from emulator.lines import Slice, answer_slice, init_worker

    init_worker(Catalog.load(None))
    (work / "answers").mkdir(exist_ok=True)
    total = 0
    for raw in json.loads((work / "shards.json").read_text()):
        lines = []
        with Path(raw["requests_uri"]).open("rb") as handle:
            lines = [(n, line) for n, line in enumerate(handle, 1)]
        target = work / "answers" / f"{raw['shard']:05d}.jsonl"
        part = work / "answers" / "part"
        with target.open("wb") as sink:
            for start in range(0, len(lines), 64):
                chunk = Slice(
                    "benchjob",
                    "/v1/embeddings",
                    "mistral-embed",
                    lines[start : start + 64],
                    {},
                    part,
                    part.with_suffix(".err"),
                )
                answer_slice(chunk)
                sink.write(part.read_bytes())
        total += target.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 400_000])
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.phase:
        # Imports (Prefect, tokenizers) are paid before the clock starts, for both sides.
        import tasks.core.parsing
        import tasks.plan
        import tasks.requests
        import tasks.write
        from tasks.edges.tokens import TokenCounter

        TokenCounter().per_input("mistral-embed", ["warm up"])
        _warm_up_parsers(args.work)
        del tasks
        report(PHASES[args.phase], args.work)
        return

    print(f"embeddings (mistral-embed, 1024 dims), shard size {SHARD_SIZE:,} rows")
    print(
        f"{'rows':>9} {'step':<22}{'ours s':>9}{'naive s':>9}{'speed-up':>9}"
        f"{'ours MiB':>10}{'naive MiB':>10}"
    )
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix=f"bench-{rows}-"))
        try:
            make_input(work, rows)
            build = run_phase(__file__, "build", work)
            naive_build = run_phase(__file__, "naive-build", work)
            answered = answer_shards(work)
            parse = run_phase(__file__, "parse", work)
            naive_parse = run_phase(__file__, "naive-parse", work)
            assert parse[2]["rows_written"] == naive_parse[2]["rows_written"] == rows, (
                parse,
                naive_parse,
            )
            parsing = (parse[2]["parse_seconds"], naive_parse[2]["parse_seconds"])
            lines: list[tuple[str, float, float, float | None, float | None]] = [
                ("build requests", build[0], naive_build[0], build[1], naive_build[1]),
                ("parse results", *parsing, None, None),
                ("parse+join+write", parse[0], naive_parse[0], parse[1], naive_parse[1]),
            ]
            for step, ours_s, naive_s, ours_mib, naive_mib in lines:
                memory = f"{ours_mib:>10,.0f}{naive_mib:>10,.0f}" if ours_mib is not None else ""
                print(
                    f"{rows:>9,} {step:<22}{ours_s:>9.1f}{naive_s:>9.1f}"
                    f"{naive_s / ours_s:>8.1f}x{memory}"
                )
            requests = build[2]["requests"]
            print(f"{'':>9} (output files: {answered / 1e9:.2f} GB, {requests:,} requests)")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
