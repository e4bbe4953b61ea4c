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
    Column,
    Kind,
    Packing,
    first_result,
    json_body,
    named,
    results_items,
    score_range,
)
from kinds.insight import Insight, histogram

if TYPE_CHECKING:
    from kinds.insight import PublishedRows
    from schemas.params import EnrichParams, KindOptions

QUANTILES = (0.5, 0.9, 0.99)


class Moderation(Kind):
    name = "moderation"
    summary = "category flags and scores per text (/v1/moderations)"
    endpoint = "/v1/moderations"
    suite = "moderation"
    default_model = "mistral-moderation-latest"
    packing: ClassVar[Packing | None] = Packing()
    named_results = True
    columns = (
        Column("flagged", "bool", "whether the model flagged at least one category"),
        Column(
            "category_<name>",
            "bool",
            "whether the model flagged category <name> (a column per category the model "
            "returns, named as it names them: 11 for mistral-moderation-latest)",
        ),
        Column("score_<name>", "float64", "the model's score for category <name>, 0 to 1"),
    )

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

    def insight(self, rows: PublishedRows, params: EnrichParams) -> list[Insight]:
        frame = rows.scan()
        names = frame.collect_schema().names()
        categories = [
            n.removeprefix("score_")
            for n in names
            if n.startswith("score_") and f"category_{n.removeprefix('score_')}" in names
        ]
        if not categories:
            return []
        highest = pl.max_horizontal(pl.col(f"score_{c}") for c in categories)
        # A line of the table per category, after one for any category: a row's highest score.
        lines = [("(any category)", pl.col("flagged"), highest)]
        lines += [(c, pl.col(f"category_{c}"), pl.col(f"score_{c}")) for c in categories]
        aggregates = [pl.len().alias("rows")]
        for i, (_, flag, score) in enumerate(lines):
            aggregates.append(flag.cast(pl.Int64).sum().alias(f"{i}:flagged"))
            aggregates += [score.quantile(q).alias(f"{i}:{q}") for q in QUANTILES]
            aggregates.append(score.max().alias(f"{i}:max"))
        stats = frame.select(aggregates).collect(engine="streaming").row(0, named=True)
        table = pl.DataFrame(
            [
                {
                    "category": name,
                    "flagged rows": stats[f"{i}:flagged"],
                    "flagged %": _percent(stats[f"{i}:flagged"], stats["rows"]),
                    **{f"score p{q * 100:g}": _rounded(stats[f"{i}:{q}"]) for q in QUANTILES},
                    "score max": _rounded(stats[f"{i}:max"]),
                }
                for i, (name, _, _) in enumerate(lines)
            ]
        )
        title = "Flagged rate and score quantiles per category"
        chart = histogram(frame, highest, (0.0, 1.0), "Highest category score per row", "score")
        return [Insight(title, table, chart=chart)]


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class ChatModeration(Moderation):
    name = "chat-moderation"
    summary = "category flags and scores per conversation (/v1/chat/moderations)"
    endpoint = "/v1/chat/moderations"
    input = MESSAGES
    packing = None
