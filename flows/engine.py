"""Where the flow's mapped shard tasks run: the flow's own thread pool (the default) or Dask.

The flow is deployed once, so the engine is a run parameter (``task_runner``), not a decorator
argument: for ``dask`` the flow starts a ``prefect-dask`` task runner for the length of the run
and makes it the run's task runner, so every ``task.map`` of the flow goes to the cluster while
single tasks (plan, validate, publish) stay in the flow's process. Everything that passes between
tasks is a small ref of URIs (``schemas/refs.py``), never a frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.context import FlowRunContext
from prefect.logging import get_run_logger

DEFAULT_LOCAL_WORKERS = 2


def local_cluster_options(workers: int, api_url: str | None) -> dict[str, Any]:
    """A LocalCluster of ``workers`` processes with one thread each: one shard in memory per
    process, so memory is bounded by the worker count, not the data. The workers inherit the
    environment (MISTRAL_*, AWS_*, ENRICH_*) and are told where the flow's Prefect API is (an
    ephemeral one lives only in this process's settings)."""
    env = {"PREFECT_API_URL": api_url} if api_url else {}
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "env": env,
    }


def dask_runner(spec: str) -> Any:
    """The ``DaskTaskRunner`` for a ``task_runner`` value other than ``threads``."""
    from prefect.client.orchestration import get_client
    from prefect_dask.task_runners import DaskTaskRunner

    if spec.startswith("dask"):
        _, _, count = spec.partition(":")
        workers = int(count) if count else min(os.cpu_count() or 1, DEFAULT_LOCAL_WORKERS)
        api_url = get_client(sync_client=True).api_url
        return DaskTaskRunner(cluster_kwargs=local_cluster_options(workers, str(api_url)))
    return DaskTaskRunner(address=spec)


@contextmanager
def running_tasks_on(spec: str) -> Iterator[None]:
    """Inside the block, the flow run's mapped tasks go to the engine ``spec`` names."""
    context = FlowRunContext.get()
    if spec == "threads" or context is None:
        yield
        return
    runner = dask_runner(spec)
    get_run_logger().info("Shard tasks run on Dask (%s)", spec)
    with runner, context.model_copy(update={"task_runner": runner}):
        _ = runner.client  # connect (or start the local cluster) now, not inside the first map
        yield
