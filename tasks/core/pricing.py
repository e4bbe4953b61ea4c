"""Prices and estimates: the price table, what a run is estimated to cost, the budget guard."""

from __future__ import annotations

import fnmatch
import math

from pydantic import BaseModel, ConfigDict, Field

from schemas.params import EnrichParams
from schemas.refs import Estimate, PlanRef, ShardRef
from tasks.core.errors import TerminalError


class BudgetExceededError(TerminalError):
    """The estimate is over ``max_cost_usd``: nothing was submitted."""

    expected = True


class PriceTableError(TerminalError):
    """The price table cannot be read or has no price for the model."""

    expected = True


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(default=0.0, ge=0)


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    about: str = ""
    currency: str = "USD"
    per_tokens: int = Field(default=1_000_000, gt=0)
    batch_discount: float = Field(default=0.5, ge=0, lt=1)
    models: dict[str, Price]
    source: str = ""

    def price(self, model: str) -> tuple[str, Price] | None:
        """The entry for ``model``: its exact id, else the longest matching pattern."""
        if model in self.models:
            return model, self.models[model]
        patterns = [p for p in self.models if fnmatch.fnmatchcase(model, p)]
        if not patterns:
            return None
        best = max(patterns, key=len)
        return best, self.models[best]

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Batch cost in US dollars; None when the table has no price for the model."""
        found = self.price(model)
        if found is None:
            return None
        _, price = found
        full = (prompt_tokens * price.input + completion_tokens * price.output) / self.per_tokens
        return round(full * (1 - self.batch_discount), 10)

    def describe(self, model: str) -> str:
        found = self.price(model)
        if found is None:
            return f"no price for {model} in {self.source}"
        key, price = found
        return (
            f"{key}: ${price.input:g} input, ${price.output:g} output per "
            f"{self.per_tokens:,} tokens, batch -{self.batch_discount:.0%} ({self.source})"
        )


def check_budget(params: EnrichParams, estimated_usd: float | None, what: str) -> None:
    """Refuse (before anything is submitted) when ``estimated_usd`` is over ``max_cost_usd``."""
    budget = params.max_cost_usd
    if budget is None:
        return
    if estimated_usd is None:
        raise BudgetExceededError(
            f"max_cost_usd is set to {usd(budget)} but the price table has no price for model "
            f"{params.model}, so {what} cannot be estimated; nothing was submitted. Add the "
            "model to the price table (price_table parameter) or unset max_cost_usd."
        )
    if estimated_usd > budget:
        raise BudgetExceededError(
            f"{what} is estimated at {usd(estimated_usd)}, over max_cost_usd = {usd(budget)}; "
            "nothing was submitted. Raise max_cost_usd, unset it, or enrich fewer rows (filter "
            "the input); the plan artifact and a dry run (the dry_run parameter) show the "
            "estimate."
        )


def estimate(
    params: EnrichParams, shards: list[ShardRef], prices: PriceTable, answer_tokens: int
) -> Estimate:
    """What sending ``shards`` costs: their prompt tokens, and ``answer_tokens`` per text."""
    texts = sum(s.texts for s in shards)
    prompt = sum(s.tokens for s in shards)
    completion = texts * answer_tokens
    return Estimate(
        model=params.model,
        texts=texts,
        requests=sum(s.requests for s in shards),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=prices.cost(params.model, prompt, completion),
        price=prices.describe(params.model),
    )


def avoided(
    params: EnrichParams, plan: PlanRef, prices: PriceTable, answer_tokens: int
) -> float | None:
    """What the cache hits would have cost, at today's prices."""
    completion = plan.cache_hit_texts * answer_tokens
    return prices.cost(params.model, plan.cache_hit_tokens, completion)


def usd(value: float | None) -> str:
    """Dollars with the precision the amount needs: cents from a dollar up, three significant
    digits below it ($0.001 stays $0.001, not $0.00)."""
    if value is None:
        return "unknown (no price)"
    if value == 0 or abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = max(2, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}".rstrip("0")
    return f"${text}{'0' * (2 - len(text.partition('.')[2]))}"


def plan_markdown(
    params: EnrichParams,
    plan: PlanRef,
    shards: list[ShardRef],
    guess: Estimate,
    saved: float | None,
) -> str:
    budget = "none" if params.max_cost_usd is None else usd(params.max_cost_usd)
    rejected = plan.rows - plan.rows_to_send
    return "\n".join(
        [
            f"# Plan{' (dry run: nothing submitted)' if params.dry_run else ''}: "
            f"{params.kind.value} with `{params.model}`",
            "",
            "| | |",
            "|---|---|",
            f"| input | `{params.input}` |",
            f"| rows | {plan.rows:,} ({rejected:,} rejected before sending) |",
            f"| from the cache | {plan.cache_hit_rows:,} rows, {plan.cache_hit_texts:,} texts, "
            f"{plan.cache_hit_tokens:,} tokens: {usd(saved)} avoided |",
            f"| to send | {guess.texts:,} texts in {guess.requests:,} requests, "
            f"{len(shards)} job(s) |",
            f"| tokens (estimated) | {guess.prompt_tokens:,} prompt, "
            f"{guess.completion_tokens:,} completion |",
            f"| estimated cost | {usd(guess.cost_usd)} |",
            f"| budget (max_cost_usd) | {budget} |",
            f"| price | {guess.price} |",
            f"| cache | `{plan.cache_folder or 'off'}` ({params.cache_mode.value}) |",
            "",
        ]
    )
