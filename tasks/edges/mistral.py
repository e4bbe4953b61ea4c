"""The one module that talks to Mistral: files, batch jobs, downloads.

Every failure leaves here as a ``TransientApiError`` (429, most 5xx, the network: worth retrying
later) or a ``TerminalApiError`` (401, 404, 422, a bad request: retrying changes nothing), with the
ids involved and what to do next; :func:`tasks.core.errors.transient_status` says which status is
which. The SDK itself retries a few transient statuses within a call, honouring ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
from mistralai.client import Mistral, errors, models
from mistralai.client.utils import BackoffStrategy, RetryConfig

# Re-exported (the explicit form mypy wants) for tasks.core.parsing, until it asks transient_status.
from tasks.core.errors import EnrichError, TerminalError, TransientError, transient_status
from tasks.edges.settings import MistralSettings

TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})
ACTIVE_STATUSES = ("QUEUED", "RUNNING", "CANCELLATION_REQUESTED")
# Statuses the SDK retries within one call (the transient ones worth holding the call open for);
# the other transient ones (408, 409, 425, the rarer 5xx) leave as a TransientApiError at once.
SDK_RETRIED_STATUSES = ("429", "500", "502", "503", "504")
# Every job this project creates says so in its metadata: a listing may hold other users' jobs
# (and may not filter at all), so nothing is reattached, adopted or cancelled without it.
PROJECT = "mistral-batch-enrich"
PROJECT_KEY = "enrich_project"
PAGE_SIZE = 100
MAX_PAGES = 200  # 20,000 jobs: a listing that filters nothing stays bounded


class ApiError(EnrichError):
    """A Mistral API call failed. Never raised itself: every failure is a
    ``TransientApiError`` or a ``TerminalApiError``."""


class TransientApiError(ApiError, TransientError):
    """429, most 5xx, the network: a later attempt may succeed."""


class TerminalApiError(ApiError, TerminalError):
    """401, 403, 422, another 4xx, 501, 505, an answer the SDK cannot read: retrying changes
    nothing."""


class MissingCredentialsError(TerminalApiError):
    """Neither an API key nor an emulator URL is set."""

    expected = True


class AmbiguousCreateError(TransientApiError):
    """A job creation whose outcome is unknown (timeout, connection error, 5xx): the service may
    have created the job. Look it up before creating again: a blind retry pays twice."""


class NotFoundApiError(TerminalApiError):
    """404: the job or file does not exist (any more). A finished job's output and error files
    expire (24 h after it ends, per Mistral's known limitations): its rows must be sent again."""


def _explain(exc: Exception, action: str) -> ApiError:
    """The project error for an SDK or network failure of ``action``: transient or terminal as
    :func:`transient_status` says for an HTTP answer; no answer at all is transient; anything
    else (an answer the SDK cannot read, a bug) is terminal."""
    if isinstance(exc, errors.SDKError | errors.HTTPValidationError):
        status = exc.raw_response.status_code
        body = getattr(exc, "body", "") or ""
        text = f"{action} failed with HTTP {status}: {body[:500]}"
        if status == 401:
            return TerminalApiError(
                f"{action} was refused (HTTP 401): the API key is missing or wrong. "
                "Check the MistralCredentials block (or the Secret block, or MISTRAL_API_KEY)."
            )
        if status == 404:
            return NotFoundApiError(text)
        if transient_status(status):
            return TransientApiError(text + " — retrying later usually succeeds")
        return TerminalApiError(text)
    if isinstance(exc, httpx2.TransportError | errors.NoResponseError):
        return TransientApiError(f"{action} failed on the network: {exc!r}")
    return TerminalApiError(f"{action} failed: {exc!r}")


def _may_have_created(exc: Exception) -> bool:
    """Whether a create that raised ``exc`` may still have created the job: no answer, a
    transient 5xx, or a success the SDK could not read. A 4xx (429 included), 501 or 505 proves
    nothing was created."""
    if isinstance(exc, errors.ResponseValidationError):
        return exc.status_code < 300
    if isinstance(exc, errors.SDKError | errors.HTTPValidationError):
        status = exc.raw_response.status_code
        return status >= 500 and transient_status(status)
    return isinstance(exc, httpx2.TransportError | errors.NoResponseError)


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
    input_files: tuple[str, ...] = ()
    model: str | None = None  # what the service says the job runs: the alias, or its version

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
            input_files=tuple(job.input_files or ()),
            model=job.model if isinstance(job.model, str) else None,
        )


class MistralGateway:
    """Files and batch jobs, through the official SDK, with errors marked transient or terminal."""

    def __init__(self, settings: MistralSettings) -> None:
        self.settings = settings
        if settings.api_key is None and settings.server_url is None:
            raise MissingCredentialsError(
                "MISTRAL_API_KEY is not set and there is no MistralCredentials block "
                f"{settings.credentials_block!r} nor Secret block {settings.api_key_block!r}: "
                "create the block (README: Secrets and settings) or set the variable to use the "
                "Mistral API, or set MISTRAL_SERVER_URL to a local emulator (see `enrich "
                "emulator --help`)."
            )
        retry = RetryConfig(
            "backoff",
            BackoffStrategy(
                initial_interval=500, max_interval=30_000, exponent=2.0, max_elapsed_time=120_000
            ),
            retry_connection_errors=True,
            status_codes_override=list(SDK_RETRIED_STATUSES),
        )
        # 429 only: a create that timed out or answered 5xx may have created the job.
        self._create_retry = RetryConfig(
            "backoff", retry.backoff, retry_connection_errors=False, status_codes_override=["429"]
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

    def _list_jobs(
        self, action: str, created_after: datetime | None = None, **query: Any
    ) -> list[models.BatchJob]:
        """The pages of a job listing, newest first, within bounds: the service is asked to
        filter (``query``, ``created_after``), but may not. Paging stops at the last page, at a
        page whose jobs are all older than ``created_after``, or after ``MAX_PAGES`` pages."""
        found: list[models.BatchJob] = []
        oldest = created_after.timestamp() if created_after else None
        if created_after is not None:
            query["created_after"] = created_after
        previous: int | None = None
        try:
            for page in range(MAX_PAGES):
                listed = self._client.batch.jobs.list(
                    **query,
                    page=page,
                    page_size=PAGE_SIZE,
                    order_by="-created",
                )
                data = listed.data or []
                found.extend(data)
                if not data or len(found) >= listed.total:
                    break
                stamps = [j.created_at for j in data]
                ordered = stamps == sorted(stamps, reverse=True) and (
                    previous is None or stamps[0] <= previous
                )
                previous = stamps[-1]
                # Older pages can be skipped only if the service really orders newest first.
                if oldest is not None and ordered and stamps[0] < oldest:
                    break
            else:
                raise TransientApiError(
                    f"{action}: more than {MAX_PAGES * PAGE_SIZE:,} jobs listed and the end not "
                    "reached; a job of this run could be beyond them, so nothing is created. "
                    "Run again later, or ask Mistral why the listing ignores its filters."
                )
        except ApiError:
            raise
        except Exception as exc:
            raise _explain(exc, action) from exc
        jobs = sorted(found, key=lambda j: j.created_at, reverse=True)
        return jobs if oldest is None else [j for j in jobs if j.created_at >= oldest]

    def find_jobs(
        self,
        metadata: Mapping[str, str],
        *,
        created_after: datetime | None = None,
        endpoint: str | None = None,
        model: str | None = None,
    ) -> list[models.BatchJob]:
        """This project's jobs carrying all of ``metadata`` (and the endpoint and model when
        given), newest first. Every listed job is checked here: the service's own filtering is
        a speed-up, never trusted. The model is the one the job was created for: its metadata
        says (``enrich_model``), as the job's own ``model`` may name the version behind an
        alias; so the listing is not filtered by model."""
        wanted = {PROJECT_KEY: PROJECT, **metadata}
        listed = self._list_jobs(
            f"Listing jobs with metadata {dict(metadata)}",
            created_after=created_after,
            metadata=wanted,
        )
        return [
            j
            for j in listed
            if all((j.metadata or {}).get(k) == v for k, v in wanted.items())
            and (endpoint is None or j.endpoint == endpoint)
            and (model is None or created_for(j, model))
        ]

    def create_job(
        self,
        *,
        endpoint: str,
        file_id: str,
        model: str,
        metadata: Mapping[str, str],
        timeout_hours: int,
    ) -> models.BatchJob:
        """One creation attempt. Only a 429 is retried here (it proves nothing was created);
        a timeout, a connection error, a transient 5xx or an unreadable success raises
        ``AmbiguousCreateError``: the caller looks the job up before creating again. Any other
        failure proves nothing was created and leaves as :func:`_explain` marks it."""
        try:
            return self._client.batch.jobs.create(
                endpoint=endpoint,  # type: ignore[arg-type]
                input_files=[file_id],
                model=model,
                metadata=dict(metadata),
                timeout_hours=timeout_hours,
                retries=self._create_retry,
            )
        except Exception as exc:
            explained = _explain(exc, f"Creating a batch job for file {file_id}")
            if _may_have_created(exc):
                raise AmbiguousCreateError(
                    f"{explained}; the job may exist anyway, so it is looked up before any "
                    "new attempt"
                ) from exc
            raise explained from exc

    def active_jobs(self) -> list[models.BatchJob]:
        """This project's jobs that are not over yet (checked here, whatever the service
        filtered)."""
        found = self._list_jobs(
            "Listing running batch jobs",
            status=list(ACTIVE_STATUSES),
            metadata={PROJECT_KEY: PROJECT},
        )
        return [
            j
            for j in found
            if str(j.status) in ACTIVE_STATUSES and (j.metadata or {}).get(PROJECT_KEY) == PROJECT
        ]

    def find_uploads(self, name: str) -> list[str]:
        """Ids of batch files named exactly ``name``, newest first (the service's search is a
        speed-up; every name is checked here)."""
        found: list[models.FileSchema] = []
        try:
            for page in range(MAX_PAGES):
                listed = self._client.files.list(
                    page=page, page_size=PAGE_SIZE, search=name, purpose="batch"
                )
                found.extend(listed.data)
                total = listed.total if isinstance(listed.total, int) else None
                if not listed.data or (total is not None and len(found) >= total):
                    break  # a short page is not the end: the service may cap its pages
        except Exception as exc:
            raise _explain(exc, f"Listing files named {name}") from exc
        named = [f for f in found if f.filename == name and str(f.purpose) == "batch"]
        return [f.id for f in sorted(named, key=lambda f: f.created_at, reverse=True)]

    def file_exists(self, file_id: str) -> bool:
        try:
            self._client.files.retrieve(file_id=file_id)
        except Exception as exc:
            explained = _explain(exc, f"Reading file {file_id}")
            if isinstance(explained, NotFoundApiError):
                return False
            raise explained from exc
        return True

    def delete_file(self, file_id: str) -> None:
        try:
            self._client.files.delete(file_id=file_id)
        except Exception as exc:
            explained = _explain(exc, f"Deleting file {file_id}")
            if not isinstance(explained, NotFoundApiError):
                raise explained from exc

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

    def embed(self, model: str, text: str, options: Mapping[str, Any]) -> tuple[list[float], str]:
        """One direct ``/v1/embeddings`` call (a query text, not a batch): the vector, and the
        model the answer names (the version behind an alias, where the service says it)."""
        try:
            answer = self._client.embeddings.create(model=model, inputs=[text], **dict(options))
        except Exception as exc:
            raise _explain(exc, f"Embedding the query text with {model}") from exc
        embedding = answer.data[0].embedding
        if not isinstance(embedding, list):
            raise TerminalApiError(f"{model} answered no float vector for the query text")
        return [float(x) for x in embedding], answer.model

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


def created_for(job: models.BatchJob, model: str) -> bool:
    """Whether ``job`` was created for ``model``: by its metadata, or (jobs created before the
    metadata said so) by the model the service reports."""
    asked = (job.metadata or {}).get("enrich_model")
    return asked == model if asked is not None else job.model == model


def job_metadata(key: str, **extra: Any) -> dict[str, str]:
    """Metadata stamped on every job this project creates (values are strings, ≤ 512 chars)."""
    return {PROJECT_KEY: PROJECT, "enrich_key": key, **{k: str(v)[:512] for k, v in extra.items()}}
