"""Validate: Great Expectations suites over a narrow frame derived from the enriched rows.

Suites are declarative JSON files in ``schemas/expectations/`` with ``$PARAMETER`` placeholders
filled at run time. Vectors never reach GX: they are reduced with numpy to a few derived columns
(length, count of non-finite values, L2 norm) first, which keeps a million rows to seconds and a
few hundred megabytes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import kinds
from schemas.params import EnrichParams
from schemas.refs import FailedCheck

SUITES_DIR = Path(__file__).resolve().parents[2] / "schemas" / "expectations"
EXAMPLES = 5
_GX_LOCK = threading.Lock()  # GX contexts and datasources are not safe across threads


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    success: bool
    evaluated: int
    failures: list[FailedCheck]
    raw: dict[str, Any]  # the GX validation result, JSON-ready, for the manifest and Data Docs


def suite_definition(name: str) -> dict[str, Any]:
    path = SUITES_DIR / f"{name}.json"
    definition: dict[str, Any] = json.loads(path.read_text())
    return definition


def derive(params: EnrichParams, enriched: pl.DataFrame) -> pl.DataFrame:
    """The narrow frame GX validates for the run's kind: the id plus derived columns."""
    ids = enriched.select(pl.col(params.id_column).alias("id"))
    return kinds.kind_of(params).checks(enriched, ids, params.options)


def rows_frame(published_ids: pl.Series, rejected_ids: pl.Series) -> pl.DataFrame:
    """One row per input row: its id and whether it was rejected."""
    return pl.concat(
        [
            pl.DataFrame({"id": published_ids, "_rejected": False}),
            pl.DataFrame({"id": rejected_ids.cast(published_ids.dtype), "_rejected": True}),
        ]
    )


@lru_cache(maxsize=1)
def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _suite(name: str) -> Any:
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    definition = suite_definition(name)
    return gx.ExpectationSuite(
        name=definition["name"],
        expectations=[
            ExpectationConfiguration(**e).to_domain_obj() for e in definition["expectations"]
        ],
    )


def data_docs(frame: pl.DataFrame, suite_name: str, parameters: dict[str, Any], site: Path) -> Path:
    """Run the suite again through a checkpoint that renders GX Data Docs (HTML) into ``site``;
    returns the index page. Used for failed runs only: rendering costs seconds and 4 MB."""
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction

    data = frame.to_pandas(use_pyarrow_extension_array=True)
    with _GX_LOCK:
        context = gx.get_context(mode="ephemeral")
        context.add_data_docs_site(
            site_name="enrich",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(site),
                },
            },
        )
        suite = context.suites.add(_suite(suite_name))
        source = context.data_sources.add_pandas(suite_name)
        batch = source.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe(
            suite_name
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=suite_name)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=suite_name,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="docs", site_names=["enrich"])],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": ["id"],
                    "partial_unexpected_count": EXAMPLES,
                },
            )
        )
        checkpoint.run(batch_parameters={"dataframe": data}, expectation_parameters=parameters)
    return site / "index.html"


def validate(frame: pl.DataFrame, suite_name: str, parameters: dict[str, Any]) -> SuiteResult:
    """Run a suite over ``frame`` (which has an ``id`` column for examples)."""
    data = frame.to_pandas(use_pyarrow_extension_array=True)
    with _GX_LOCK:
        context = _context()
        name = f"{suite_name}-{threading.get_ident()}"
        source = context.data_sources.add_or_update_pandas(name)
        asset = source.add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe(name).get_batch(
            batch_parameters={"dataframe": data}
        )
        outcome = batch.validate(
            _suite(suite_name),
            expectation_parameters=parameters,
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["id"],
                "partial_unexpected_count": EXAMPLES,
            },
        )
        context.data_sources.delete(name)
    raw = {  # as the suite states them: a limit keeps its parameter's name
        (e["type"], e["kwargs"].get("column")): e["kwargs"]
        for e in suite_definition(suite_name)["expectations"]
    }
    failures = []
    for result in outcome.results:
        if result.success:
            continue
        details = result.result or {}
        index_list = details.get("partial_unexpected_index_list") or []
        examples = [row.get("id") for row in index_list[:EXAMPLES] if isinstance(row, dict)]
        observed = details.get("observed_value")
        config = result.expectation_config
        written = raw.get((config.type, config.kwargs.get("column")), config.kwargs)
        kwargs = {k: _resolved(v, parameters) for k, v in written.items()}
        failures.append(
            FailedCheck(
                suite=suite_name,
                expectation=config.type,
                column=kwargs.get("column"),
                unexpected_count=details.get("unexpected_count"),
                example_ids=[str(_plain(v)) for v in examples],
                observed=None if observed is None else str(_plain(observed)),
                plain=in_plain_words(
                    config.type, kwargs, details.get("unexpected_count"), _plain(observed)
                ),
            )
        )
    return SuiteResult(
        suite=suite_name,
        success=bool(outcome.success),
        evaluated=len(outcome.results),
        failures=failures,
        raw=outcome.to_json_dict(),
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _resolved(value: Any, parameters: dict[str, Any]) -> Any:
    """A suite's ``{"$PARAMETER": name}`` placeholder replaced by the run's value."""
    if isinstance(value, dict) and "$PARAMETER" in value:
        name = value["$PARAMETER"]
        return f"{name} = {parameters[name]}" if name in parameters else name
    return value


def percent(fraction: float) -> str:
    """0.002 -> '0.2 %', 0.25 -> '25 %', 1e-05 -> '0.001 %'."""
    return f"{fraction * 100:.3g} %"


# What a failed expectation means: {count} rows failing, {column}, {low}/{high} its bounds (the
# run's own limits), {value} the expected value, {observed} what the check measured.
PLAIN_WORDS = {
    "expect_table_row_count_to_equal": "{observed} rows accounted for where the input has {value}",
    "expect_column_values_to_not_be_null": "{count} without a {column}",
    "expect_column_values_to_be_unique": "{count} whose {column} is not unique",
    "expect_column_values_to_be_in_set": "{count} whose {column} is outside the allowed values",
    "expect_column_values_to_be_between": "{count} whose {column} is outside [{low}, {high}]",
    "expect_column_mean_to_be_between": "mean of {column} is {observed}, outside [{low}, {high}]",
}


def in_plain_words(
    expectation: str, kwargs: dict[str, Any], unexpected: int | None, observed: Any
) -> str:
    """What a failed expectation means, as a person would say it, with the run's limits."""
    column, high = kwargs.get("column"), kwargs.get("max_value")
    if expectation == "expect_column_mean_to_be_between" and column == "_rejected":
        share = percent(float(observed)) if isinstance(observed, int | float) else observed
        return f"{share} of rows rejected, more than {high}"
    if expectation == "expect_column_values_to_be_between" and high == kwargs.get("min_value"):
        return f"{unexpected or 0:,} row(s) whose {column} is not {high}"
    template = PLAIN_WORDS.get(expectation)
    if template is None:
        return f"{expectation} on {column}" if column else expectation
    return template.format(
        count=f"{unexpected or 0:,} row(s)",
        column=column,
        low=kwargs.get("min_value"),
        high=high,
        value=kwargs.get("value"),
        observed=observed,
    )
