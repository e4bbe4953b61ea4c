"""classification: zero-shot labels through /v1/chat/completions.

The model answers a strict JSON object ``{"label": <one of the labels>}``; the published column
``label`` keeps the answer as given, and the gate judges it against the labels asked for.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import polars as pl

from kinds.base import CHOICES, Kind, chat_body, chat_content, chat_items

if TYPE_CHECKING:
    from schemas.params import EnrichParams, KindOptions

SCHEMA_NAME = "classification"
DEFAULT_INSTRUCTIONS = (
    "Classify the user's text. Answer with the single label from the allowed set that fits best."
)


class Classification(Kind):
    name = "classification"
    endpoint = "/v1/chat/completions"
    suite = "classification"
    default_model = "mistral-small-latest"
    tokenizer = "chat"

    def check(self, options: KindOptions) -> None:
        super().check(options)
        labels = options.labels
        if len(labels) < 2 or len(set(labels)) != len(labels) or any(not x for x in labels):
            raise ValueError(
                "kind 'classification' needs options.labels: two or more distinct, "
                f"non-empty labels (got {labels!r})"
            )

    def result_options(self, options: KindOptions) -> dict[str, Any]:
        return {"labels": list(options.labels), "instructions": self.instructions(options)}

    def instructions(self, options: KindOptions) -> str:
        return options.instructions or DEFAULT_INSTRUCTIONS

    def output_names(self, options: KindOptions) -> list[str]:
        return ["label"]

    def body(self, params: EnrichParams, inputs: pl.Expr) -> pl.Expr:
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(params.options.labels)}},
            "required": ["label"],
            "additionalProperties": False,
        }
        return chat_body(self.instructions(params.options), SCHEMA_NAME, schema, 64, inputs)

    def answer_sample(self, options: KindOptions) -> str:
        return json.dumps({"label": max(options.labels, key=len)})

    def output_schema(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"choices": CHOICES}

    def items(self, body: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
        return chat_items(body, frame)

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
