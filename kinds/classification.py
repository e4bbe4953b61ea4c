"""classification: zero-shot labels through /v1/chat/completions.

The model answers a strict JSON object ``{"label": <one of the labels>}``; the published column
``label`` keeps the answer as given, and the gate judges it against the labels asked for.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from kinds.base import Column, StructuredChat, chat_content
from kinds.insight import Insight, bars, value_counts

if TYPE_CHECKING:
    from kinds.insight import PublishedRows
    from schemas.params import EnrichParams, KindOptions

DEFAULT_INSTRUCTIONS = (
    "Classify the user's text. Answer with the single label from the allowed set that fits best."
)

LABEL = "the label the model chose, one of {} (kept as answered: the validation gate checks it)"


class Classification(StructuredChat):
    name = "classification"
    summary = "one of your labels per text, by a chat model"
    options_shown = ("labels", "instructions", "model")
    options_required = ("labels",)
    options_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "labels": {"minItems": 2, "uniqueItems": True, "items": {"type": "string", "minLength": 1}}
    }
    suite = "classification"
    default_instructions = DEFAULT_INSTRUCTIONS
    max_answer_tokens = 64
    columns = (Column("label", "string", LABEL.format("options.labels")),)

    def check(self, options: KindOptions) -> None:
        super().check(options)
        labels = options.labels
        if len(labels) < 2 or len(set(labels)) != len(labels) or any(not x for x in labels):
            raise ValueError(
                "kind 'classification' needs options.labels: two or more distinct, "
                f"non-empty labels (got {labels!r})"
            )

    def answer_options(self, options: KindOptions) -> dict[str, Any]:
        return {"labels": list(options.labels)}

    def output_names(self, options: KindOptions) -> list[str]:
        return ["label"]

    def describe_columns(self, names: list[str], options: KindOptions) -> dict[str, str]:
        if "label" not in names:
            return {}
        return {"label": LABEL.format(", ".join(options.labels))}

    def answer_schema(self, options: KindOptions) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(options.labels)}},
            "required": ["label"],
            "additionalProperties": False,
        }

    def answer_sample(self, options: KindOptions) -> str:
        return json.dumps({"label": max(options.labels, key=len)})

    def results(self, items: pl.DataFrame, options: KindOptions) -> pl.DataFrame:
        # The label is kept as answered: the validation gate, not the parser, judges it.
        label = chat_content().str.json_path_match("$.label").alias("label")
        return items.select("custom_id", "position", label)

    def checks(
        self, enriched: pl.DataFrame, ids: pl.DataFrame, options: KindOptions
    ) -> pl.DataFrame:
        return pl.concat([ids, enriched.select("label")], how="horizontal")

    def suite_parameters(
        self, params: EnrichParams, columns: list[str], checks: pl.DataFrame
    ) -> dict[str, Any]:
        return {"labels": list(params.options.labels)}

    def insight(self, rows: PublishedRows, params: EnrichParams) -> list[Insight]:
        labels = tuple(params.options.labels)
        counts = value_counts(rows.scan(), "label", known=labels)
        return [Insight("Rows per label", counts, chart=bars("Rows per label", counts))]
