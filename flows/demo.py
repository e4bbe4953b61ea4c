"""``make demo``: the enrich flow on a generated dataset, against the local emulator.

With ``MISTRAL_API_KEY`` set and no ``MISTRAL_SERVER_URL``, the same runs target the real API
(and cost money); otherwise an emulator is started on a free loopback port and stopped at the end.
Each run shows its progress as ``enrich run`` does; ``--verbose`` prints Prefect's log lines too.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import polars as pl
from rich.console import Console

from emulator.server import EmulatorProcess
from schemas.params import EnrichParams, Kind, KindOptions
from schemas.refs import RunSummary

DEMO_DIR = Path(".demo")
ROWS = 3_000

_SUBJECTS = [
    "The parcel",
    "Support",
    "The app",
    "My order",
    "The refund",
    "This update",
    "The team",
]
_PRAISE = ["was fast and excellent", "is great, I love it", "was amazing and helpful"]
_COMPLAINTS = ["arrived late and broken", "is terrible, the worst", "was slow and awful"]
_NEUTRAL = ["arrived on Tuesday", "is being reviewed", "was discussed in the meeting"]
_TOXIC = [
    "you idiots, I will destroy you",
    "I hate you all, kill this racist company",
    "you stupid losers should die",
]


def sample_dataset(path: Path, rows: int = ROWS, seed: int = 7) -> Path:
    """Short customer comments (a few toxic, a few empty), as a Parquet file."""
    rng = random.Random(seed)
    texts: list[str | None] = []
    for i in range(rows):
        if i % 500 == 499:
            texts.append(None if i % 1000 == 999 else "   ")
            continue
        pool = rng.choices([_PRAISE, _COMPLAINTS, _NEUTRAL, _TOXIC], weights=[4, 4, 3, 1])[0]
        texts.append(f"{rng.choice(_SUBJECTS)} {rng.choice(pool)} (ticket {rng.randrange(10_000)})")
    frame = pl.DataFrame(
        {
            "comment_id": [f"c{i:06d}" for i in range(rows)],
            "channel": [rng.choice(["email", "chat", "store"]) for _ in range(rows)],
            "text": texts,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def runs(source: Path, output: Path) -> list[EnrichParams]:
    common = {
        "input": str(source),
        "id_column": "comment_id",
        "text_column": "text",
        "shard_size": 1_000,
        "poll_interval": 0.5,
    }
    labels = KindOptions(labels=["positive", "negative", "neutral"])
    return [
        EnrichParams.model_validate(
            # One table, "comments", per kind: its artifacts are enrich-comments-<kind>-*.
            common
            | {"kind": kind, "output": str(output / kind.value / "comments"), "options": options}
        )
        for kind, options in (
            (Kind.embeddings, KindOptions()),
            (Kind.moderation, KindOptions()),
            (Kind.classification, labels),
        )
    ]


def show(params: EnrichParams) -> None:
    partition = Path(params.output) / f"partition={params.partition_value()}"
    table = pl.read_parquet(partition / "part-0.parquet")
    print(f"\n== {params.kind.value}: {table.height:,} rows in {Path(params.output).resolve()}")
    # Vectors shortened to their first values; flagged rows first where there is a flag.
    vectors = [name for name, dtype in table.schema.items() if isinstance(dtype, pl.Array)]
    preview = table.with_columns(pl.col(name).arr.head(4) for name in vectors)
    if "flagged" in table.columns:
        preview = pl.concat([preview.filter(pl.col("flagged")).head(3), preview.head(3)])
    lineage = ("enriched_at", "model", "model_version", "batch_job_id", "result_source")
    preview = preview.drop(*lineage, strict=False).head(6)
    with pl.Config(tbl_cols=8, fmt_str_lengths=60, tbl_width_chars=140):
        print(preview)


def enriched(params: EnrichParams, console: Console, verbose: bool) -> RunSummary:
    """One run of the flow, its progress shown on ``console``."""
    from flows.console import showing_progress
    from flows.enrich import enrich

    with showing_progress(console, verbose=verbose):
        return enrich(params)


def nightly(output: Path, console: Console, verbose: bool) -> None:
    """The next night: the table grew by 300 rows; only their texts are sent."""
    grown = sample_dataset(DEMO_DIR / "input" / "comments_grown.parquet", rows=ROWS + 300)
    params = runs(grown, output)[0]
    summary = enriched(params, console, verbose)
    print(
        f"\n== nightly rerun ({params.kind.value}) over {summary.rows_in:,} rows: "
        f"{summary.cache_hit_rows:,} rows from the cache, {summary.sent_texts:,} new texts sent "
        f"in {len(summary.jobs)} job(s); cost avoided ${summary.cost_avoided_usd or 0:,.6f}, "
        f"spent ${summary.actual_cost_usd or 0:,.6f} (list prices, schemas/prices.json)"
    )


def analyse(output: Path) -> None:
    """What an analyst does next: the rows nearest to a text, and one view over the kinds."""
    import enrich

    os.environ.setdefault("ENRICH_QUERY_CACHE", str(DEMO_DIR / "queries"))
    question = "my parcel arrived late and damaged"
    tables = {p.kind.value: p.output for p in runs(DEMO_DIR / "input" / "comments.parquet", output)}
    nearest = enrich.similar(tables["embeddings"], text=question, k=3, columns=["text"])
    print(f'\n== enrich similar --table {tables["embeddings"]} --text "{question}" -k 3')
    with pl.Config(fmt_str_lengths=70, tbl_width_chars=140):
        print(nearest)
    view = enrich.read(tables).collect()
    flagged = view.filter(pl.col("flagged")).group_by("label").len().sort("label")
    print(
        f"\n== enrich.read(embeddings, moderation, classification): {view.height:,} rows, "
        f"{view.width} columns; flagged rows per label: {dict(flagged.iter_rows())}"
    )


def main(verbose: bool = False) -> None:
    started = time.monotonic()
    console = Console()
    source = sample_dataset(DEMO_DIR / "input" / "comments.parquet")
    output = DEMO_DIR / "output"
    real_api = bool(os.environ.get("MISTRAL_API_KEY")) and not os.environ.get("MISTRAL_SERVER_URL")
    emulator = None
    if not real_api:
        key = "demo-key"
        emulator = EmulatorProcess(DEMO_DIR / "emulator", api_key=key).start()
        os.environ["MISTRAL_SERVER_URL"] = emulator.url
        os.environ["MISTRAL_API_KEY"] = key
        # A saved MistralCredentials or Secret block holds a real key: never send it here.
        os.environ["MISTRAL_CREDENTIALS_BLOCK"] = os.environ["MISTRAL_API_KEY_BLOCK"] = ""
        print(f"Emulator (not the real Mistral API) at {emulator.url}")
    else:
        print("MISTRAL_API_KEY is set: the demo runs against the real Mistral API.")
    try:
        for params in runs(source, output):
            summary = enriched(params, console, verbose)
            print(
                f"{params.kind.value}: {summary.enriched_rows:,} enriched "
                f"({summary.cache_hit_rows:,} from the cache), "
                f"{summary.rejected_rows:,} rejected {summary.rejected_by_reason}"
            )
        for params in runs(source, output):
            show(params)
        nightly(output, console, verbose)
        analyse(output)
    finally:
        if emulator is not None:
            emulator.stop()
    print(f"\nDemo done in {time.monotonic() - started:.0f} s. Tables under {output.resolve()}")


if __name__ == "__main__":
    main(verbose="--verbose" in sys.argv[1:])
