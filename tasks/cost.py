"""Cost: a price table the user can edit, token-based estimates, and the budget guard.

Prompt tokens are counted with Mistral's offline tokenizers while the request files are built
(``tasks.requests``), so the estimate covers exactly what would be sent. Completion tokens exist
only for chat classification; they are estimated as the JSON answer with the longest label.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from pydantic import ValidationError

import kinds
from schemas.params import EnrichParams
from schemas.refs import Estimate, PlanRef, ShardRef
from tasks.core import pricing
from tasks.core.keys import artifact_key
from tasks.core.pricing import (
    PriceTable,
    PriceTableError,
    avoided,
    check_budget,
    plan_markdown,
    usd,
)
from tasks.edges import storage
from tasks.edges.tokens import TOKENS

DEFAULT_PRICE_TABLE = Path(__file__).resolve().parent.parent / "schemas" / "prices.json"


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


@task(name="estimate")
def estimate(plan: PlanRef, shards: list[ShardRef], params: EnrichParams) -> Estimate:
    """Requests, tokens and cost of the run: an artifact, a log line and stdout; then the
    budget guard (raises before anything is submitted)."""
    prices = load_prices(params.price_table)
    answer = completion_tokens_per_text(params)
    guess = pricing.estimate(params, shards, prices, answer)
    saved = avoided(params, plan, prices, answer)
    markdown = plan_markdown(params, plan, shards, guess, saved)
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(params, "plan"),
        description=f"{'Dry run: ' if params.dry_run else ''}plan and cost estimate of "
        f"{params.kind.value} for {params.output} partition {plan.partition}",
    )
    if params.dry_run:  # a dry run's answer is the plan: on stdout too
        print(markdown, flush=True)
    get_run_logger().info(
        "Plan: %d texts in %d requests, %d prompt tokens, estimated %s; %d rows from the cache",
        guess.texts,
        guess.requests,
        guess.prompt_tokens,
        usd(guess.cost_usd),
        plan.cache_hit_rows,
    )
    if not params.dry_run:
        check_budget(params, guess.cost_usd, "this run")
    return guess


def completion_tokens_per_text(params: EnrichParams) -> int:
    """Estimated answer tokens per text: those of the kind's typical answer (0 when the kind
    generates no text)."""
    sample = kinds.kind_of(params).answer_sample(params.options)
    return TOKENS.text(sample) if sample else 0
