"""Waiting on jobs, with a fake clock, a fake sleep and a scripted service: no network, no time."""

from __future__ import annotations

import logging
from typing import cast

import pytest

from schemas.refs import JobRef
from tasks.batch import WaitTimeoutError, answered_texts, wait_all
from tasks.edges.mistral import JobStatus, MistralGateway, TerminalApiError, TransientApiError


def status(job_id: str, state: str, completed: int = 0, total: int = 10) -> JobStatus:
    return JobStatus(job_id, state, total, completed, completed, 0, None, None, ())


class ScriptedService:
    """Answers each job's polls from its script, in order; the last answer repeats."""

    def __init__(self, scripts: dict[str, list[JobStatus | Exception]]) -> None:
        self.scripts = {job: iter(script) for job, script in scripts.items()}
        self.last: dict[str, JobStatus | Exception] = {}
        self.polls = 0

    def job(self, job_id: str) -> JobStatus:
        self.polls += 1
        answer = next(self.scripts[job_id], self.last.get(job_id))
        assert answer is not None
        self.last[job_id] = answer
        if isinstance(answer, Exception):
            self.last.pop(job_id)  # an error is answered once
            raise answer
        return answer


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def ref(job_id: str, shard: int = 0) -> JobRef:
    return JobRef(shard=shard, attempt=0, key="k", job_id=job_id, requests=10, reattached=False)


def run(
    service: ScriptedService,
    jobs: list[JobRef],
    deadline: float = 1_000.0,
    fake: FakeTime | None = None,
) -> tuple[dict[str, JobStatus], FakeTime, list[tuple[int, int]], list[str]]:
    fake = fake or FakeTime()
    progress: list[tuple[int, int]] = []
    ended: list[str] = []
    final = wait_all(
        cast(MistralGateway, service),
        jobs,
        poll_interval=10.0,
        deadline=deadline,
        on_progress=lambda done, total: progress.append((done, total)),
        log=logging.getLogger("test"),
        on_ended=lambda job, _: ended.append(job.job_id),
        clock=fake.clock,
        sleep=fake.sleep,
    )
    return final, fake, progress, ended


def test_polls_every_interval_until_every_job_is_over() -> None:
    service = ScriptedService(
        {
            "a": [status("a", "QUEUED"), status("a", "RUNNING", 5), status("a", "SUCCESS", 10)],
            "b": [status("b", "RUNNING", 2), status("b", "FAILED", 4)],
        }
    )
    final, fake, progress, ended = run(service, [ref("a"), ref("b", 1)])
    assert {k: v.status for k, v in final.items()} == {"a": "SUCCESS", "b": "FAILED"}
    assert ended == ["b", "a"]  # each reported once, when it ends
    assert fake.sleeps == [10.0, 10.0]
    assert progress == [(2, 20), (9, 20), (14, 20)]
    assert service.polls == 5  # an ended job is not asked again


@pytest.mark.parametrize(
    ("errors", "sleeps"),
    [
        (1, [20.0, 10.0]),  # one failed poll: twice the interval, then back to normal
        (3, [20.0, 40.0, 80.0, 10.0]),
        (5, [20.0, 40.0, 80.0, 80.0, 80.0, 10.0]),  # capped at 8 intervals
    ],
)
def test_transient_errors_back_off_and_are_ridden_out(errors: int, sleeps: list[float]) -> None:
    flaky: list[JobStatus | Exception] = [TransientApiError("HTTP 503") for _ in range(errors)]
    service = ScriptedService(
        {"a": [*flaky, status("a", "RUNNING", 5), status("a", "SUCCESS", 10)]}
    )
    final, fake, _, _ = run(service, [ref("a")])
    assert final["a"].status == "SUCCESS"
    assert fake.sleeps == sleeps


def test_a_terminal_error_is_not_ridden_out() -> None:
    service = ScriptedService({"a": [TerminalApiError("HTTP 401")]})
    with pytest.raises(TerminalApiError):
        run(service, [ref("a")])


def test_the_deadline_names_the_jobs_still_running_and_never_oversleeps() -> None:
    service = ScriptedService({"a": [status("a", "SUCCESS", 10)], "b": [status("b", "RUNNING", 3)]})
    with pytest.raises(WaitTimeoutError) as late:
        run(service, [ref("a"), ref("b", 1)], deadline=25.0)
    assert "b (RUNNING)" in str(late.value) and "a (" not in str(late.value)
    assert "reattach" in str(late.value)


def test_sleeps_stop_at_the_deadline() -> None:
    service = ScriptedService({"a": [status("a", "RUNNING")]})
    fake = FakeTime()
    with pytest.raises(WaitTimeoutError):
        run(service, [ref("a")], deadline=25.0, fake=fake)
    # Polls at 0, 10, 20 and 25 s: the last sleep is cut to the deadline, then the wait gives up.
    assert fake.sleeps == [10.0, 10.0, 5.0] and service.polls == 4


def test_progress_counts_texts_not_requests() -> None:
    """7 requests carrying 2,991 texts: the progress says texts, and moves with each request."""
    many = ref("a").model_copy(update={"requests": 4, "texts": 2000})
    few = ref("b", 1).model_copy(update={"requests": 3, "texts": 991})
    assert answered_texts([many, few], {}) == (0, 2991)
    halfway = {"a": status("a", "RUNNING", 2, 4), "b": status("b", "RUNNING", 0, 3)}
    assert answered_texts([many, few], halfway) == (1000, 2991)
    over = {"a": status("a", "SUCCESS", 4, 4), "b": status("b", "SUCCESS", 3, 3)}
    assert answered_texts([many, few], over) == (2991, 2991)
    unknown = ref("c").model_copy(update={"requests": 5})  # an older record: requests count
    assert answered_texts([unknown], {"c": status("c", "RUNNING", 2, 5)}) == (2, 5)
