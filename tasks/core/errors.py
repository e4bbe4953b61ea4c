"""One error taxonomy for the whole pipeline.

Every error the project raises on purpose derives from :class:`EnrichError` and is either
:class:`TransientError` (a later attempt may succeed: 429, most 5xx, the network, an expired lease
someone else is about to release) or :class:`TerminalError` (retrying cannot help: bad input, a
refused key, a 4xx, a failed gate, a budget). :func:`is_transient` is the one place that decides;
every task retry asks it, so a terminal error is never retried.
"""

from __future__ import annotations

import errno
from typing import ClassVar

# HTTP statuses worth a retry. 5xx are transient except those that describe the request itself:
# 501 (the service does not implement it) and 505 (the HTTP version) answer the same next time.
TRANSIENT_STATUS_CODES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
TERMINAL_5XX = frozenset({501, 505})
# What s3fs and the OS raise for a busy or briefly unreachable store (S3 SlowDown and 503 arrive as
# EBUSY, a 500 as EREMOTEIO): worth a retry. Any other OSError (not found, denied) is not.
TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, errno.EREMOTEIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.EPIPE}
)


class EnrichError(Exception):
    """The root of every error the pipeline raises on purpose. Its message says what happened,
    with the ids involved, and what the user can do next."""

    transient: ClassVar[bool] = False
    # The message is the whole story (bad input, a budget, a failed gate): shown without a
    # traceback. A bug's error keeps its traceback.
    expected: ClassVar[bool] = False


class TransientError(EnrichError):
    """A later attempt may succeed."""

    transient = True


class TerminalError(EnrichError):
    """Retrying cannot help; the message says what to change."""

    transient = False


def transient_status(status: int | None) -> bool:
    """Whether an HTTP status is worth a retry (``None``: no answer at all, so yes)."""
    if status is None:
        return True
    return status in TRANSIENT_STATUS_CODES or (status >= 500 and status not in TERMINAL_5XX)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away on its own. The project's errors carry their mark; from
    outside, a dropped connection, a timeout or a busy store is transient, anything else
    terminal."""
    if isinstance(exc, EnrichError):
        return exc.transient
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS
