"""moderation and chat-moderation: per-category flags and scores.

Published columns: ``flagged`` (any category flagged), ``category_<name>`` (bool) and
``score_<name>`` (float64) per category, names as the model returns them. chat-moderation sends a
conversation (a list of {role, content}) per row, one per request line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from kinds.base import (
    MESSAGES,
    Kind,
    Packing,
    first_result,
    json_body,
    named,
    results_items,
    score_range,
)

if TYPE_CHECKING:
    from schemas.params import EnrichParams, KindOptions


class Moderation(Kind):
    name = "moderation"
    endpoint = "/v1/moderations"
    suite = "moderation"
    default_model = "mistral-moderation-latest"
    packing: ClassVar[Packing | None] = Packing()
    named_results = True

    def output_names(self, options: KindOptions) -> list[str]:
        return ["flagged"]

    def body(self, params: EnrichParams, inputs: pl.Expr) -> pl.Expr:
        return json_body(inputs.alias("input"))

    def output_schema(self, sample: dict[str, Any]) -> dict[str, Any]:
        names = list((first_result(sample).get("category_scores") or {}).keys())
        return {
            "results": pl.List(
                pl.Struct(
                    {
                        "categories": named(names, pl.Boolean),
                        "category_scores": named(names, pl.Float64),
                    }
                )
            )
        }

    def items(self, body: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
        return results_items(body, frame)

    def results(self, items: pl.DataFrame, options: KindOptions) -> pl.DataFrame:
        categories = items["item"].struct.field("categories").struct.unnest()
        scores = items["item"].struct.field("category_scores").struct.unnest()
        flags = categories.rename({c: f"category_{c}" for c in categories.columns})
        values = scores.rename({c: f"score_{c}" for c in scores.columns})
        flagged = pl.any_horizontal(pl.all()).alias("flagged") if flags.width else pl.lit(False)
        return pl.concat(
            [items.select("custom_id", "position"), flags.select(flagged), flags, values],
            how="horizontal",
        )

    def checks(
        self, enriched: pl.DataFrame, ids: pl.DataFrame, options: KindOptions
    ) -> pl.DataFrame:
        consistent = pl.col("flagged") == pl.any_horizontal(pl.col("^category_.*$"))
        derived = enriched.select(
            *score_range("^score_.*$"), consistent.fill_null(False).alias("flagged_consistent")
        )
        return pl.concat([ids, derived], how="horizontal")


class ChatModeration(Moderation):
    name = "chat-moderation"
    endpoint = "/v1/chat/moderations"
    input = MESSAGES
    packing = None
