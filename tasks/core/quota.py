"""Quota arithmetic: shards cut into waves that fit the pending-requests limit."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.refs import ShardRef
from tasks.core.errors import TerminalError


def waves(shards: Sequence[ShardRef], capacity: int) -> list[list[ShardRef]]:
    """Shards in order, grouped so no group holds more than ``capacity`` requests."""
    grouped: list[list[ShardRef]] = []
    held = 0
    for shard in shards:
        if shard.requests > capacity:
            raise QuotaError(
                f"shard {shard.shard} has {shard.requests:,} requests, more than the whole "
                f"pending-requests quota ({capacity:,}); lower shard_size or raise the limit "
                "(ENRICH_QUOTA_SIZE, or the global concurrency limit in the Prefect UI)"
            )
        if not grouped or held + shard.requests > capacity:
            grouped.append([])
            held = 0
        grouped[-1].append(shard)
        held += shard.requests
    return grouped


class QuotaError(TerminalError):
    """A single job needs more requests than the whole quota: it could never be submitted."""

    expected = True
