"""The error taxonomy: every failure is transient or terminal, one function decides, and every
task retry asks it."""

from __future__ import annotations

import asyncio
import errno
import importlib
import inspect
import pickle
import pkgutil
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx2
import pytest
from mistralai.client import errors
from mistralai.client.errors.httpvalidationerror import HTTPValidationErrorData
from prefect import Task
from prefect.states import Completed, Failed, exception_to_failed_state

import flows
import tasks
from tasks.batch import WaitTimeoutError, collect
from tasks.cache import CacheFileGoneError, fetch_cached
from tasks.core.errors import (
    EnrichError,
    TerminalError,
    TransientError,
    is_transient,
    transient_status,
)
from tasks.core.quota import QuotaError
from tasks.edges import storage
from tasks.edges.mistral import (
    SDK_RETRIED_STATUSES,
    AmbiguousCreateError,
    ApiError,
    MissingCredentialsError,
    MistralGateway,
    NotFoundApiError,
    TerminalApiError,
    TransientApiError,
    _explain,
)
from tasks.edges.settings import MistralSettings
from tasks.edges.storage import InputNotFoundError, UnsupportedSchemeError
from tasks.lease import LeaseHeldError, LeaseLostError
from tasks.retry import retry_if_transient

ACTION = "Reading batch job job-1"


def _modules() -> list[ModuleType]:
    found = []
    for package in (tasks, flows):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            found.append(importlib.import_module(info.name))
    return found


MODULES = _modules()
ERROR_CLASSES = {
    f"{module.__name__}.{name}": value
    for module in MODULES
    for name, value in vars(module).items()
    if inspect.isclass(value)
    and issubclass(value, BaseException)
    and value.__module__ == module.__name__
}
# Never raised themselves: the roots every raised error hangs from.
ROOTS = {"tasks.core.errors.EnrichError", "tasks.edges.mistral.ApiError"}
# The mark of every error class of the project: adding a class means deciding it here.
MARKS = {
    "tasks.core.errors.TransientError": True,
    "tasks.core.errors.TerminalError": False,
    "tasks.edges.mistral.TransientApiError": True,
    "tasks.edges.mistral.AmbiguousCreateError": True,
    "tasks.edges.mistral.TerminalApiError": False,
    "tasks.edges.mistral.MissingCredentialsError": False,
    "tasks.edges.mistral.NotFoundApiError": False,
    "tasks.batch.WaitTimeoutError": True,
    "tasks.cache.CacheFileGoneError": False,
    "tasks.lease.LeaseHeldError": True,
    "tasks.lease.LeaseLostError": False,
    "tasks.core.quota.QuotaError": False,
    "tasks.edges.storage.InputNotFoundError": False,
    "tasks.edges.storage.UnsupportedSchemeError": False,
    "tasks.edges.storage.CrossFilesystemMoveError": False,
    "tasks.edges.settings.StorageCredentialsError": False,
    "tasks.core.inputs.InputError": False,
    "tasks.core.pricing.BudgetExceededError": False,
    "tasks.core.pricing.PriceTableError": False,
    "tasks.publish.ValidationFailedError": False,
    "tasks.core.joins.LostRowsError": False,
    "tasks.core.versions.MixedVersionsError": False,
}


def sdk_error(status: int, body: str = '{"message": "no"}') -> errors.SDKError:
    return errors.SDKError("API error occurred", httpx2.Response(status, text=body), body)


def validation_error(status: int = 422) -> errors.HTTPValidationError:
    body = '{"detail": [{"msg": "field required"}]}'
    return errors.HTTPValidationError(
        HTTPValidationErrorData(), httpx2.Response(status, text=body), body
    )


def unreadable_answer(status: int = 200) -> errors.ResponseValidationError:
    body = '{"id": "job-1", "status": "NEW_STATUS"}'
    return errors.ResponseValidationError(
        "Response validation failed", httpx2.Response(status, text=body), ValueError("bad"), body
    )


# How each API failure leaves the Mistral edge: (failure, error class, transient, in the message).
API_FAILURES = [
    pytest.param(sdk_error(400), TerminalApiError, False, "failed with HTTP 400", id="400"),
    pytest.param(
        sdk_error(401), TerminalApiError, False, "Check the MistralCredentials block", id="401"
    ),
    pytest.param(sdk_error(403), TerminalApiError, False, "failed with HTTP 403", id="403"),
    pytest.param(sdk_error(404), NotFoundApiError, False, "failed with HTTP 404", id="404"),
    pytest.param(sdk_error(408), TransientApiError, True, "HTTP 408", id="408"),
    pytest.param(sdk_error(409), TransientApiError, True, "HTTP 409", id="409"),
    pytest.param(sdk_error(422), TerminalApiError, False, "failed with HTTP 422", id="422"),
    pytest.param(validation_error(), TerminalApiError, False, "field required", id="422-detail"),
    pytest.param(sdk_error(425), TransientApiError, True, "HTTP 425", id="425"),
    pytest.param(sdk_error(429), TransientApiError, True, "HTTP 429", id="429"),
    pytest.param(sdk_error(500), TransientApiError, True, "HTTP 500", id="500"),
    pytest.param(sdk_error(501), TerminalApiError, False, "failed with HTTP 501", id="501"),
    pytest.param(sdk_error(502), TransientApiError, True, "HTTP 502", id="502"),
    pytest.param(sdk_error(503), TransientApiError, True, "HTTP 503", id="503"),
    pytest.param(sdk_error(504), TransientApiError, True, "HTTP 504", id="504"),
    pytest.param(sdk_error(505), TerminalApiError, False, "failed with HTTP 505", id="505"),
    pytest.param(
        httpx2.ConnectError("connection refused"),
        TransientApiError,
        True,
        "failed on the network: ConnectError('connection refused')",
        id="connect-error",
    ),
    pytest.param(
        httpx2.ReadTimeout("timed out"), TransientApiError, True, "on the network", id="timeout"
    ),
    pytest.param(
        errors.NoResponseError(), TransientApiError, True, "on the network", id="no-response"
    ),
    pytest.param(
        unreadable_answer(), TerminalApiError, False, "Response validation failed", id="unreadable"
    ),
    pytest.param(
        KeyError("output_file"), TerminalApiError, False, "failed: KeyError", id="unknown"
    ),
]


@pytest.mark.parametrize(("failure", "expected", "transient", "message"), API_FAILURES)
def test_each_api_failure_maps_to_one_class_and_mark(
    failure: Exception, expected: type[ApiError], transient: bool, message: str
) -> None:
    explained = _explain(failure, ACTION)
    assert type(explained) is expected
    assert is_transient(explained) is transient
    assert str(explained).startswith(ACTION)
    assert message in str(explained)
    if transient:
        assert "retrying later usually succeeds" in str(explained) or "network" in str(explained)
    status = getattr(getattr(failure, "raw_response", None), "status_code", None)
    if isinstance(failure, errors.SDKError | errors.HTTPValidationError):
        assert transient is transient_status(status)  # the mapping asks the one function


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (None, True),  # no answer at all
        (200, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (409, True),
        (422, False),
        (425, True),
        (429, True),
        (500, True),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
        (505, False),
        (507, True),
        (599, True),
    ],
)
def test_transient_status(status: int | None, transient: bool) -> None:
    assert transient_status(status) is transient


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionError("reset"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), True),
        (ValueError("bad"), False),
        (FileNotFoundError("gone"), False),
        # s3fs: SlowDown and 503 arrive as EBUSY, a 500 as EREMOTEIO; a denial as EACCES.
        (OSError(errno.EBUSY, "SlowDown"), True),
        (OSError(errno.EREMOTEIO, "InternalError"), True),
        (PermissionError(errno.EACCES, "AccessDenied"), False),
        (RuntimeError("bug"), False),
        (KeyError("key"), False),
        # The SDK's network errors are not the builtin ones: tasks.edges.mistral marks them.
        (httpx2.ConnectError("refused"), False),
    ],
    ids=lambda value: (
        f"{type(value).__name__}({value.errno})"
        if isinstance(value, OSError) and value.errno
        else type(value).__name__
        if isinstance(value, BaseException)
        else str(value)
    ),
)
def test_is_transient_on_plain_exceptions(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_every_error_class_has_a_decided_mark() -> None:
    assert set(ERROR_CLASSES) - ROOTS == set(MARKS)


@pytest.mark.parametrize(("name", "transient"), sorted(MARKS.items()))
def test_each_project_error_carries_its_mark(name: str, transient: bool) -> None:
    cls = ERROR_CLASSES[name]
    exc = cls(f"{name} happened; do this next")
    assert is_transient(exc) is transient
    copy = pickle.loads(pickle.dumps(exc))  # Prefect stores a failed task's exception
    assert type(copy) is cls and str(copy) == str(exc)


@pytest.mark.parametrize(
    "name",
    sorted(ERROR_CLASSES),
)
def test_every_error_class_is_in_the_taxonomy(name: str) -> None:
    cls = ERROR_CLASSES[name]
    assert issubclass(cls, EnrichError)
    if name not in ROOTS:
        assert issubclass(cls, TransientError) != issubclass(cls, TerminalError)


def test_a_wait_past_its_deadline_is_a_transient_timeout() -> None:
    """Still a ``TimeoutError``, so Prefect shows the wait as timed out."""
    assert issubclass(WaitTimeoutError, TransientError)
    assert issubclass(WaitTimeoutError, TimeoutError)


def test_an_unsupported_storage_scheme_is_terminal() -> None:
    with pytest.raises(UnsupportedSchemeError, match="'gs' in gs://bucket/in: use s3://") as bad:
        storage.filesystem("gs://bucket/in")
    assert not is_transient(bad.value)


def test_error_messages_name_the_ids_and_the_next_step() -> None:
    explained = _explain(sdk_error(503, "overloaded"), "Downloading file file-9")
    assert str(explained) == (
        "Downloading file file-9 failed with HTTP 503: overloaded — retrying later usually succeeds"
    )
    refused = _explain(sdk_error(401), "Uploading shard-3.jsonl")
    assert str(refused) == (
        "Uploading shard-3.jsonl was refused (HTTP 401): the API key is missing or wrong. "
        "Check the MistralCredentials block (or the Secret block, or MISTRAL_API_KEY)."
    )


def test_missing_credentials_are_terminal() -> None:
    with pytest.raises(MissingCredentialsError, match="MISTRAL_API_KEY is not set") as raised:
        MistralGateway(MistralSettings(api_key=None, server_url=None))
    assert not is_transient(raised.value)


# Creating a job: (failure, what create_job raises). Only a failure that may have created the
# job is ambiguous (transient, and looked up before any new attempt).
CREATE_FAILURES = [
    pytest.param(sdk_error(503), AmbiguousCreateError, id="503"),
    pytest.param(sdk_error(500), AmbiguousCreateError, id="500"),
    pytest.param(httpx2.ReadTimeout("timed out"), AmbiguousCreateError, id="timeout"),
    pytest.param(errors.NoResponseError(), AmbiguousCreateError, id="no-response"),
    pytest.param(unreadable_answer(200), AmbiguousCreateError, id="unreadable-success"),
    pytest.param(sdk_error(429), TransientApiError, id="429"),
    pytest.param(sdk_error(408), TransientApiError, id="408"),
    pytest.param(sdk_error(400), TerminalApiError, id="400"),
    pytest.param(sdk_error(401), TerminalApiError, id="401"),
    pytest.param(validation_error(), TerminalApiError, id="422"),
    pytest.param(sdk_error(501), TerminalApiError, id="501"),
    pytest.param(sdk_error(505), TerminalApiError, id="505"),
    pytest.param(unreadable_answer(400), TerminalApiError, id="unreadable-refusal"),
]


@pytest.mark.parametrize(("failure", "expected"), CREATE_FAILURES)
def test_a_failed_create_is_ambiguous_only_when_a_job_may_exist(
    failure: Exception, expected: type[ApiError]
) -> None:
    api = MistralGateway(MistralSettings(api_key=None, server_url="http://127.0.0.1:9"))

    def create(**_: Any) -> None:
        raise failure

    api._client = SimpleNamespace(batch=SimpleNamespace(jobs=SimpleNamespace(create=create)))  # type: ignore[assignment]
    with pytest.raises(ApiError) as raised:
        api.create_job(
            endpoint="/v1/embeddings",
            file_id="file-7",
            model="mistral-embed",
            metadata={},
            timeout_hours=1,
        )
    assert type(raised.value) is expected
    assert raised.value.__cause__ is failure
    assert "Creating a batch job for file file-7" in str(raised.value)
    if expected is AmbiguousCreateError:
        assert str(raised.value).endswith("so it is looked up before any new attempt")


def test_the_sdk_retries_only_transient_statuses() -> None:
    api = MistralGateway(MistralSettings(api_key=None, server_url="http://127.0.0.1:9"))
    create_retries = api._create_retry.status_codes_override or []
    assert create_retries == ["429"]  # a 5xx or a timeout may have created the job
    assert not api._create_retry.retry_connection_errors
    for status in [*SDK_RETRIED_STATUSES, *create_retries]:
        assert transient_status(int(status)), status


# The retry rule, on the states Prefect hands it -------------------------------------------


def engine_state(exc: Exception) -> Any:
    """What Prefect's task engine passes to ``retry_condition_fn`` after an exception."""
    return Failed(data=exc, message=f"Task run encountered unexpected exception: {exc!r}")


def final_state(exc: Exception) -> Any:
    """The failed state a task run ends in."""
    return asyncio.run(exception_to_failed_state(exc))


RETRY_CASES = [
    (TransientApiError("Downloading file file-1 failed with HTTP 503"), True),
    (AmbiguousCreateError("Creating a batch job for file file-1 failed"), True),
    (TerminalApiError("Reading batch job job-1 failed with HTTP 400"), False),
    (NotFoundApiError("Downloading file file-1 failed with HTTP 404"), False),
    (CacheFileGoneError("the cache file c-1.parquet vanished"), False),
    (LeaseLostError("the lease was taken over"), False),
    (LeaseHeldError("partition held by flow run r-1"), True),
    (QuotaError("shard 1 has too many requests"), False),
    (InputNotFoundError("the input in.parquet does not exist"), False),
    (ConnectionResetError("reset by peer"), True),
    (TimeoutError("timed out"), True),
    (OSError("disk full"), False),
    (ValueError("a bug"), False),
]


@pytest.mark.parametrize("make_state", [engine_state, final_state], ids=["engine", "final"])
@pytest.mark.parametrize(
    ("exc", "retried"), RETRY_CASES, ids=[type(e).__name__ for e, _ in RETRY_CASES]
)
def test_retry_if_transient_reads_the_mark(
    make_state: Callable[[Exception], Any], exc: Exception, retried: bool
) -> None:
    state = make_state(exc)
    assert retry_if_transient(collect, None, state) is retried  # type: ignore[arg-type]


def test_retry_if_transient_never_retries_a_state_that_did_not_fail() -> None:
    assert not retry_if_transient(collect, None, Completed(data=1))  # type: ignore[arg-type]


def test_every_task_with_retries_uses_the_one_rule() -> None:
    retried = {
        f"{module.__name__}.{name}": value
        for module in MODULES
        for name, value in vars(module).items()
        if isinstance(value, Task) and value.retries
    }
    assert {"tasks.batch.collect", "tasks.cache.fetch_cached"} <= set(retried)
    for name, task in retried.items():
        assert task.retry_condition_fn is retry_if_transient, name
    assert collect.retry_condition_fn is fetch_cached.retry_condition_fn
