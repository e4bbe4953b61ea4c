"""Validate: Great Expectations suites over a narrow frame derived from the enriched rows.

Suites are declarative JSON files in ``schemas/expectations/`` with ``$PARAMETER`` placeholders
filled at run time. Vectors never reach GX: they are reduced with numpy to a few derived columns
(length, count of non-finite values, L2 norm) first, which keeps a million rows to seconds and a
few hundred megabytes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task
from prefect.logging import get_run_logger

import kinds
from schemas.params import EnrichParams
from schemas.refs import GateRef, PlanRef, WriteRef
from tasks.core import checks
from tasks.core.checks import EXAMPLES, data_docs
from tasks.core.layout import Staging
from tasks.edges import storage
from tasks.failpoints import failpoint


def gate(plan: PlanRef, params: EnrichParams, written: list[WriteRef]) -> GateRef:
    """Validate every staged row of the run: the rows suite, then the kind's suite. A failed
    suite is rendered as GX Data Docs under ``<staging>/data_docs``."""
    ids = pl.concat(
        [storage.read_parquet(w.ids_uri) for w in written if w.ids_uri], how="diagonal_relaxed"
    )
    runs: list[tuple[pl.DataFrame, str, dict[str, Any]]] = [
        (
            ids,
            "rows",
            {"input_rows": plan.rows, "max_rejected_fraction": params.max_rejected_fraction},
        )
    ]
    frames = [storage.read_parquet(w.checks_uri) for w in written if w.checks_uri]
    if frames:
        derived = pl.concat(frames, how="diagonal_relaxed")
        first = next(w.enriched_uri for w in written if w.enriched_uri)
        columns = storage.parquet_dataset(first).schema.names
        kind = kinds.kind_of(params)
        runs.append((derived, kind.suite, kind.suite_parameters(params, columns, derived)))
    results = [checks.validate(frame, suite, parameters) for frame, suite, parameters in runs]
    result_uri = Staging(plan.staging).validation()
    storage.write_json(result_uri, {r.suite: r.raw for r in results})
    docs_uri = None
    failed = [run for run, result in zip(runs, results, strict=True) if not result.success]
    if failed:
        docs_uri = Staging(plan.staging).data_docs()
        with tempfile.TemporaryDirectory() as tmp:
            for frame, suite, parameters in failed:
                data_docs(frame, suite, parameters, Path(tmp))
            storage.upload_tree(Path(tmp), docs_uri)
    rejected_examples = [str(v) for v in ids.filter(pl.col("_rejected"))["id"].head(EXAMPLES)]
    failures = [
        # An aggregate check names no rows by itself: show which rows were rejected.
        f.model_copy(update={"example_ids": rejected_examples}) if f.column == "_rejected" else f
        for r in results
        for f in r.failures
    ]
    return GateRef(
        success=not failed,
        evaluated=sum(r.evaluated for r in results),
        failures=failures,
        result_uri=result_uri,
        docs_uri=docs_uri,
    )


@task(name="validate")
def validate(plan: PlanRef, params: EnrichParams, written: list[WriteRef]) -> GateRef:
    verdict = gate(plan, params, written)
    logger = get_run_logger()
    if verdict.success:
        logger.info("Validation passed: %d expectations", verdict.evaluated)
        failpoint("validate")
    else:
        for failure in verdict.failures:
            logger.error("Validation failed: %s", failure.describe())
    return verdict
