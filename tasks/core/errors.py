"""One error taxonomy for the whole pipeline.

Every error the project raises on purpose derives from :class:`EnrichError` and is either
:class:`TransientError` (a later attempt may succeed: 429, most 5xx, the network, an expired lease
someone else is about to release) or :class:`TerminalError` (retrying cannot help: bad input, a
refused key, a 4xx, a failed gate, a budget). :func:`is_transient` is the one place that decides;
every task retry asks it, so a terminal error is never retried.
"""

from __future__ import annotations

from typing import ClassVar

# HTTP statuses worth a retry. 5xx are transient except those that describe the request itself:
# 501 (the service does not implement it) and 505 (the HTTP version) answer the same next time.
TRANSIENT_STATUS_CODES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
TERMINAL_5XX = frozenset({501, 505})


class EnrichError(Exception):
    """The root of every error the pipeline raises on purpose. Its message says what happened,
    with the ids involved, and what the user can do next."""

    transient: ClassVar[bool] = False


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
    outside, a dropped connection or a timeout is transient and anything else is terminal."""
    if isinstance(exc, EnrichError):
        return exc.transient
    return isinstance(exc, ConnectionError | TimeoutError)
