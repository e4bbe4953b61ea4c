"""Cost: a price table the user can edit, token-based estimates, and the budget guard.

Prompt tokens are counted with Mistral's offline tokenizers while the request files are built
(``tasks.requests``), so the estimate covers exactly what would be sent. Completion tokens exist
only for chat classification; they are estimated as the JSON answer with the longest label.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import kinds
from schemas.params import EnrichParams
from schemas.refs import Estimate, PlanRef, ShardRef
from tasks import storage
from tasks.core.errors import TerminalError
from tasks.tokens import TokenCounter

DEFAULT_PRICE_TABLE = Path(__file__).resolve().parent.parent / "schemas" / "prices.json"

_tokens = TokenCounter()


class BudgetExceededError(TerminalError):
    """The estimate is over ``max_cost_usd``: nothing was submitted."""


class PriceTableError(TerminalError):
    """The price table cannot be read or has no price for the model."""


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


def load_prices(uri: str | None) -> PriceTable:
    """The price table at ``uri`` (a path or s3:// URI), or the project's default."""
    source = uri or str(DEFAULT_PRICE_TABLE)
    try:
        with storage.open_read(source) as handle:
            raw = json.load(handle)
        return PriceTable.model_validate({**raw, "source": source})
    except FileNotFoundError as exc:
        raise PriceTableError(f"the price table {source} does not exist") from exc
    except (json.JSONDecodeError, ValidationError) as exc:
        raise PriceTableError(
            f"the price table {source} is not valid: {exc}. It needs "
            '{"models": {"<model or pattern>": {"input": <usd>, "output": <usd>}}, ...}'
        ) from exc


def completion_tokens_per_text(params: EnrichParams) -> int:
    """Estimated answer tokens per text: those of the kind's typical answer (0 when the kind
    generates no text)."""
    sample = kinds.kind_of(params).answer_sample(params.options)
    return _tokens.text(sample) if sample else 0


def check_budget(params: EnrichParams, estimated_usd: float | None, what: str) -> None:
    """Refuse (before anything is submitted) when ``estimated_usd`` is over ``max_cost_usd``."""
    budget = params.max_cost_usd
    if budget is None:
        return
    if estimated_usd is None:
        raise BudgetExceededError(
            f"max_cost_usd is set to ${budget:,.2f} but the price table has no price for model "
            f"{params.model}, so {what} cannot be estimated; nothing was submitted. Add the "
            "model to the price table (price_table parameter) or unset max_cost_usd."
        )
    if estimated_usd > budget:
        raise BudgetExceededError(
            f"{what} is estimated at ${estimated_usd:,.4f}, over max_cost_usd=${budget:,.2f}; "
            "nothing was submitted. Raise max_cost_usd, unset it, or enrich fewer rows (filter "
            "the input) — the plan artifact and `--dry-run` show the estimate."
        )


def estimate(params: EnrichParams, shards: list[ShardRef], prices: PriceTable) -> Estimate:
    texts = sum(s.texts for s in shards)
    prompt = sum(s.tokens for s in shards)
    completion = texts * completion_tokens_per_text(params)
    return Estimate(
        model=params.model,
        texts=texts,
        requests=sum(s.requests for s in shards),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=prices.cost(params.model, prompt, completion),
        price=prices.describe(params.model),
    )


def avoided(params: EnrichParams, plan: PlanRef, prices: PriceTable) -> float | None:
    """What the cache hits would have cost, at today's prices."""
    completion = plan.cache_hit_texts * completion_tokens_per_text(params)
    return prices.cost(params.model, plan.cache_hit_tokens, completion)


def _usd(value: float | None) -> str:
    return "unknown (no price)" if value is None else f"${value:,.4f}"


def plan_markdown(
    params: EnrichParams,
    plan: PlanRef,
    shards: list[ShardRef],
    guess: Estimate,
    saved: float | None,
) -> str:
    budget = "none" if params.max_cost_usd is None else f"${params.max_cost_usd:,.2f}"
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
            f"{plan.cache_hit_tokens:,} tokens: {_usd(saved)} avoided |",
            f"| to send | {guess.texts:,} texts in {guess.requests:,} requests, "
            f"{len(shards)} job(s) |",
            f"| tokens (estimated) | {guess.prompt_tokens:,} prompt, "
            f"{guess.completion_tokens:,} completion |",
            f"| estimated cost | {_usd(guess.cost_usd)} |",
            f"| budget (max_cost_usd) | {budget} |",
            f"| price | {guess.price} |",
            f"| cache | `{plan.cache_folder or 'off'}` ({params.cache_mode.value}) |",
            "",
        ]
    )


@task(name="estimate")
def estimate_run(plan: PlanRef, shards: list[ShardRef], params: EnrichParams) -> Estimate:
    """Requests, tokens and cost of the run: an artifact, a log line and stdout; then the
    budget guard (raises before anything is submitted)."""
    prices = load_prices(params.price_table)
    guess = estimate(params, shards, prices)
    saved = avoided(params, plan, prices)
    markdown = plan_markdown(params, plan, shards, guess, saved)
    create_markdown_artifact(
        markdown=markdown,
        key=f"enrich-plan-{plan.run_key}",
        description=f"Plan and cost estimate for {params.output}",
    )
    print(markdown, flush=True)  # `enrich run --dry-run` shows the plan on stdout
    get_run_logger().info(
        "Plan: %d texts in %d requests, %d prompt tokens, estimated %s; %d rows from the cache",
        guess.texts,
        guess.requests,
        guess.prompt_tokens,
        _usd(guess.cost_usd),
        plan.cache_hit_rows,
    )
    if not params.dry_run:
        check_budget(params, guess.cost_usd, "this run")
    return guess
