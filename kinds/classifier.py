"""classifier: a fine-tuned classifier through /v1/classifications.

Published columns per target: ``<target>_label`` (the top label) and ``<target>_score_<label>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from kinds.base import (
    Column,
    Kind,
    Packing,
    first_result,
    json_body,
    named,
    results_items,
    score_range,
)
from kinds.insight import Insight, bars, value_counts

if TYPE_CHECKING:
    from kinds.insight import PublishedRows
    from schemas.params import EnrichParams, KindOptions


class Classifier(Kind):
    name = "classifier"
    summary = "labels per target from your fine-tuned classifier (/v1/classifications)"
    options_shown = ("classifier_model",)
    options_required = ("classifier_model",)
    options_schema: ClassVar[dict[str, dict[str, Any]]] = {"classifier_model": {"minLength": 1}}
    endpoint = "/v1/classifications"
    suite = "classifier"
    packing = Packing()
    named_results = True
    columns = (
        Column(
            "<target>_label",
            "string",
            "the label of target <target> with the highest score (a target and its labels are "
            "named as the classifier names them)",
        ),
        Column(
            "<target>_score_<label>",
            "float64",
            "the classifier's score for label <label> of target <target>",
        ),
    )

    def model(self, options: KindOptions) -> str:
        model = options.classifier_model or options.model
        if not model:
            raise ValueError(
                "kind 'classifier' needs options.classifier_model, e.g. "
                "'ft:classifier:ministral-3b-latest:...'"
            )
        return model

    def check(self, options: KindOptions) -> None:
        super().check(options)
        self.model(options)

    def body(self, params: EnrichParams, inputs: pl.Expr) -> pl.Expr:
        return json_body(inputs.alias("input"))

    def output_schema(self, sample: dict[str, Any]) -> dict[str, Any]:
        targets = {
            target: list(((spec or {}).get("scores") or {}).keys())
            for target, spec in first_result(sample).items()
        }
        return {
            "results": pl.List(
                pl.Struct(
                    {
                        target: pl.Struct({"scores": named(labels, pl.Float64)})
                        for target, labels in targets.items()
                    }
                )
            )
        }

    def items(self, body: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
        return results_items(body, frame)

    def results(self, items: pl.DataFrame, options: KindOptions) -> pl.DataFrame:
        parts = [items.select("custom_id", "position")]
        for target in items["item"].struct.fields:
            scores = items["item"].struct.field(target).struct.field("scores").struct.unnest()
            labels = scores.columns
            top = scores.select(pl.concat_list(pl.all()).list.arg_max().alias("i"))["i"]
            parts.append(
                pl.DataFrame({f"{target}_label": pl.Series(labels, dtype=pl.String).gather(top)})
            )
            parts.append(scores.rename({label: f"{target}_score_{label}" for label in labels}))
        return pl.concat(parts, how="horizontal")

    def checks(
        self, enriched: pl.DataFrame, ids: pl.DataFrame, options: KindOptions
    ) -> pl.DataFrame:
        present = pl.sum_horizontal(pl.col("^.*_label$").is_not_null()).alias("labels_present")
        derived = enriched.select(*score_range("^.*_score_.*$"), present)
        return pl.concat([ids, derived], how="horizontal")

    def suite_parameters(
        self, params: EnrichParams, columns: list[str], checks: pl.DataFrame
    ) -> dict[str, Any]:
        return {"targets": sum(1 for c in columns if c.endswith("_label"))}

    def insight(self, rows: PublishedRows, params: EnrichParams) -> list[Insight]:
        frame = rows.scan()
        names = frame.collect_schema().names()
        # A target has a label column and score columns; an input column ending in _label has not.
        targets = [
            name.removesuffix("_label")
            for name in names
            if name.endswith("_label")
            and any(n.startswith(name.removesuffix("label") + "score_") for n in names)
        ]
        found = []
        for target in targets:
            counts = value_counts(frame, f"{target}_label")
            title = f"Rows per label of target {target}"
            found.append(Insight(title, counts, chart=bars(title, counts)))
        return found
