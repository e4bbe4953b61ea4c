"""The pure layer (``tasks.core``), table-driven: identities, input checks, joins, prices, quota
waves and the run ledger. No Prefect, no network, no object storage."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from schemas.params import EnrichParams, KindOptions
from schemas.refs import CollectRef, Estimate, JobRef, ShardRef
from tasks.core import pricing
from tasks.core.columns import BUCKET, REJECT, TEXT_KEY, TEXT_KEY_2
from tasks.core.inputs import InputError, check_columns, check_ids, reject_reason
from tasks.core.joins import LostRowsError, enrich_rows
from tasks.core.keys import job_key, key_seeds, run_key, text_keys
from tasks.core.layout import Layout, Staging
from tasks.core.ledger import RunLedger
from tasks.core.parsing import answered_by
from tasks.core.pricing import BudgetExceededError, PriceTable, check_budget
from tasks.core.quota import QuotaError, waves


def params(**overrides: Any) -> EnrichParams:
    base: dict[str, Any] = {"input": "in", "id_column": "id", "text_column": "text"}
    return EnrichParams.model_validate(base | {"output": "out"} | overrides)


LABELS = {"kind": "classification", "options": KindOptions(labels=["a", "b"])}


# Identities -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({}, True),
        ({"shard_size": 5}, True),  # how rows are cut does not change a text's result
        ({"poll_interval": 1.0}, True),
        ({"model": "codestral-embed"}, False),
        ({"kind": "moderation"}, False),
        (LABELS, False),
        (LABELS | {"options": KindOptions(labels=["a", "b"], instructions="Say a or b.")}, False),
    ],
)
def test_a_texts_key_changes_with_what_changes_its_result(
    change: dict[str, Any], same: bool
) -> None:
    if "model" in change:
        change = {"options": KindOptions(model=change["model"])}
    assert (key_seeds(params()) == key_seeds(params(**change))) is same


def test_text_keys_are_two_independent_hashes_of_the_nfc_text() -> None:
    frame = pl.DataFrame({"text": ["caf\u00e9", "cafe\u0301", "cafe"]})  # é composed, decomposed
    keys = frame.select(text_keys(params()))
    assert keys[TEXT_KEY][0] == keys[TEXT_KEY][1] != keys[TEXT_KEY][2]
    assert keys[TEXT_KEY_2][0] == keys[TEXT_KEY_2][1] and keys[TEXT_KEY][0] != keys[TEXT_KEY_2][0]


@pytest.mark.parametrize(
    ("args", "differs"),
    [
        (("fp", "2026-11-22"), False),
        (("other", "2026-11-22"), True),
        (("fp", "2026-11-23"), True),
    ],
)
def test_run_and_job_keys_are_deterministic(args: tuple[str, str], differs: bool) -> None:
    assert (run_key(params(), *args) != run_key(params(), "fp", "2026-11-22")) is differs
    assert run_key(params(shard_size=7), "fp", "2026-11-22") != run_key(
        params(), "fp", "2026-11-22"
    )
    assert job_key("h", {"a": 1, "b": 2}) == job_key("h", {"b": 2, "a": 1}) != job_key("h2", {})


# Input checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "run", "says"),
    [
        (pa.schema([("id", pa.int64())]), params(), "text column 'text' is not in src"),
        (pa.schema([("text", pa.string())]), params(), "id column 'id' is not in src"),
        (pa.schema([("id", pa.int64()), ("text", pa.int64())]), params(), "needs a string column"),
        (
            pa.schema([("id", pa.int64()), ("text", pa.string())]),
            params(kind="chat-moderation"),
            "needs a list of {role: string, content: string} structs",
        ),
        (
            pa.schema([("id", pa.int64()), ("text", pa.string()), ("label", pa.string())]),
            params(**LABELS),
            "already has column(s) 'label'",
        ),
    ],
)
def test_input_columns_are_checked_before_anything_is_spent(
    schema: pa.Schema, run: EnrichParams, says: str
) -> None:
    with pytest.raises(InputError, match=re.escape(says)):
        check_columns(schema, run, "src")


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        ([1, None, 3], "null"),
        ([1, 2, 2, 3, 3], "2 duplicated id(s) (e.g. 2, 3)"),
    ],
)
def test_ids_must_be_non_null_and_unique(ids: list[Any], says: str) -> None:
    with pytest.raises(InputError, match=re.escape(says)):
        check_ids(pl.LazyFrame({"id": ids}), "id", "src")


def test_rows_that_cannot_be_sent_get_their_reason() -> None:
    texts = [None, "   ", "x" * (1 << 20 + 1), "fine"]
    reasons = pl.DataFrame({"text": texts}).select(reject_reason(params()))[REJECT].to_list()
    assert reasons == ["null_text", "empty_text", "text_too_long", None]


# Joins ----------------------------------------------------------------------------------------


def shard_rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "text": ["a", "b", "a", None],
            TEXT_KEY: pl.Series([10, 20, 10, 30], dtype=pl.UInt64),
            TEXT_KEY_2: pl.Series([11, 21, 11, 31], dtype=pl.UInt64),
            REJECT: [None, None, None, "null_text"],
            BUCKET: [0, 0, 0, 0],
        }
    )


STAMP = datetime(2026, 11, 22, tzinfo=UTC)
RESULTS = pl.DataFrame(
    {
        TEXT_KEY: pl.Series([10], dtype=pl.UInt64),
        "label": ["a"],
        "batch_job_id": ["job-1"],
        "enriched_at": [STAMP],
        "result_source": ["batch"],
    }
)
FAILED = pl.DataFrame(
    {
        TEXT_KEY: pl.Series([20], dtype=pl.UInt64),
        "reason": ["api_error"],
        "message": ["bad"],
        "status_code": [400],
        "attempts": pl.Series([1], dtype=pl.Int32),
        "batch_job_id": ["job-1"],
    }
)


def test_every_row_lands_once_enriched_or_rejected() -> None:
    enriched, rejected = enrich_rows(shard_rows(), RESULTS, FAILED, params(**LABELS), STAMP)
    assert sorted(enriched["id"]) == [1, 3]  # one text, two rows
    assert set(enriched.columns) >= {"label", "model", "batch_job_id", "result_source"}
    assert not [c for c in enriched.columns if c.startswith("_")]
    assert dict(rejected.select("id", "reject_reason").iter_rows()) == {
        2: "api_error",
        4: "null_text",
    }


def test_a_row_with_neither_result_nor_failure_fails_the_join_naming_it() -> None:
    with pytest.raises(LostRowsError, match=r"1 row\(s\) .* ids \[2\]"):
        enrich_rows(shard_rows(), RESULTS, FAILED.clear(), params(**LABELS), STAMP)


# Prices, budget, quota ------------------------------------------------------------------------

PRICES = PriceTable(
    models={"mistral-embed": {"input": 0.1}, "mistral-small-*": {"input": 0.2, "output": 0.6}},  # type: ignore[dict-item]
    source="test",
)


@pytest.mark.parametrize(
    ("model", "prompt", "completion", "usd"),
    [
        ("mistral-embed", 1_000_000, 0, 0.05),  # batch: half price
        ("mistral-small-latest", 1_000_000, 1_000_000, 0.4),  # the longest pattern
        ("unknown-model", 10, 0, None),
    ],
)
def test_batch_cost(model: str, prompt: int, completion: int, usd: float | None) -> None:
    assert PRICES.cost(model, prompt, completion) == usd


@pytest.mark.parametrize(
    ("budget", "estimated", "refused"),
    [
        (None, 5.0, None),
        (None, None, None),
        (1.0, 0.5, None),
        (1.0, 1.5, "over max_cost_usd"),
        (1.0, None, "cannot be estimated"),
    ],
)
def test_the_budget_guard(
    budget: float | None, estimated: float | None, refused: str | None
) -> None:
    run = params(max_cost_usd=budget)
    if refused is None:
        check_budget(run, estimated, "this run")
    else:
        with pytest.raises(BudgetExceededError, match=refused):
            check_budget(run, estimated, "this run")


def shard(n: int, requests: int) -> ShardRef:
    return ShardRef(
        shard=n,
        attempt=0,
        requests_uri="r",
        manifest_uri="m",
        requests=requests,
        texts=requests,
        tokens=requests,
        content_hash="h",
    )


@pytest.mark.parametrize(
    ("sizes", "capacity", "expected"),
    [
        ([5, 5, 5], 10, [[0, 1], [2]]),
        ([10, 1], 10, [[0], [1]]),
        ([3, 3, 3], 100, [[0, 1, 2]]),
        ([], 10, []),
    ],
)
def test_waves_fit_the_quota(sizes: list[int], capacity: int, expected: list[list[int]]) -> None:
    shards = [shard(i, n) for i, n in enumerate(sizes)]
    assert [[s.shard for s in wave] for wave in waves(shards, capacity)] == expected


def test_a_shard_bigger_than_the_whole_quota_is_refused() -> None:
    with pytest.raises(QuotaError, match="more than the whole"):
        waves([shard(0, 11)], 10)


# The run ledger -------------------------------------------------------------------------------


def estimate(usd: float | None) -> Estimate:
    return Estimate(
        model="m", texts=1, requests=1, prompt_tokens=1, completion_tokens=0, cost_usd=usd, price=""
    )


def collected(n: int, transient: int) -> CollectRef:
    return CollectRef.model_construct(shard=n, attempt=0, transient_failures=transient)


def test_the_ledger_keeps_every_attempt_and_retries_only_the_last() -> None:
    ledger = RunLedger(estimate(1.0))
    ledger.planned([shard(0, 2), shard(1, 2), shard(2, 2)])
    job = JobRef(shard=0, attempt=0, key="k", job_id="j", requests=2, reattached=False)
    # One attempt sent in two quota waves: failures of both waves are retried.
    ledger.sent([job], [collected(0, 1), collected(1, 0)])
    ledger.sent([job], [collected(2, 3)])
    assert [c.shard for c in ledger.to_retry()] == [0, 2]
    ledger.planned([shard(0, 1), shard(2, 1)])  # the retry attempt
    ledger.sent([job], [collected(0, 0), collected(2, 0)])
    assert ledger.to_retry() == [] and len(ledger.collected) == 5 and len(ledger.jobs) == 3
    assert len(ledger.shards) == 5


@pytest.mark.parametrize(
    ("spent", "more", "budget", "affords", "after"),
    [
        (1.0, 0.5, None, True, 1.5),
        (1.0, 0.5, 2.0, True, 1.5),
        (1.0, 1.5, 2.0, False, 1.0),
        (1.0, None, None, True, None),  # unknown price, no budget: go on, spend unknown
        (1.0, None, 2.0, False, 1.0),  # unknown price under a budget: refuse
    ],
)
def test_the_ledger_counts_spend_within_the_budget(
    spent: float, more: float | None, budget: float | None, affords: bool, after: float | None
) -> None:
    ledger = RunLedger(estimate(spent))
    assert ledger.affords(more, budget) is affords
    assert ledger.spent == after


# The layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "work", "table", "manifest", "lease"),
    [
        (
            "s3://b/enriched/comments",
            None,
            "s3://b/enriched/comments/partition=p/part-0.parquet",
            "s3://b/enriched/_enrich/comments/published/partition=p/_manifest.json",
            "s3://b/enriched/_enrich/_leases/comments/partition=p",
        ),
        (
            "/data/out",
            "/scratch/w",
            "/data/out/partition=p/part-0.parquet",
            "/scratch/w/published/partition=p/_manifest.json",
            "/data/_enrich/_leases/out/partition=p",  # keyed by the table, not the work root
        ),
    ],
)
def test_every_path_of_a_table_comes_from_one_layout(
    output: str, work: str | None, table: str, manifest: str, lease: str
) -> None:
    layout = Layout.of(params(output=output, work=work))
    assert layout.data_file("p") == table
    assert layout.manifest_file("p") == manifest
    assert layout.lease_folder("p") == lease
    assert layout.rejected_file("p", "run").startswith(layout.rejected_folder("p") + "/run-")
    staging = Staging(layout.staging("key"))
    assert staging.rows(3) == f"{layout.work}/staging/key/rows/_bucket=3"
    assert staging.attempt(3, 1) == f"{layout.work}/staging/key/shards/00003/attempt-1"
    assert staging.staged("checks", 3) == f"{layout.work}/staging/key/checks/part-00003.parquet"


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (0.0, "$0.00"),
        (0.001, "$0.001"),
        (0.0012345, "$0.00123"),
        (0.05, "$0.05"),
        (0.5, "$0.50"),
        (12.3456, "$12.35"),
        (1234567.891, "$1,234,567.89"),
        (None, "unknown (no price)"),
    ],
)
def test_dollars_print_with_the_precision_they_need(amount: float | None, shown: str) -> None:
    """A budget of $0.001 must not print as $0.00 (the issue's example)."""
    assert pricing.usd(amount) == shown


def test_the_answering_version_prefers_what_names_a_version() -> None:
    named = pl.DataFrame({"v": ["m-latest", "m-2603", None]})
    by_job = named.select(answered_by(pl.col("v"), "m-2411", "m-latest"))["model_version"]
    assert by_job.to_list() == ["m-2411", "m-2603", "m-2411"]
    no_job = named.select(answered_by(pl.col("v"), None, "m-latest"))["model_version"]
    assert no_job.to_list() == ["m-latest", "m-2603", "m-latest"]
