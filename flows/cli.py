"""The ``enrich`` command line: ``enrich run`` runs the same flow as the deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emulator.cli import emulator
from schemas.params import CacheMode, Kind

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Enrich Parquet datasets through the Mistral Batch API.",
)
app.command("emulator")(emulator)


@app.command("run")
def run(
    input: Annotated[
        str, typer.Option("--input", help="Parquet file, folder (hive), glob, or s3:// URI.")
    ],
    id_column: Annotated[str, typer.Option(help="Column with a unique, non-null id.")],
    text_column: Annotated[
        str, typer.Option(help="Column with the text (chat-moderation: list of {role, content}).")
    ],
    output: Annotated[str, typer.Option(help="Output folder or s3:// URI.")],
    kind: Annotated[Kind, typer.Option(help="What to ask Mistral for.")] = Kind.embeddings,
    model: Annotated[
        str | None, typer.Option(help="Model id; default per kind (see README).")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="classification: comma-separated allowed labels.")
    ] = None,
    instructions: Annotated[
        str | None, typer.Option(help="classification: the system prompt.")
    ] = None,
    classifier_model: Annotated[
        str | None, typer.Option(help="classifier: the fine-tuned model id.")
    ] = None,
    output_dimension: Annotated[
        int | None, typer.Option(help="embeddings (codestral-embed): vector length.")
    ] = None,
    partition: Annotated[
        str | None, typer.Option(help="Partition value; default: today's date (UTC).")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Rows per shard (one batch job each).")] = 20_000,
    poll_interval: Annotated[float, typer.Option(help="Seconds between status checks.")] = 30.0,
    timeout_hours: Annotated[int, typer.Option(help="Mistral's timeout per job (1-168).")] = 24,
    max_retries: Annotated[
        int, typer.Option(help="Follow-up jobs for transiently failed rows.")
    ] = 2,
    cache: Annotated[
        str | None, typer.Option(help="Content cache folder or s3:// URI; default beside output.")
    ] = None,
    cache_mode: Annotated[
        CacheMode, typer.Option(help="use: skip cached texts; refresh: resend all; off.")
    ] = CacheMode.use,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and estimate only: nothing is submitted.")
    ] = False,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="Refuse to submit when the estimate is over this.")
    ] = None,
    price_table: Annotated[
        str | None, typer.Option(help="Price table JSON; default schemas/prices.json.")
    ] = None,
    keep_staging: Annotated[
        bool,
        typer.Option("--keep-staging", help="Keep staged rows, requests and results (debugging)."),
    ] = False,
    task_runner: Annotated[
        str,
        typer.Option(
            help="Where shard tasks run: threads, dask (a local Dask cluster), dask:N (N worker "
            "processes), or a Dask scheduler address tcp://host:8786 (s3:// locations only)."
        ),
    ] = "threads",
    summary_json: Annotated[
        Path | None,
        typer.Option(help="Also write the run summary (counts, cost, seconds per step) here."),
    ] = None,
    lease_wait_seconds: Annotated[
        float,
        typer.Option(
            help="When another run is writing the same output partition: seconds to wait for "
            "it before refusing (0: refuse at once)."
        ),
    ] = 0.0,
) -> None:
    """Run the enrich flow once, in this process (Prefect's local API unless one is set)."""
    from pydantic import ValidationError

    from flows.enrich import enrich
    from schemas.params import DEFAULT_INSTRUCTIONS, EnrichParams, KindOptions

    try:
        params = EnrichParams(
            input=input,
            id_column=id_column,
            text_column=text_column,
            kind=kind,
            output=output,
            partition=partition,
            shard_size=shard_size,
            poll_interval=poll_interval,
            timeout_hours=timeout_hours,
            max_retries=max_retries,
            cache=cache,
            cache_mode=cache_mode,
            dry_run=dry_run,
            max_cost_usd=max_cost_usd,
            price_table=price_table,
            lease_wait_seconds=lease_wait_seconds,
            keep_staging=keep_staging,
            task_runner=task_runner,
            options=KindOptions(
                model=model,
                labels=[x.strip() for x in labels.split(",")] if labels else [],
                instructions=instructions or DEFAULT_INSTRUCTIONS,
                classifier_model=classifier_model,
                output_dimension=output_dimension,
            ),
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from tasks.cost import BudgetExceededError
    from tasks.lease import LeaseHeldError

    try:
        summary = enrich(params)
    except (BudgetExceededError, LeaseHeldError) as exc:
        typer.echo(f"Refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    if summary_json is not None:
        summary_json.write_text(summary.model_dump_json(indent=2))
    if summary.dry_run:
        typer.echo("Dry run: nothing was uploaded, submitted or published.")
        return
    typer.echo(
        f"Enriched {summary.enriched_rows:,} of {summary.rows_in:,} rows "
        f"({summary.rejected_rows:,} rejected, {summary.cache_hit_rows:,} from the cache) into "
        f"{summary.output} partition={summary.partition}"
    )


@app.command("serve")
def serve() -> None:
    """Serve every deployment of prefect.yaml from this process (no work pool, no worker): the
    nightly schedules, ad hoc runs from the Prefect UI and the hourly reconcile."""
    import os

    from deployments.serve import PROJECT, serve_all

    os.chdir(PROJECT)  # the deployments' relative paths (demo dataset) resolve as with a worker
    serve_all()


cache_app = typer.Typer(no_args_is_help=True, help="Inspect, compact or purge the content cache.")
app.add_typer(cache_app, name="cache")

CacheOption = Annotated[
    str, typer.Option("--cache", help="The cache folder or s3:// URI (a run's `cache`).")
]
KindFilter = Annotated[Kind | None, typer.Option(help="Only this kind.")]
ModelFilter = Annotated[str | None, typer.Option(help="Only this model id.")]


@cache_app.command("info")
def cache_info(cache: CacheOption) -> None:
    """One line per kind/model/options folder: files, entries, size."""
    from tasks import cache as content_cache

    found = content_cache.folders(cache)
    if not found:
        typer.echo(f"The cache at {cache} is empty.")
    for f in found:
        stale = "" if f.current else "  (old key scheme: never read; purge it)"
        typer.echo(
            f"{f.kind:16} {f.model:40} {f.files:5} files {f.entries:12,} entries "
            f"{f.bytes / 1e6:10,.1f} MB  {f.uri}{stale}"
        )


@cache_app.command("compact")
def cache_compact(cache: CacheOption, kind: KindFilter = None, model: ModelFilter = None) -> None:
    """Merge each folder's files into few files with unique keys, sorted (faster lookups).
    Run it when no enrich run is using the cache."""
    from tasks import cache as content_cache

    for f in content_cache.select(cache, kind.value if kind else None, model):
        files, before, after = content_cache.compact(f.uri)
        typer.echo(
            f"{f.kind} {f.model}: {files} files, {before:,} entries -> {after:,} unique entries"
        )


@cache_app.command("purge")
def cache_purge(
    cache: CacheOption,
    kind: KindFilter = None,
    model: ModelFilter = None,
    all_entries: Annotated[
        bool, typer.Option("--all", help="Remove the whole cache (every kind and model).")
    ] = False,
) -> None:
    """Remove cached results by kind and/or model, or all of them (--all)."""
    from tasks import cache as content_cache

    if kind is None and model is None and not all_entries:
        raise typer.BadParameter("give --kind and/or --model, or --all to remove everything")
    removed = content_cache.purge(cache, kind.value if kind else None, model)
    entries = sum(f.entries for f in removed)
    typer.echo(f"Removed {len(removed)} cache folder(s), {entries:,} entries, from {cache}.")
