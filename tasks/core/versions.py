"""Model versions: which version of the model answered each result, and what to do when one
partition's results came from several.

A run asks for a model by name, often an alias (``mistral-moderation-latest``). The service may
say which version answered (a response's or a job's ``model``); where it does, every result keeps
that version (``model_version``), the cache keys results by it, and a partition mixing versions is
re-sent, refused or accepted (``on_mixed_versions``). Where the service names only the alias, the
version is the alias and nothing here ever sees a mix.
"""

from __future__ import annotations

import polars as pl

from schemas.params import EnrichParams
from schemas.refs import CollectRef
from tasks.core.columns import MODEL_VERSION
from tasks.core.errors import TerminalError


class MixedVersionsError(TerminalError):
    """The partition's results came from different model versions and the run was told to
    refuse (``on_mixed_versions: refuse``): nothing is published."""

    expected = True


def counts(frame: pl.DataFrame) -> dict[str, int]:
    """Rows per answering version (``model_version``) of ``frame``."""
    if not frame.height or MODEL_VERSION not in frame.columns:
        return {}
    grouped = frame.group_by(MODEL_VERSION).len()
    return {str(v): int(n) for v, n in grouped.iter_rows() if v is not None}


def add(*many: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in many:
        for version, count in one.items():
            total[version] = total.get(version, 0) + count
    return dict(sorted(total.items()))


def current(collected: list[CollectRef]) -> str | None:
    """The version the model answers with now: the one that answered most of this run's texts
    (on a tie, the greatest name: versions are named by date). A few retries answered during
    a gradual rollout do not outweigh the run. None: the service answered nothing this run."""
    texts = add(*(c.model_versions for c in collected))
    if not texts:
        return None
    return max(texts, key=lambda version: (texts[version], version))


def describe(texts: dict[str, int], unit: str = "texts") -> str:
    """``mistral-moderation-2411 (3 texts), mistral-moderation-2603 (9 texts)``."""
    return ", ".join(f"{version} ({count:,} {unit})" for version, count in texts.items())


def refusal(params: EnrichParams, partition: str, texts: dict[str, int], target: str) -> str:
    """The message of a refused mix: the versions, the texts each answered, what to do next."""
    stale = sum(n for version, n in texts.items() if version != target)
    return (
        f"partition {partition} of {params.output} would mix answers of different versions of "
        f"{params.model}: {describe(texts)}; the model now answers as {target}. Nothing was "
        f"published (on_mixed_versions=refuse). Run again with on_mixed_versions=resend to "
        f"send the {stale:,} text(s) answered by older versions again, or =accept to publish "
        "them as they are (the manifest lists the versions); the rerun reuses this run's jobs."
    )
