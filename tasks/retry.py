"""The one retry rule of the project's Prefect tasks: retry what may succeed later, never a
terminal error. Every ``@task(retries=...)`` passes ``retry_condition_fn=retry_if_transient``;
:func:`tasks.core.errors.is_transient` decides."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.states import get_state_exception

from tasks.core.errors import is_transient


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: whether the failed run's exception is transient."""
    if not state.is_failed():
        return False
    # Prefect answers with a coroutine only inside async tasks; this project's tasks are sync.
    exc = get_state_exception(state)
    return isinstance(exc, BaseException) and is_transient(exc)
