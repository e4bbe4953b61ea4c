"""The workspace quota: Mistral holds at most 1,000,000 pending requests per workspace.

Every submission holds slots of a Prefect global concurrency limit equal to its requests, from
before its jobs are created until they are over; runs that would go over the quota wait for
slots instead of being refused by Mistral. The limit is created when missing; an operator may
resize it in the Prefect UI (the size found there wins over the setting).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class QuotaSettings(BaseSettings):
    """``ENRICH_QUOTA_NAME`` and ``ENRICH_QUOTA_SIZE``."""

    model_config = SettingsConfigDict(env_prefix="ENRICH_QUOTA_", extra="ignore")

    name: str = Field(default="mistral-pending-requests", min_length=1)
    size: int = Field(default=1_000_000, ge=1)


def ensure_limit(settings: QuotaSettings) -> int:
    """The size of the global concurrency limit, created with ``settings.size`` if missing."""
    with get_client(sync_client=True) as client:
        try:
            return int(client.read_global_concurrency_limit_by_name(settings.name).limit)
        except ObjectNotFound:
            pass
        with suppress(ObjectAlreadyExists):  # another run may create it first
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=settings.name, limit=settings.size)
            )
        return int(client.read_global_concurrency_limit_by_name(settings.name).limit)


@task(name="reserve-quota")
def reserve_quota() -> tuple[str, int]:
    """The limit's name and size (created if missing)."""
    settings = QuotaSettings()
    size = ensure_limit(settings)
    get_run_logger().info(
        "Pending-requests quota: global concurrency limit %r of %d slots", settings.name, size
    )
    return settings.name, size


@contextmanager
def holding(name: str, requests: int) -> Iterator[None]:
    """Hold ``requests`` slots for the block; waits (without limit) until they are free."""
    with concurrency(name, occupy=requests, strict=True, lease_duration=600):
        yield
