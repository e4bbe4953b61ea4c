"""Seeded, deterministic fault injection for the emulator.

A fault plan is a YAML or JSON file (``--faults FILE``). Every decision is a pure function of the
plan's seed and a counter (the n-th call of a route, the n-th job created, the n-th time a request
line with a given ``custom_id`` is processed), so the same sequence of calls meets the same faults
on every run, across emulator restarts included. The ``listing``, ``workspace`` and ``files`` blocks
are not drawn: they hold for every call. Example::

    seed: 7
    http:                                  # transient errors on direct API calls
      - route: "POST /v1/batch/jobs"       # "METHOD /path", shell-style wildcards allowed
        status: 429
        rate: 0.5                          # fraction of matching calls
        retry_after: 0.2                   # seconds, sent as Retry-After (429 only)
        limit: 3                           # at most this many faults from this rule
      - route: "POST /v1/batch/jobs"       # the job IS created, then the client gets a 504
        status: 504
        after_handling: true               # run the route for real, answer the fault instead
        delay_seconds: 2.0                 # hold the response (fault or real) this long first
        limit: 1
      - route: "GET /v1/files/*/content"   # status null: no error, only the delay
        status: null
        delay_seconds: 1.0
    download_cut:                          # the body stops short of its Content-Length
      rate: 1.0
      after_fraction: 0.5
      limit: 1
    jobs:
      fail: {rate: 1.0, after_fraction: 0.5, message: "Internal failure", limit: 1}
      timeout: {rate: 1.0, after_fraction: 0.5}
      slow: {rate: 1.0, requests_per_second: 5}
      match_metadata: {dataset: demo}      # optional: only jobs carrying these metadata
    corrupt:                               # wrong answers with a 200 status (for the gate)
      rate: 0.05                           # fraction of lines, fixed per custom_id by the seed
      mode: wrong_dimension                # one of the modes below
    lines:
      rate: 0.1                            # fraction of request lines that fail
      status: 500
      times: 1                             # fail the first N sightings of a custom_id (-1: always)
      limit: 100                           # at most this many failed lines in all
      style: body                          # body: error object in response.body; string: "error"
    listing:                               # GET /v1/batch/jobs, as a less helpful service would
      ignore_filters: true                 # metadata, status, model, created_after... ignored
      page_size_cap: 10                    # no page holds more than 10 jobs (total counts them all)
      lag_seconds: 2.0                     # a job is listed only 2 s after its creation
    workspace:
      foreign_jobs:                        # another team's jobs, created once at the first start
        - count: 2
          status: RUNNING                  # active ones never progress; a cancel ends them
          endpoint: /v1/embeddings
          model: mistral-embed
          metadata: {enrich_key: "0123abcd", team: other}
          requests: 100                    # active ones count against the pending quota
    files:
      expire_after_seconds: 5              # output/error files 404 five seconds after the job ends

The ``corrupt`` modes; each leaves a line its endpoint cannot corrupt as it was:

* ``wrong_dimension``: embeddings one value short.
* ``out_of_range``: moderation and classifier scores outside [0, 1].
* ``unknown_label``: a chat answer ``{"label": "not-a-label"}``, whatever the schema.
* ``malformed_json``: a chat answer cut off halfway, as by a length limit, so it no longer parses;
  ``finish_reason`` still says ``stop``.
* ``wrong_type``: a ``json_schema`` chat answer whose first property (in the schema's order) that
  some JSON type would break holds a value of that type: ``"3"`` where the schema says integer,
  ``1`` where it says boolean or string; the whole answer when no property can be broken.
* ``drop``: no output line at all, though the job counts the request as succeeded.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import struct
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    limit: int | None = Field(default=None, ge=0)


class HttpFault(_Rule):
    """An error answered instead of a route's response; ``status: null`` only delays it.

    With ``after_handling`` the route runs for real first (a create creates the job), so the
    client sees a failure for a call the server acted on.
    """

    route: str = "*"
    status: int | None = Field(default=429, ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    after_handling: bool = False
    delay_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def does_something(self) -> HttpFault:
        if self.status is None and self.delay_seconds is None:
            raise ValueError(f"http rule for {self.route!r}: status null needs delay_seconds")
        return self


class DownloadCut(_Rule):
    after_fraction: float = Field(default=0.5, ge=0.0, lt=1.0)


class JobEnding(_Rule):
    after_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    message: str = "Batch job failed: internal error while processing requests"


class SlowJobs(_Rule):
    requests_per_second: float = Field(default=5.0, gt=0)


class JobFaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fail: JobEnding | None = None
    timeout: JobEnding | None = None
    slow: SlowJobs | None = None
    match_metadata: dict[str, str] | None = None


class LineFaults(_Rule):
    status: int = Field(default=500, ge=400, le=599)
    times: int = Field(default=1, ge=-1)
    style: Literal["body", "string"] = "body"
    message: str | None = None


class CorruptAnswers(_Rule):
    mode: Literal[
        "wrong_dimension", "out_of_range", "unknown_label", "malformed_json", "wrong_type", "drop"
    ]

    def chooses(self, seed: int, custom_id: object) -> bool:
        """Whether the line with ``custom_id`` gets a wrong answer: fixed by the seed (``limit``
        does not apply: every line is decided alone, in whichever worker answers it)."""
        return draw(seed, "corrupt", custom_id) < self.rate


class ListingFaults(BaseModel):
    """How ``GET /v1/batch/jobs`` departs from the helpful reading of the contract."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ignore_filters: bool = False  # every filter ignored; order_by and paging still apply
    page_size_cap: int | None = Field(default=None, ge=1)
    lag_seconds: float = Field(default=0.0, ge=0)  # a job is listed this long after creation


ForeignStatus = Literal["QUEUED", "RUNNING", "SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"]


class ForeignJobs(BaseModel):
    """``count`` jobs of another team, alike; active ones never progress until cancelled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=1, ge=1)
    status: ForeignStatus = "RUNNING"
    endpoint: str = "/v1/embeddings"
    model: str | None = "mistral-embed"
    metadata: dict[str, str] | None = None
    requests: int = Field(default=100, ge=0)


class WorkspaceFaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    foreign_jobs: tuple[ForeignJobs, ...] = ()


class FileFaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Mistral's docs: results are downloadable for 24 h after the job ends.
    expire_after_seconds: float | None = Field(default=None, ge=0)


class FaultPlan(BaseModel):
    """The validated content of a faults file; the empty plan injects nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    http: tuple[HttpFault, ...] = ()
    download_cut: DownloadCut | None = None
    jobs: JobFaults = JobFaults()
    lines: LineFaults | None = None
    corrupt: CorruptAnswers | None = None
    listing: ListingFaults = ListingFaults()
    workspace: WorkspaceFaults = WorkspaceFaults()
    files: FileFaults = FileFaults()

    @classmethod
    def load(cls, path: Path) -> FaultPlan:
        """Read a YAML or JSON plan; a malformed file raises with the file named."""
        text = path.read_text()
        try:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"faults file {path} is not valid YAML/JSON: {exc}") from exc
        return cls.model_validate(raw or {})


def draw(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) fixed by the seed and the parts."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return float(struct.unpack("<Q", digest)[0] >> 11) / float(1 << 53)


def route_matches(pattern: str, method: str, path: str) -> bool:
    if " " not in pattern:
        return fnmatch.fnmatchcase(path, pattern)
    want_method, want_path = pattern.split(" ", 1)
    return fnmatch.fnmatchcase(method, want_method.upper()) and fnmatch.fnmatchcase(path, want_path)


class FaultInjector:
    """Decides, call by call, whether a fault fires. Counters live in ``state`` (persisted)."""

    def __init__(self, plan: FaultPlan, state: dict[str, int]) -> None:
        self.plan = plan
        self._state = state

    def _tick(self, key: str) -> int:
        n = self._state.get(key, 0)
        self._state[key] = n + 1
        return n

    def _fires(self, rule: _Rule, key: str) -> bool:
        n = self._tick(f"{key}:seen")
        if rule.limit is not None and self._state.get(f"{key}:fired", 0) >= rule.limit:
            return False
        if draw(self.plan.seed, key, n) < rule.rate:
            self._tick(f"{key}:fired")
            return True
        return False

    def http_fault(self, method: str, path: str) -> HttpFault | None:
        for index, rule in enumerate(self.plan.http):
            if route_matches(rule.route, method, path) and self._fires(rule, f"http{index}"):
                return rule
        return None

    def download_cut(self) -> DownloadCut | None:
        rule = self.plan.download_cut
        return rule if rule is not None and self._fires(rule, "download") else None

    def job_faults(self, metadata: dict[str, str] | None) -> dict[str, object]:
        """Drawn once when a job starts running: which ending or slowness it gets."""
        jobs = self.plan.jobs
        wanted = jobs.match_metadata or {}
        if any((metadata or {}).get(k) != v for k, v in wanted.items()):
            return {}
        chosen: dict[str, object] = {}
        if jobs.fail is not None and self._fires(jobs.fail, "job-fail"):
            chosen["fail"] = jobs.fail.model_dump()
        elif jobs.timeout is not None and self._fires(jobs.timeout, "job-timeout"):
            chosen["timeout"] = jobs.timeout.model_dump()
        if jobs.slow is not None and self._fires(jobs.slow, "job-slow"):
            chosen["requests_per_second"] = jobs.slow.requests_per_second
        return chosen

    def line_fault(self, custom_id: str) -> LineFaults | None:
        """Whether this sighting of ``custom_id`` fails; one id fails at most ``times`` times."""
        rule = self.plan.lines
        if rule is None:
            return None
        # Whether an id is unlucky is fixed by the seed; only unlucky ids are counted, so the
        # persisted state stays small however many lines pass through.
        if draw(self.plan.seed, "line", custom_id) >= rule.rate:
            return None
        sighting = self._tick(f"line:{custom_id}")
        if rule.times != -1 and sighting >= rule.times:
            return None
        if rule.limit is not None and self._state.get("line:fired", 0) >= rule.limit:
            return None
        self._tick("line:fired")
        return rule
