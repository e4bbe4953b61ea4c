"""Publish (after the gate passed) or quarantine (after it failed).

A partition is one Parquet file, ``<output>/partition=<value>/part-0.parquet``. It is written in
full under staging first, then moved into place in one step: a rename on a local filesystem, a
server-side copy on S3, where an object appears whole or not at all. Readers therefore see the
previous partition or the new one, never a mix or a half; a run killed at any point leaves the
previous partition as it was. The manifest is written next, and the empty ``_SUCCESS`` marker last.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.artifacts import create_link_artifact
from prefect.logging import get_run_logger

from schemas.params import EnrichParams, Kind
from schemas.refs import GateRef, PlanRef, PublishRef, WriteRef
from tasks import events, layout, storage
from tasks.validate import expected_dimension


class ValidationFailedError(RuntimeError):
    """The gate refused the run's outputs; nothing was published."""


def combine(
    parts: list[str],
    target: str,
    dimension: int | None,
    after_part: Callable[[], None] | None = None,
) -> int:
    """Stream staged parts into one Parquet file (a row group per part); returns its rows.

    Embeddings become ``FixedSizeList(float32, dimension)`` here, once the gate has checked that
    every vector has that length.
    """
    fs, path = storage.arrow_filesystem(target)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for uri in parts:
            frame = storage.read_parquet(uri)
            if dimension is not None and isinstance(frame.schema["embedding"], pl.List):
                frame = frame.with_columns(pl.col("embedding").list.to_array(dimension))
            table = frame.to_arrow()
            if writer is None:
                no_dictionary = {"embedding"}
                writer = pq.ParquetWriter(
                    path,
                    table.schema,
                    filesystem=fs,
                    compression="lz4",
                    use_dictionary=[n for n in table.schema.names if n not in no_dictionary],
                )
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
            if after_part is not None:
                after_part()
    finally:
        if writer is not None:
            writer.close()
    return rows


def _published_dimension(params: EnrichParams, written: list[WriteRef]) -> int | None:
    if params.kind is not Kind.embeddings:
        return None
    dimension = expected_dimension(params)
    if dimension is not None:
        return dimension
    first = next(w.enriched_uri for w in written if w.enriched_uri)
    longest = storage.read_parquet(first)["embedding"].list.len().max()
    return longest if isinstance(longest, int) else None


def publish(
    plan: PlanRef,
    params: EnrichParams,
    written: list[WriteRef],
    verdict: GateRef,
    jobs: dict[str, str],
    run_id: str,
    after_part: Callable[[], None] | None = None,
) -> PublishRef:
    """Replace the partition (and its rejected rows) in one step each, then manifest, _SUCCESS."""
    data_uri = layout.data_file(params, plan.partition)
    rejected_uri = layout.rejected_file(params, plan.partition)
    enriched = [w.enriched_uri for w in written if w.enriched_uri]
    rejected = [w.rejected_uri for w in written if w.rejected_uri]
    published_rows = 0
    schema: pa.Schema | None = None
    if enriched:
        temporary = storage.join(plan.staging, "publish", layout.DATA_FILE)
        dimension = _published_dimension(params, written)
        published_rows = combine(enriched, temporary, dimension, after_part)
        schema = storage.parquet_dataset(temporary).schema
        storage.move_into_place(temporary, data_uri)
    else:  # every row was rejected (and the gate allowed it): the partition is emptied
        storage.remove(data_uri)
    if rejected:
        temporary = storage.join(plan.staging, "publish", "rejected.parquet")
        combine(rejected, temporary, None)
        storage.move_into_place(temporary, rejected_uri)
    else:
        storage.remove(rejected_uri)
    by_reason: dict[str, int] = {}
    for ref in written:
        for reason, count in ref.rejected_by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "run_key": plan.run_key,
        "published_at": datetime.now(UTC).isoformat(),
        "input": params.input,
        "input_fingerprint": plan.input_fingerprint,
        "partition": plan.partition,
        "kind": params.kind.value,
        "model": params.model,
        "options": params.result_options(),
        "counts": {
            "input_rows": plan.rows,
            "published_rows": published_rows,
            "rejected_rows": sum(w.rejected_rows for w in written),
            "rejected_by_reason": by_reason,
        },
        "jobs": jobs,
        "files": {
            "data": data_uri if enriched else None,
            "rejected": rejected_uri if rejected else None,
        },
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema] if schema else [],
        "validation": {
            "success": verdict.success,
            "expectations_evaluated": verdict.evaluated,
            "failures": [f.describe() for f in verdict.failures],
            "result": verdict.result_uri,
        },
    }
    manifest_uri = layout.manifest_file(params, plan.partition)
    storage.write_json(manifest_uri, manifest)
    storage.write_bytes(
        storage.join(layout.partition_folder(params, plan.partition), layout.SUCCESS_MARKER), b""
    )
    return PublishRef(
        data_uri=data_uri if enriched else None,
        rejected_uri=rejected_uri if rejected else None,
        manifest_uri=manifest_uri,
        rows=published_rows,
    )


def quarantine(plan: PlanRef, params: EnrichParams, run_id: str) -> str:
    """Move the run's staged outputs, validation result and Data Docs aside; returns where."""
    target = layout.quarantine(params, run_id)
    for folder in ("enriched", "rejected", "checks", "ids", "data_docs"):
        storage.move_tree(storage.join(plan.staging, folder), storage.join(target, folder))
    storage.move_tree(
        storage.join(plan.staging, "validation.json"), storage.join(target, "validation.json")
    )
    return target


def current_run_id(plan: PlanRef) -> str:
    from prefect.runtime import flow_run

    run = flow_run.id
    return str(run) if run else plan.run_key


@task(name="publish")
def publish_partition(
    plan: PlanRef,
    params: EnrichParams,
    written: list[WriteRef],
    verdict: GateRef,
    jobs: dict[str, str],
) -> PublishRef:
    ref = publish(plan, params, written, verdict, jobs, current_run_id(plan))
    get_run_logger().info(
        "Published %d rows to %s (manifest %s)", ref.rows, ref.data_uri, ref.manifest_uri
    )
    events.published(
        params,
        plan.partition,
        {"rows": ref.rows, "data_uri": ref.data_uri, "manifest_uri": ref.manifest_uri},
    )
    return ref


@task(name="quarantine")
def quarantine_run(plan: PlanRef, params: EnrichParams, verdict: GateRef) -> str:
    """Quarantine, link the Data Docs from the run, and fail with the expectations that failed."""
    run_id = current_run_id(plan)
    target = quarantine(plan, params, run_id)
    docs = storage.join(target, "data_docs", "index.html")
    create_link_artifact(
        link=docs if storage.is_remote(docs) else f"file://{docs}",
        link_text="Validation Data Docs",
        description=f"Why partition {plan.partition} of {params.output} was not published",
    )
    raise ValidationFailedError(
        f"Validation failed for {params.output} partition={plan.partition}; nothing was "
        f"published and the previous partition is unchanged. Failed: {verdict.message()}. "
        f"Staged data, validation result and Data Docs are in {target}."
    )
