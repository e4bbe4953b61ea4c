"""Sending: the first attempt, the retries, and the re-send of texts an older model version
answered. Every attempt shares the run's plan, parameters, quota, clock and ledger (``Sender``);
the logic of each step lives in ``tasks``."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import unmapped
from prefect.logging import get_run_logger

from flows.suspend import suspend_while_running
from schemas.params import EnrichParams, MixedVersions, WaitMode
from schemas.refs import PlanRef, ShardRef
from tasks import cost
from tasks.batch import collect, submit, wait
from tasks.core import pricing, versions
from tasks.core.ledger import RunLedger
from tasks.core.quota import waves
from tasks.quota import holding
from tasks.requests import build_retry_requests
from tasks.summary import StepClock
from tasks.versions import build_resend_requests, count_versions


@dataclass(frozen=True)
class Sender:
    planned: PlanRef
    params: EnrichParams
    quota: tuple[str, int]  # the pending-requests quota's name and capacity ("": none)
    clock: StepClock
    ledger: RunLedger

    def send(self, shards: list[ShardRef]) -> None:
        """Submit shards, a quota-sized wave at a time: each wave holds slots of the
        pending-requests limit equal to its requests from before its jobs exist until they are
        over."""
        planned, params, clock = self.planned, self.params, self.clock
        name, capacity = self.quota
        for wave in waves(shards, capacity):
            with holding(name, sum(s.requests for s in wave)):
                jobs = submit.map(wave, unmapped(planned), unmapped(params)).result()
                clock.lap("submit")
                if params.wait is WaitMode.suspend:  # frees the worker until the jobs are over
                    suspend_while_running(jobs, params)
                outcomes = wait(jobs, params, planned.partition)
                clock.lap("wait")
            collected = collect.map(outcomes, wave, unmapped(planned), unmapped(params)).result()
            self.ledger.sent(jobs, collected)
            clock.lap("collect")

    def retry(self) -> None:
        """Up to ``max_retries`` follow-up attempts for the texts that failed transiently, each
        only if the budget allows it."""
        for _ in range(self.params.max_retries):
            failed = self.ledger.to_retry()
            if not failed:
                return
            built = build_retry_requests.map(
                unmapped(self.planned),
                unmapped(self.params),
                [c.shard for c in failed],
                unmapped(self.ledger.next_attempt()),
                [c.failures_uri for c in failed],
            ).result()
            shards = [s for s in built if s is not None and s.requests]
            if not self._affordable(shards, "retry (they are recorded as rejected)"):
                return
            self.ledger.planned(shards)
            self.send(shards)

    def settle_versions(self) -> None:
        """When the service says the partition's answers came from several versions of the
        model: send the texts of older versions again (``resend``), or refuse (``refuse``)
        before anything is written; ``accept`` publishes them, versions in the manifest."""
        planned, params, ledger = self.planned, self.params, self.ledger
        target = versions.current(ledger.collected)
        seen = {v for c in ledger.collected for v in c.model_versions}
        seen |= {planned.cache_version or params.model} if planned.cache_hit_texts else set()
        if params.on_mixed_versions is MixedVersions.accept or target is None or len(seen) < 2:
            return
        per_shard = [[c for c in ledger.collected if c.shard == s] for s in range(planned.shards)]
        counted = count_versions.map(
            unmapped(planned), unmapped(params), range(planned.shards), per_shard
        ).result()
        texts = versions.add(*counted)
        if len(texts) < 2:
            return
        if params.on_mixed_versions is MixedVersions.refuse:
            raise versions.MixedVersionsError(
                versions.refusal(params, planned.partition, texts, target)
            )
        attempt = ledger.next_attempt()
        built = build_resend_requests.map(
            unmapped(planned),
            unmapped(params),
            range(planned.shards),
            unmapped(attempt),
            unmapped(target),
            per_shard,
        ).result()
        shards = [s for s in built if s is not None and s.requests]
        if not self._affordable(shards, "send again"):
            return
        stale = sum(s.texts for s in shards)
        get_run_logger().warning(
            "The model now answers as %s; this partition's answers came from %s. Sending the %d "
            "text(s) answered by older versions again (on_mixed_versions=resend)",
            target,
            versions.describe(texts),
            stale,
        )
        ledger.planned(shards)
        ledger.resent_texts += stale
        ledger.resend_attempts.append(attempt)
        self.send(shards)
        self.retry()

    def _affordable(self, shards: list[ShardRef], what: str) -> bool:
        """Whether sending ``shards`` keeps the run's estimate within ``max_cost_usd``; if so
        the spend is counted, else the texts are left as they are (a warning says so)."""
        params = self.params
        prices = cost.load_prices(params.price_table)
        answer = cost.completion_tokens_per_text(params)
        more = pricing.estimate(params, shards, prices, answer).cost_usd
        if shards and not self.ledger.affords(more, params.max_cost_usd):
            get_run_logger().warning(
                "Not going to %s %d text(s): that would take the estimate over max_cost_usd=%s",
                what,
                sum(s.texts for s in shards),
                params.max_cost_usd,
            )
            return False
        return bool(shards)
