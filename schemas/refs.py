"""Small frozen references that tasks hand each other: URIs, counts, hashes, ids — never data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Ref(BaseModel):
    model_config = ConfigDict(frozen=True)


class PlanRef(_Ref):
    """The checked input, bucketed by text hash into ``shards`` row sets under ``staging``."""

    run_key: str
    staging: str
    input_fingerprint: str
    rows: int
    rows_to_send: int
    rejected_before_send: dict[str, int] = Field(default_factory=dict)
    shards: int
    input_columns: list[str]
    partition: str

    def rows_uri(self, shard: int) -> str:
        return f"{self.staging.rstrip('/')}/rows/_bucket={shard}"


class ShardRef(_Ref):
    """One request file (a shard, or a retry of part of it) ready to submit."""

    shard: int
    attempt: int
    requests_uri: str
    manifest_uri: str
    requests: int
    texts: int
    tokens: int
    content_hash: str
    too_long_uri: str | None = None  # texts over the model's context, rejected before sending


class JobRef(_Ref):
    shard: int
    attempt: int
    key: str
    job_id: str
    requests: int
    reattached: bool


class JobOutcome(_Ref):
    shard: int
    attempt: int
    job_id: str
    status: str
    output_file: str | None
    error_file: str | None
    succeeded: int
    failed: int
    errors: list[str] = Field(default_factory=list)


class CollectRef(_Ref):
    """Parsed results and failures of one job, keyed by text."""

    shard: int
    attempt: int
    job_id: str
    job_status: str
    results_uri: str
    failures_uri: str
    succeeded_texts: int
    transient_failures: int
    terminal_failures: int
    missing_lines: int
    duplicate_lines: int
    prompt_tokens: int
    completion_tokens: int


class WriteRef(_Ref):
    shard: int
    enriched_uri: str | None
    rejected_uri: str | None
    enriched_rows: int
    rejected_rows: int
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)


class RunSummary(_Ref):
    run_key: str
    output: str
    partition: str
    rows_in: int
    enriched_rows: int
    rejected_rows: int
    rejected_by_reason: dict[str, int]
    requests: int
    jobs: dict[str, str]  # job id -> final status
    reattached_jobs: int
    retried_texts: int
    prompt_tokens: int
    completion_tokens: int
    duplicate_lines: int
    duration_seconds: float
