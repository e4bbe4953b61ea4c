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
    cache_folder: str | None = None  # None: cache_mode is off
    cache_files: list[str] = Field(default_factory=list)  # the files that hold hits
    hits_uri: str | None = None  # keys found in the cache, with the index of their file
    cache_hit_rows: int = 0  # rows whose result comes from the cache
    cache_hit_texts: int = 0
    cache_hit_tokens: int = 0  # prompt tokens the hits cost when they were sent
    cache_version: str | None = None  # the version that answered the hits ("": not recorded)


class Estimate(_Ref):
    """What a run (or a retry pass) would send and cost, before anything is submitted."""

    model: str
    texts: int
    requests: int
    prompt_tokens: int
    completion_tokens: int  # estimated: only chat classification generates text
    cost_usd: float | None  # None: the price table has no price for the model
    price: str  # which price applied, and from which table


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
    texts: int = 0  # texts in its requests (0: unknown, in records of older runs)
    expired_jobs: list[str] = Field(default_factory=list)  # same key, results gone: paid again


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
    input_files: list[str] = Field(default_factory=list)  # deleted from Mistral once collected
    model: str | None = None  # the job's model as the service reports it (alias or version)


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
    results_rows: int = 0  # rows of results_uri: a rerun checks the staged files against them
    failures_rows: int = 0
    expired: bool = False  # the job's results were gone: its texts are retried (paid again)
    model_versions: dict[str, int] = Field(default_factory=dict)  # texts per answering version


class WriteRef(_Ref):
    """One shard's staged outputs (nothing an analyst can see yet)."""

    shard: int
    enriched_uri: str | None = None
    rejected_uri: str | None = None
    checks_uri: str | None = None  # the narrow frame the kind's suite validates
    ids_uri: str | None = None  # every row's id and whether it was rejected
    enriched_rows: int
    rejected_rows: int
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    cached_rows: int = 0  # enriched rows whose result came from the cache
    model_versions: dict[str, int] = Field(default_factory=dict)  # enriched rows per version
    cache_add_uri: str | None = None  # this shard's new results, for the cache
    cache_add_rows: int = 0
    process: str = ""  # host:pid of the process that wrote it (Dask: a worker's)


class FailedCheck(_Ref):
    suite: str
    expectation: str
    column: str | None
    unexpected_count: int | None
    example_ids: list[str]
    observed: str | None
    plain: str = ""  # what it means, with the run's limits ("0.2 % of rows rejected, ...")

    def describe(self) -> str:
        examples = f", e.g. ids {', '.join(self.example_ids)}" if self.example_ids else ""
        if self.plain:
            return f"{self.plain}{examples} (check {self.suite}.{self.expectation})"
        where = f" on {self.column}" if self.column else ""
        count = f": {self.unexpected_count} row(s)" if self.unexpected_count else ""
        observed = f" (observed {self.observed})" if self.observed is not None else ""
        return f"{self.suite}: {self.expectation}{where}{count}{examples}{observed}"


class GateRef(_Ref):
    """The validation verdict for a run's staged outputs."""

    success: bool
    evaluated: int
    failures: list[FailedCheck]
    result_uri: str  # the GX validation results, JSON
    docs_uri: str | None = None  # GX Data Docs of the failed suites

    def message(self, limit: int = 5) -> str:
        shown = "; ".join(f.describe() for f in self.failures[:limit])
        more = f" (and {len(self.failures) - limit} more)" if len(self.failures) > limit else ""
        return shown + more


class PublishRef(_Ref):
    data_uri: str | None
    rejected_uri: str | None
    manifest_uri: str
    rows: int


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
    dry_run: bool = False
    cache_hit_rows: int = 0
    cache_hit_texts: int = 0
    sent_texts: int = 0  # texts sent in a first attempt (retries not counted)
    estimated: Estimate
    actual_cost_usd: float | None = None
    cost_avoided_usd: float | None = None  # what the cache hits would have cost
    cache_added: int = 0  # results added to the cache by this run
    expired_jobs: int = 0  # finished jobs whose results expired: their texts were paid again
    model_versions: dict[str, int] = Field(default_factory=dict)  # rows per answering version
    resent_texts: int = 0  # texts sent again because an older model version had answered them
    step_seconds: dict[str, float] = Field(default_factory=dict)  # wall time per pipeline step
    processes: list[str] = Field(default_factory=list)  # host:pid of the processes that wrote
