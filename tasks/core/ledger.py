"""The run ledger: what a run has sent and got back so far, attempt after attempt."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.refs import CollectRef, Estimate, JobRef, ShardRef


@dataclass
class RunLedger:
    """Shards sent, their jobs, what came back, and the estimated spend, across every attempt.

    ``latest`` is the current attempt's collected results, every wave of it: the texts to retry
    come from there.
    """

    estimate: Estimate
    shards: list[ShardRef] = field(default_factory=list)
    jobs: list[JobRef] = field(default_factory=list)
    collected: list[CollectRef] = field(default_factory=list)
    latest: list[CollectRef] = field(default_factory=list)
    spent: float | None = None
    resent_texts: int = 0  # texts sent again because an older model version had answered them
    resend_attempts: list[int] = field(default_factory=list)  # attempts that were such re-sends

    def __post_init__(self) -> None:
        self.spent = self.estimate.cost_usd

    def planned(self, shards: list[ShardRef]) -> None:
        """Record a new attempt's shards, before they are sent."""
        self.shards += shards
        self.latest = []

    def sent(self, jobs: list[JobRef], collected: list[CollectRef]) -> None:
        """Record jobs of the current attempt and what came back: one call per quota wave."""
        self.jobs += jobs
        self.collected += collected
        self.latest += collected

    def unsent(self, collected: list[CollectRef]) -> None:
        """Shards recorded without a job (every text over the model's context)."""
        self.collected += collected

    def next_attempt(self) -> int:
        """The number of the next attempt (retry or re-send): one more than any so far."""
        return 1 + max((s.attempt for s in self.shards), default=0)

    def to_retry(self) -> list[CollectRef]:
        """The last attempt's shards with texts that failed transiently."""
        return [c for c in self.latest if c.transient_failures]

    def affords(self, more: float | None, budget: float | None) -> bool:
        """Whether spending ``more`` keeps the run within ``budget``; if so it is counted.
        An unknown price is affordable only without a budget."""
        total = None if self.spent is None or more is None else self.spent + more
        if budget is not None and (total is None or total > budget):
            return False
        self.spent = total
        return True
