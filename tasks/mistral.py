"""The one module that talks to Mistral: files, batch jobs, downloads.

Every failure leaves here as a ``TransientApiError`` (429, 5xx, network: worth retrying later) or a
``TerminalApiError`` (401, 404, 422, a bad request: retrying changes nothing), with the ids involved
and what to do next. The SDK itself retries 429/5xx within a call, honouring ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from mistralai.client import Mistral, errors, models
from mistralai.client.utils import BackoffStrategy, RetryConfig

from tasks.settings import MistralSettings

TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})
TRANSIENT_STATUS_CODES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ApiError(Exception):
    """A Mistral API call failed; ``transient`` says whether a later retry may succeed."""

    transient = False


class TransientApiError(ApiError):
    transient = True


class TerminalApiError(ApiError):
    pass


class MissingCredentialsError(TerminalApiError):
    pass


def _explain(exc: Exception, action: str) -> ApiError:
    if isinstance(exc, errors.SDKError | errors.HTTPValidationError):
        status = exc.raw_response.status_code
        body = getattr(exc, "body", "") or ""
        text = f"{action} failed with HTTP {status}: {body[:500]}"
        if status == 401:
            return TerminalApiError(
                f"{action} was refused (HTTP 401): the API key is missing or wrong. "
                "Check MISTRAL_API_KEY (or the Prefect Secret block)."
            )
        if status in TRANSIENT_STATUS_CODES:
            return TransientApiError(text + " — retrying later usually succeeds")
        return TerminalApiError(text)
    if isinstance(exc, httpx2.TransportError | errors.NoResponseError):
        return TransientApiError(f"{action} failed on the network: {exc!r}")
    return TerminalApiError(f"{action} failed: {exc!r}")


@dataclass(frozen=True)
class JobStatus:
    id: str
    status: str
    total: int
    completed: int
    succeeded: int
    failed: int
    output_file: str | None
    error_file: str | None
    errors: tuple[str, ...]

    @classmethod
    def of(cls, job: models.BatchJob) -> JobStatus:
        return cls(
            id=job.id,
            status=str(job.status),
            total=job.total_requests,
            completed=job.completed_requests,
            succeeded=job.succeeded_requests,
            failed=job.failed_requests,
            output_file=job.output_file if isinstance(job.output_file, str) else None,
            error_file=job.error_file if isinstance(job.error_file, str) else None,
            errors=tuple(e.message for e in job.errors),
        )


class MistralGateway:
    """Files and batch jobs, through the official SDK, with errors marked transient or terminal."""

    def __init__(self, settings: MistralSettings) -> None:
        if settings.api_key is None and settings.server_url is None:
            raise MissingCredentialsError(
                "MISTRAL_API_KEY is not set: set it to use the Mistral API, or set "
                "MISTRAL_SERVER_URL to a local emulator (see `enrich emulator --help`)."
            )
        retry = RetryConfig(
            "backoff",
            BackoffStrategy(
                initial_interval=500, max_interval=30_000, exponent=2.0, max_elapsed_time=120_000
            ),
            retry_connection_errors=True,
        )
        self._client = Mistral(
            api_key=settings.api_key.get_secret_value() if settings.api_key else "",
            server_url=settings.server_url,
            retry_config=retry,
            timeout_ms=settings.timeout_ms,
        )

    def upload(self, path: Path, name: str) -> str:
        try:
            with path.open("rb") as content:
                uploaded = self._client.files.upload(
                    file={"file_name": name, "content": content}, purpose="batch"
                )
        except Exception as exc:
            raise _explain(exc, f"Uploading {name}") from exc
        return uploaded.id

    def _list_jobs(self, action: str, **query: Any) -> list[models.BatchJob]:
        """Every page of a job listing."""
        found: list[models.BatchJob] = []
        page = 0
        try:
            while True:
                listed = self._client.batch.jobs.list(**query, page=page, page_size=100)
                found.extend(listed.data or [])
                if not listed.data or len(found) >= listed.total:
                    return found
                page += 1
        except Exception as exc:
            raise _explain(exc, action) from exc

    def find_jobs(self, metadata: Mapping[str, str]) -> list[models.BatchJob]:
        """Jobs carrying all of ``metadata``, newest first (every page)."""
        return self._list_jobs(
            f"Listing jobs with metadata {dict(metadata)}", metadata=dict(metadata)
        )

    def create_job(
        self,
        *,
        endpoint: str,
        file_id: str,
        model: str,
        metadata: Mapping[str, str],
        timeout_hours: int,
    ) -> models.BatchJob:
        try:
            return self._client.batch.jobs.create(
                endpoint=endpoint,  # type: ignore[arg-type]
                input_files=[file_id],
                model=model,
                metadata=dict(metadata),
                timeout_hours=timeout_hours,
            )
        except Exception as exc:
            raise _explain(exc, f"Creating a batch job for file {file_id}") from exc

    def active_jobs(self) -> list[models.BatchJob]:
        """Jobs this project created (they carry ``enrich_key``) that are not over yet."""
        found = self._list_jobs("Listing running batch jobs", status=["QUEUED", "RUNNING"])
        return [j for j in found if (j.metadata or {}).get("enrich_key")]

    def cancel(self, job_id: str) -> str:
        """Ask Mistral to cancel a job; returns the status it answers."""
        try:
            return str(self._client.batch.jobs.cancel(job_id=job_id).status)
        except Exception as exc:
            raise _explain(exc, f"Cancelling batch job {job_id}") from exc

    def job(self, job_id: str) -> JobStatus:
        try:
            return JobStatus.of(self._client.batch.jobs.get(job_id=job_id))
        except Exception as exc:
            raise _explain(exc, f"Reading batch job {job_id}") from exc

    def download(self, file_id: str, target: Path) -> int:
        """Stream a file to ``target``; a transfer cut short raises a transient error."""
        expected: int | None = None
        written = 0
        try:
            response = self._client.files.download(file_id=file_id)
            length = response.headers.get("content-length")
            expected = int(length) if length else None
            with target.open("wb") as sink:
                for block in response.iter_bytes(1 << 20):
                    sink.write(block)
                    written += len(block)
        except Exception as exc:
            raise _explain(exc, f"Downloading file {file_id}") from exc
        if expected is not None and written != expected:
            raise TransientApiError(
                f"Downloading file {file_id} stopped at {written} of {expected} bytes"
            )
        return written


def job_metadata(key: str, **extra: Any) -> dict[str, str]:
    """Metadata stamped on every job this project creates (values are strings, ≤ 512 chars)."""
    return {"enrich_key": key, **{k: str(v)[:512] for k, v in extra.items()}}
