"""Helpers shared by the test tiers: emulator processes, SDK clients, job polling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mistralai.client import Mistral, models

from emulator.server import EmulatorProcess

T = TypeVar("T")

API_KEY = "sk-emulator-test"
TERMINAL = {"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"}
StartEmulator = Callable[..., EmulatorProcess]


def sdk(emu: EmulatorProcess, **kwargs: Any) -> Mistral:
    return Mistral(api_key=API_KEY, server_url=emu.url, **kwargs)


def jsonl(requests: list[dict[str, Any]]) -> bytes:
    """Request lines as the SDK's helper writes them: compact, no trailing newline."""
    return "\n".join(json.dumps(r, separators=(",", ":")) for r in requests).encode()


def submit(
    client: Mistral,
    endpoint: str,
    bodies: list[dict[str, Any]],
    model: str | None = None,
    **job: Any,
) -> models.BatchJob:
    lines = [{"custom_id": str(i), "body": body} for i, body in enumerate(bodies)]
    uploaded = client.files.upload(
        file={"file_name": "requests.jsonl", "content": jsonl(lines)}, purpose="batch"
    )
    return client.batch.jobs.create(
        endpoint=endpoint,  # type: ignore[arg-type]
        input_files=[uploaded.id],
        model=model,
        **job,
    )


def wait_for(
    client: Mistral,
    job_id: str,
    until: Callable[[models.BatchJob], bool] = lambda j: j.status in TERMINAL,
    timeout: float = 60.0,
) -> models.BatchJob:
    """Poll the job (there is no push API) until ``until`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.batch.jobs.get(job_id=job_id)
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout} s: {job}")
        time.sleep(0.05)


def read_lines(client: Mistral, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    response = client.files.download(file_id=file_id)
    return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return found
