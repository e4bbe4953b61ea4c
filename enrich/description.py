"""What a published table is: its columns and what they mean, its partitions and their counts,
the models that answered, and the runs that wrote it — from the data files' footers and the
manifests, without reading a row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from enrich.tables import Partition, PublishedTable, open_parquet, with_storage_credentials
from schemas.tables import field_description
from tasks.edges import storage

NOT_RECORDED = "(not recorded)"


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    description: str | None


@dataclass(frozen=True)
class PartitionInfo:
    """One partition: counts and the run that published it, from its manifest (``None`` where
    the manifest is missing or older than the key), and whether ``_SUCCESS`` is present (data,
    rejected rows and manifest come from the same completed publish)."""

    partition: str
    published_rows: int | None
    rejected_rows: int | None
    rejected_by_reason: dict[str, int]
    success: bool
    run_id: str | None
    published_at: str | None
    jobs: dict[str, str]  # batch job id → its final status
    model: str | None
    model_versions: dict[str, int]  # empty: the manifest does not record them


@dataclass(frozen=True)
class TableDescription:
    """A published table at a glance; ``str()`` gives the text ``enrich describe`` prints."""

    table: str
    work: str
    kind: str | None
    id_column: str | None
    text_column: str | None
    columns: tuple[ColumnInfo, ...]
    partitions: tuple[PartitionInfo, ...]
    columns_from: str | None = field(default=None)  # the partition whose columns are shown

    @property
    def published_rows(self) -> int:
        return sum(p.published_rows or 0 for p in self.partitions)

    @property
    def rejected_rows(self) -> int:
        return sum(p.rejected_rows or 0 for p in self.partitions)

    @property
    def models(self) -> dict[str, dict[str, int]]:
        """Rows per requested model and answering version (``(not recorded)`` for partitions
        whose manifests predate versions)."""
        found: dict[str, dict[str, int]] = {}
        for p in self.partitions:
            versions = p.model_versions or {NOT_RECORDED: p.published_rows or 0}
            per_model = found.setdefault(p.model or NOT_RECORDED, {})
            for version, rows in versions.items():
                per_model[version] = per_model.get(version, 0) + rows
        return found

    def __str__(self) -> str:
        about = ", ".join(
            part
            for part in (
                self.kind or "kind not recorded",
                f"id column {self.id_column}" if self.id_column else "",
                f"text column {self.text_column}" if self.text_column else "",
            )
            if part
        )
        lines = [
            f"Table {self.table} ({about})",
            f"{self.published_rows:,} published and {self.rejected_rows:,} rejected rows in "
            f"{len(self.partitions)} partition(s); manifests under {self.work}/published",
            "",
            f"Columns (of partition {self.columns_from})" if self.columns_from else "Columns",
            *_aligned(
                ("name", "type", "description"),
                [(c.name, c.type, c.description or "") for c in self.columns],
            ),
            "",
            "Partitions",
            *_aligned(
                ("partition", "published", "rejected", "_SUCCESS", "rejected by reason"),
                [
                    (
                        p.partition,
                        _count(p.published_rows),
                        _count(p.rejected_rows),
                        "yes" if p.success else "NO",
                        ", ".join(f"{r} {n:,}" for r, n in sorted(p.rejected_by_reason.items())),
                    )
                    for p in self.partitions
                ],
            ),
            "",
            "Models (requested → answering version: rows)",
            *(
                f"  {model} → " + ", ".join(f"{v}: {n:,}" for v, n in sorted(versions.items()))
                for model, versions in sorted(self.models.items())
            ),
            "",
            "Runs",
            *_aligned(
                ("partition", "run", "published at", "batch jobs"),
                [
                    (
                        p.partition,
                        p.run_id or NOT_RECORDED,
                        p.published_at or "",
                        ", ".join(f"{job} ({status})" for job, status in sorted(p.jobs.items()))
                        or "none (every result from the cache)",
                    )
                    for p in self.partitions
                ],
            ),
        ]
        return "\n".join(lines)


def describe(
    table: str,
    *,
    partitions: Sequence[str] | None = None,
    work: str | None = None,
    storage_credentials: str | None = None,
) -> TableDescription:
    """The published table at ``table``: its columns (name, type, description) as the latest
    published partition's data file has them (its Arrow field metadata ``description``, else
    the manifest's schema entries), each partition's counts and ``_SUCCESS``, the requested
    models and the versions that answered (with rows), and the run behind each partition (run
    id, when, jobs). Partitions whose every row was rejected are listed too. ``work`` is the
    run's ``work`` when it was not the default; ``storage_credentials`` names a prefect-aws
    ``AwsCredentials`` block for ``s3://``."""

    def look() -> TableDescription:
        published = PublishedTable.open(table, partitions=partitions, work=work, with_empty=True)
        latest = _latest(published.partitions)
        return TableDescription(
            table=published.uri,
            work=published.layout.work,
            kind=published.kind(),
            id_column=_last(published.partitions, "id_column"),
            text_column=_last(published.partitions, "text_column"),
            columns=_columns(latest) if latest else (),
            partitions=tuple(_partition(published, p) for p in published.partitions),
            columns_from=latest.value if latest else None,
        )

    return with_storage_credentials(storage_credentials, look)


def _latest(partitions: Sequence[Partition]) -> Partition | None:
    """The most recently published partition (by the manifests' ``published_at``, else by
    value), preferring one with a data file."""
    if not partitions:
        return None
    return max(partitions, key=lambda p: (p.data is not None, p.get("published_at") or "", p.value))


def _last(partitions: Sequence[Partition], key: str) -> Any:
    values = [p.get(key) for p in partitions if p.get(key) is not None]
    return values[-1] if values else None


def _columns(partition: Partition) -> tuple[ColumnInfo, ...]:
    entries = [e for e in partition.get("schema") or [] if isinstance(e, dict) and "name" in e]
    schema = partition.schema()
    if schema is None:  # every row rejected: the manifest's schema is all there is
        return tuple(
            ColumnInfo(e["name"], str(e.get("type", "")), e.get("description")) for e in entries
        )
    described = {e["name"]: e.get("description") for e in entries}
    return tuple(
        ColumnInfo(f.name, str(f.type), field_description(f) or described.get(f.name))
        for f in schema
    )


def _partition(published: PublishedTable, partition: Partition) -> PartitionInfo:
    counts = partition.get("counts") or {}
    published_rows = counts.get("published_rows")
    if published_rows is None and partition.data is not None:
        published_rows = open_parquet(partition.data).metadata.num_rows
    return PartitionInfo(
        partition=partition.value,
        published_rows=published_rows,
        rejected_rows=counts.get("rejected_rows"),
        rejected_by_reason=dict(counts.get("rejected_by_reason") or {}),
        success=storage.exists(published.layout.success_marker(partition.value)),
        run_id=partition.get("run_id"),
        published_at=partition.get("published_at"),
        jobs=dict(partition.get("jobs") or {}),
        model=partition.get("model"),
        model_versions={str(v): int(n) for v, n in (partition.get("model_versions") or {}).items()},
    )


def _count(value: int | None) -> str:
    return NOT_RECORDED if value is None else f"{value:,}"


def _aligned(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` under ``headers``, each column as wide as its widest cell, indented."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    return [
        "  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
