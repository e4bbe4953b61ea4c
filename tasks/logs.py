"""One message per expected failure: Prefect logs a task's and a flow's exception with its
traceback (three tracebacks for one missing column). An error whose message is the whole story
(bad input, a budget, a failed gate: ``EnrichError.expected``) is logged by Prefect's engine
without its traceback; any other exception keeps it, because there the traceback is the clue."""

from __future__ import annotations

import logging

from tasks.core.errors import EnrichError

ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class ExpectedErrorFilter(logging.Filter):
    """Drops the traceback from engine records about an expected error (the record stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, EnrichError) and error.expected:
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_errors() -> None:
    """Attach the filter to Prefect's engine loggers of this process (once)."""
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedErrorFilter) for f in logger.filters):
            logger.addFilter(ExpectedErrorFilter())
