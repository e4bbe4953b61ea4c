"""The ``enrich`` command line: ``enrich run`` runs the same flow as the deployments."""

from __future__ import annotations

from typing import Annotated

import typer

from emulator.cli import emulator
from schemas.params import Kind

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
    summary = enrich(params)
    typer.echo(
        f"Enriched {summary.enriched_rows:,} of {summary.rows_in:,} rows "
        f"({summary.rejected_rows:,} rejected) into {summary.output} "
        f"partition={summary.partition}"
    )
