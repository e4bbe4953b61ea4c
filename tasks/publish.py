"""Publish (after the gate passed) or quarantine (after it failed).

A partition is one Parquet file, ``<output>/partition=<value>/part-0.parquet``. It is written in
full under staging first, then moved into place in one step: a rename on a local filesystem, a
server-side copy on S3, where an object appears whole or not at all. Readers therefore see the
previous partition or the new one, never a mix or a half.

The data file, its rejected rows and its manifest are three objects, so they are published as a
unit: the data file's footer carries the publish record (run id, counts, the exact rejected-rows
object), rejected rows get a run-unique name, and the empty ``_SUCCESS`` marker is removed
first and written last. A run killed between two steps leaves ``_SUCCESS`` absent; the next run
of the partition (``repair``) completes the publish from the footer before doing anything else.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.logging import get_logger, get_run_logger

import kinds
from kinds import GATE_ONLY
from schemas import tables
from schemas.params import EnrichParams
from schemas.refs import GateRef, PlanRef, PublishRef, WriteRef
from tasks.core import layout, versions
from tasks.core.errors import TerminalError
from tasks.core.keys import artifact_key
from tasks.core.layout import Layout, Staging
from tasks.edges import events, storage
from tasks.failpoints import failpoint


class ValidationFailedError(TerminalError):
    """The gate refused the run's outputs; nothing was published."""

    expected = True


PUBLISH_KEY = b"enrich.publish"


def combine(
    parts: list[str],
    target: str,
    vectors: tuple[str, int] | None,
    after_part: Callable[[], None] | None = None,
    footer: dict[str, Any] | None = None,
    describe: Callable[[list[str]], Mapping[str, str]] | None = None,
) -> int:
    """Stream staged parts into one Parquet file (a row group per part); returns its rows.

    The kind's vector column (``vectors``: name and length) becomes ``FixedSizeList(float32,
    length)`` here, once the gate has checked every vector has that length; the gate-only result
    columns are left out. ``footer`` is stored in the file's key-value metadata, and each
    column's description (``describe``: the file's column names to their descriptions) in its
    field's metadata. The file is whole or absent: an error aborts it.
    """
    writer: pq.ParquetWriter | None = None
    rows = 0
    with storage.open_write(target) as sink:
        for uri in parts:
            frame = storage.read_parquet(uri).select(pl.exclude(f"^{GATE_ONLY}.*$"))
            if vectors is not None and isinstance(frame.schema[vectors[0]], pl.List):
                frame = frame.with_columns(pl.col(vectors[0]).list.to_array(vectors[1]))
            table = frame.to_arrow()
            if writer is None:
                schema = table.schema
                if describe is not None:
                    schema = _described(schema, describe(schema.names))
                if footer is not None:
                    schema = schema.with_metadata({PUBLISH_KEY: json.dumps(footer).encode()})
                writer = pq.ParquetWriter(
                    sink,
                    schema,
                    compression="lz4",
                    use_dictionary=[n for n in schema.names if not vectors or n != vectors[0]],
                )
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
            if after_part is not None:
                after_part()
        if writer is not None:
            writer.close()
    return rows


def _described(schema: pa.Schema, descriptions: Mapping[str, str]) -> pa.Schema:
    """``schema`` with each described field's description in the field's metadata."""
    fields = [
        field.with_metadata({tables.DESCRIPTION_KEY: descriptions[field.name].encode()})
        if field.name in descriptions
        else field
        for field in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


def _input_descriptions(params: EnrichParams, plan: PlanRef) -> dict[str, str]:
    """The input columns' descriptions: the input's own (its schema is read again) or where
    they were copied from."""
    try:
        schema: pa.Schema | None = storage.parquet_dataset(params.input).schema
    except storage.InputNotFoundError:  # gone since the plan: its columns are still described
        schema = None
    return tables.input_descriptions(plan.input_columns, params.input, schema)


def _published_vectors(params: EnrichParams, written: list[WriteRef]) -> tuple[str, int] | None:
    """The kind's vector column and its length: the model's, or the staged vectors' own."""
    kind = kinds.kind_of(params)
    if kind.vector_column is None:
        return None
    dimension = kind.vector_dimension(params)
    if dimension is None:
        first = next(w.enriched_uri for w in written if w.enriched_uri)
        longest = storage.read_parquet(first)[kind.vector_column].list.len().max()
        dimension = longest if isinstance(longest, int) else None
    return None if dimension is None else (kind.vector_column, dimension)


def footer_record(data_uri: str) -> dict[str, Any] | None:
    """The publish record stored in a published data file's footer (None: no such file)."""
    fs, path = storage.arrow_filesystem(data_uri)
    try:
        metadata = pq.read_metadata(path, filesystem=fs)
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    raw = (metadata.metadata or {}).get(PUBLISH_KEY)
    return json.loads(raw) if raw else None


def _manifest(record: dict[str, Any], data_uri: str | None) -> dict[str, Any]:
    """The manifest: the publish record plus what the data file itself says (rows, schema)."""
    if data_uri is None:
        return record | {"schema": []}
    fs, path = storage.arrow_filesystem(data_uri)
    file = pq.ParquetFile(path, filesystem=fs)
    schema = file.schema_arrow
    counts = record["counts"] | {"published_rows": file.metadata.num_rows}
    return record | {
        "counts": counts,
        "schema": [
            {"name": f.name, "type": str(f.type), "description": tables.field_description(f)}
            for f in schema
        ],
    }


def _finish(params: EnrichParams, partition: str, record: dict[str, Any]) -> None:
    """Make the partition's manifest and rejected rows those of ``record``, then ``_SUCCESS``."""
    data_uri = record["files"]["data"]
    storage.write_json(Layout.of(params).manifest_file(partition), _manifest(record, data_uri))
    keep = record["files"]["rejected"]
    for old in storage.list_files(Layout.of(params).rejected_folder(partition), ".parquet"):
        if keep is None or storage.filesystem(old)[1] != storage.filesystem(keep)[1]:
            storage.remove(old)
    marker = storage.join(Layout.of(params).publish_scratch(partition), layout.SUCCESS_MARKER)
    storage.write_bytes(marker, b"")  # empty: polars reads every non-empty file in the folder
    storage.move_into_place(marker, Layout.of(params).success_marker(partition))


def repair_published(params: EnrichParams, partition: str) -> str | None:
    """Finish a publish that a kill interrupted, so data, rejected rows and manifest describe
    the same run again. ``_SUCCESS`` exists only while they do: a publish removes it first and
    writes it last (empty: readers that scan the folder skip it). The data file's footer is
    the truth where it is newer than the manifest; an emptying publish writes its manifest
    before it removes the data.
    Returns the run id the partition now describes (None: nothing published yet)."""
    data_uri = Layout.of(params).data_file(partition)
    success = Layout.of(params).success_marker(partition)
    footer = footer_record(data_uri)
    manifest_uri = Layout.of(params).manifest_file(partition)
    manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else None
    if storage.exists(success):  # removed first and written last by every publish
        return str(manifest["run_id"]) if manifest else None
    if (
        manifest is not None
        and manifest["files"]["data"] is None
        and (footer is None or manifest["published_at"] > footer["published_at"])
    ):
        storage.remove(data_uri)  # an emptying publish died before it removed the old data
        winner: dict[str, Any] | None = {k: v for k, v in manifest.items() if k != "schema"}
    else:
        winner = footer
    if winner is None:
        return None
    get_logger("enrich.publish").warning(
        "Partition %s of %s was left mid-publish by a killed run; completing the publish of run %s",
        partition,
        params.output,
        winner["run_id"],
    )
    _finish(params, partition, winner)
    return str(winner["run_id"])


def publish_run(
    plan: PlanRef,
    params: EnrichParams,
    written: list[WriteRef],
    verdict: GateRef,
    jobs: dict[str, str],
    run_id: str,
    after_part: Callable[[], None] | None = None,
) -> PublishRef:
    """Publish the partition as one unit: stage the data (its footer names the run and its
    rejected rows), write the rejected rows under a run-unique name, remove ``_SUCCESS``, move
    the data into place, write the manifest, clean older rejected rows, write ``_SUCCESS``."""
    partition = plan.partition
    data_uri = Layout.of(params).data_file(partition)
    enriched = [w.enriched_uri for w in written if w.enriched_uri]
    rejected = [w.rejected_uri for w in written if w.rejected_uri]
    rejected_uri = Layout.of(params).rejected_file(partition, run_id) if rejected else None
    by_reason: dict[str, int] = {}
    for ref in written:
        for reason, count in ref.rejected_by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    model_versions = versions.add(*(w.model_versions for w in written))
    record: dict[str, Any] = {
        "run_id": run_id,
        "run_key": plan.run_key,
        "published_at": datetime.now(UTC).isoformat(),
        "input": params.input,
        "input_fingerprint": plan.input_fingerprint,
        "partition": partition,
        "kind": params.kind.value,
        "model": params.model,
        # The versions the service said answered the rows (the model itself where it names
        # none); more than one only when on_mixed_versions=accept, or a re-send fell short.
        "model_versions": model_versions,
        "mixed_model_versions": len(model_versions) > 1,
        "options": params.result_options(),
        "id_column": params.id_column,
        "text_column": params.text_column,
        "input_columns": plan.input_columns,
        "counts": {
            "input_rows": plan.rows,
            "published_rows": sum(w.enriched_rows for w in written),
            "rejected_rows": sum(w.rejected_rows for w in written),
            "rejected_by_reason": by_reason,
        },
        "jobs": jobs,
        "files": {"data": data_uri if enriched else None, "rejected": rejected_uri},
        "validation": {
            "success": verdict.success,
            "expectations_evaluated": verdict.evaluated,
            "failures": [f.describe() for f in verdict.failures],
            "result": verdict.result_uri,
        },
    }
    repair_published(params, partition)
    staged_data = Staging(plan.staging).publish_data()
    inputs = _input_descriptions(params, plan)
    rows = 0
    if enriched:
        vectors = _published_vectors(params, written)
        described = partial(tables.published_descriptions, inputs=inputs, params=params)
        rows = combine(
            enriched, staged_data, vectors, after_part, footer=record, describe=described
        )
    if rejected_uri is not None:
        described = partial(tables.rejected_descriptions, inputs=inputs)
        combine(rejected, rejected_uri, None, describe=described)
    storage.remove(Layout.of(params).success_marker(partition))
    if enriched:
        storage.move_into_place(staged_data, data_uri)
        failpoint("publish")
    else:  # every row was rejected (the gate allowed it): the manifest first, then emptying
        storage.write_json(Layout.of(params).manifest_file(partition), _manifest(record, None))
        failpoint("publish")
        storage.remove(data_uri)
    _finish(params, partition, record)
    return PublishRef(
        data_uri=data_uri if enriched else None,
        rejected_uri=rejected_uri,
        manifest_uri=Layout.of(params).manifest_file(partition),
        rows=rows,
    )


def quarantine_staging(plan: PlanRef, params: EnrichParams, run_id: str) -> str:
    """Move the run's staged outputs, validation result and Data Docs aside; returns where."""
    target = Layout.of(params).quarantine(run_id)
    for folder in ("enriched", "rejected", "checks", "ids", "data_docs"):
        storage.move_tree(storage.join(plan.staging, folder), storage.join(target, folder))
    storage.move_tree(Staging(plan.staging).validation(), Staging(target).validation())
    return target


def current_run_id(plan: PlanRef) -> str:
    from prefect.runtime import flow_run

    run = flow_run.id
    return str(run) if run else plan.run_key


@task(name="publish")
def publish(
    plan: PlanRef,
    params: EnrichParams,
    written: list[WriteRef],
    verdict: GateRef,
    jobs: dict[str, str],
) -> PublishRef:
    ref = publish_run(plan, params, written, verdict, jobs, current_run_id(plan))
    get_run_logger().info(
        "Published %d rows to %s (manifest %s)", ref.rows, ref.data_uri, ref.manifest_uri
    )
    events.published(
        params,
        plan.partition,
        {"rows": ref.rows, "data_uri": ref.data_uri, "manifest_uri": ref.manifest_uri},
    )
    return ref


# What a published run's staging keeps: the job records (which job answered which shard) and the
# validation result its manifest names. Rows, requests, results and staged outputs go.
KEPT_IN_STAGING = ("job.json", "create-intent.json", "validation.json")


def clean_staged_files(staging: str) -> int:
    """Remove the bulky part of a published run's staging; returns the files removed."""
    removed = 0
    for uri in storage.list_files(staging):
        if posixpath.basename(storage.filesystem(uri)[1]) not in KEPT_IN_STAGING:
            storage.remove(uri)
            removed += 1
    return removed


@task(name="clean-staging")
def clean_staging(plan: PlanRef) -> int:
    removed = clean_staged_files(plan.staging)
    get_run_logger().info(
        "Removed %d staged file(s) of the published run from %s (job records and the "
        "validation result are kept; keep_staging keeps everything)",
        removed,
        plan.staging,
    )
    return removed


@task(name="repair")
def repair(params: EnrichParams, partition: str) -> str | None:
    """Complete a publish of this partition that a killed run left half done."""
    return repair_published(params, partition)


def explain_quarantine(plan: PlanRef, params: EnrichParams, verdict: GateRef, target: str) -> None:
    """The validation table artifact and the Data Docs link artifact of a quarantined run."""
    docs = storage.join(target, "data_docs", "index.html")
    where = f"partition {plan.partition} of {params.output}"
    create_table_artifact(
        table=[
            {
                "check": f.plain or f.expectation,
                "rows failing": "" if f.unexpected_count is None else f"{f.unexpected_count:,}",
                "example ids": ", ".join(f.example_ids),
                "expectation": f"{f.suite}.{f.expectation}",
            }
            for f in verdict.failures
        ],
        key=artifact_key(params, "validation"),
        description=f"Why {where} was not published: the checks that failed",
    )
    link = storage.browser_link(docs)
    create_link_artifact(
        link=link or docs,
        link_text=f"Validation Data Docs ({docs})" if storage.is_remote(docs) else "Data Docs",
        key=artifact_key(params, "quarantine"),
        description=f"Data Docs of the failed checks of {where}; quarantined in {target}"
        + ("" if link else " (temporary credentials: no presigned link)"),
    )


@task(name="quarantine")
def quarantine(plan: PlanRef, params: EnrichParams, verdict: GateRef) -> str:
    """Quarantine, show why (a table of the failed checks, a link to the Data Docs), and fail
    with the checks that failed."""
    run_id = current_run_id(plan)
    target = quarantine_staging(plan, params, run_id)
    try:  # best effort: the run fails with the gate's message whatever happens here
        explain_quarantine(plan, params, verdict, target)
    except Exception as exc:  # an artifact must not hide the validation failure
        get_run_logger().warning("Could not create the quarantine artifacts: %s", exc)
    raise ValidationFailedError(
        f"Validation failed for {params.output} partition={plan.partition}; nothing was "
        f"published and the previous partition is unchanged. Failed: {verdict.message()}. "
        f"Staged data, validation result and Data Docs are in {target}."
    )
