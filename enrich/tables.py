"""A published table as analysts find it: its partitions, their data files and manifests.

The table folder holds ``partition=<value>/part-0.parquet`` (and an empty ``_SUCCESS``); each
partition's manifest lives under the work root, ``<work>/published/partition=<value>/
_manifest.json`` (``tasks.core.layout.Layout`` says where). Manifests written before a key
existed lack it: every reader here tolerates a missing ``id_column``, ``text_column``,
``model_versions`` or column ``description``.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import tables
from schemas.params import EnrichParams
from schemas.tables import PARTITION_COLUMN
from tasks.core import layout, versions
from tasks.core.errors import TerminalError
from tasks.core.layout import Layout
from tasks.edges import storage

T = TypeVar("T")

READ_BUFFER = 1 << 20  # bytes read at a time from a data file

# The lineage columns every published table ends with (``model_version`` where the run
# recorded it).
LINEAGE = tuple(column.name for column in tables.LINEAGE)
_DATA_FILE = re.compile(rf"{PARTITION_COLUMN}=([^/\\]+)[/\\]{re.escape(layout.DATA_FILE)}$")
_MANIFEST = re.compile(rf"{PARTITION_COLUMN}=([^/\\]+)[/\\]{re.escape(layout.MANIFEST)}$")


class AnalystError(TerminalError):
    """A question the published table cannot answer as asked; the message says what to change."""

    expected = True


class TableNotFoundError(AnalystError):
    """No published partition at the URI."""


class UnknownPartitionError(AnalystError):
    """A partition asked for is not published."""


class TableMetadataError(AnalystError):
    """The manifests do not say what the question needs (an id column, one model)."""


@dataclass(frozen=True)
class Partition:
    """One published partition: its data file (None when every row was rejected) and manifest
    (None when it is missing: a partition published before manifests, or a foreign work root)."""

    value: str
    data: str | None
    manifest: dict[str, Any] | None

    def get(self, key: str, default: Any = None) -> Any:
        """A key of the manifest (``default`` when the manifest or the key is missing)."""
        return default if self.manifest is None else self.manifest.get(key, default)

    def schema(self) -> pa.Schema | None:
        """The data file's Arrow schema, read from its footer (None: no data file)."""
        if self.data is None:
            return None
        return open_parquet(self.data).schema_arrow


@dataclass(frozen=True)
class PublishedTable:
    """A table written by ``enrich run``: its URI, where its manifests are, and its partitions
    (sorted by value)."""

    uri: str
    layout: Layout
    partitions: tuple[Partition, ...]

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        partitions: Iterable[str] | None = None,
        work: str | None = None,
        with_empty: bool = False,
    ) -> PublishedTable:
        """The partitions of the table at ``uri`` that have a data file (``with_empty``: those
        whose every row was rejected too), or those named in ``partitions``. ``work`` is the
        run's ``work`` parameter when it was not the default (``_enrich/<name>`` beside the
        table). Raises ``TableNotFoundError`` or ``UnknownPartitionError``."""
        uri = uri.rstrip("/")
        table_layout = Layout(uri, work_root(uri, work))
        data = _found(storage.list_files(uri, ".parquet"), _DATA_FILE)
        manifests = _found(
            storage.list_files(storage.join(table_layout.work, "published"), ".json"), _MANIFEST
        )
        if not data and not manifests:
            raise TableNotFoundError(
                f"There is no published table at {uri}: no {PARTITION_COLUMN}=<value>/"
                f"{layout.DATA_FILE} under it. Give the `output` of an `enrich run` (a folder or "
                "an s3:// URI)."
            )
        values = set(data) | (set(manifests) if with_empty else set())
        if partitions is not None:
            wanted = list(dict.fromkeys(partitions))
            missing = [p for p in wanted if p not in values]
            if missing:
                raise UnknownPartitionError(
                    f"{uri} has no published partition {', '.join(map(repr, missing))}; its "
                    f"partitions are: {', '.join(sorted(values)) or '(none with rows)'}"
                )
            values = set(wanted)
        return cls(
            uri,
            table_layout,
            tuple(
                Partition(
                    value,
                    data.get(value),
                    storage.read_json(manifests[value]) if value in manifests else None,
                )
                for value in sorted(values)
            ),
        )

    @property
    def with_data(self) -> tuple[Partition, ...]:
        return tuple(p for p in self.partitions if p.data is not None)

    def kind(self) -> str | None:
        """The kind its manifests name (None when no manifest names one)."""
        kind = self.agreed("kind", required=False)
        return None if kind is None else str(kind)

    def agreed(self, key: str, *, required: bool = True, override: Any = None) -> Any:
        """The one value of manifest ``key`` over the partitions (``override`` when given).
        Partitions that disagree, or (``required``) no manifest naming it, raise
        ``TableMetadataError``."""
        if override is not None:
            return override
        seen = {p.value: p.get(key) for p in self.partitions if p.get(key) is not None}
        distinct = {_hashable(v) for v in seen.values()}
        if len(distinct) > 1:
            shown = ", ".join(f"{value}: {seen[value]!r}" for value in sorted(seen))
            raise TableMetadataError(
                f"The partitions of {self.uri} disagree on {key} ({shown}); ask for partitions "
                "that agree (`partitions=`, `--partition`)."
            )
        if not seen and required:
            raise TableMetadataError(
                f"No manifest of {self.uri} records {key!r} (partitions published before it "
                f"was recorded, or manifests outside {self.layout.work}: give `work=`)."
            )
        return next(iter(seen.values()), None)  # any JSON value

    def id_column(self, override: str | None = None) -> str:
        found = self.agreed("id_column", required=False, override=override)
        if found is None:
            raise TableMetadataError(
                f"No manifest of {self.uri} names its id column (partitions published before "
                "manifests recorded it): give it with `id_column=` (`--id-column`)."
            )
        return str(found)

    def model_versions(self) -> dict[str, int]:
        """Rows per answering model version over the partitions, where manifests record it."""
        return versions.add(*(p.get("model_versions") or {} for p in self.partitions))


def work_root(table: str, work: str | None) -> str:
    """Where the table's manifests are: ``work`` (a run's ``work`` parameter), else the default
    beside the table — asked of ``EnrichParams.work_root``, its one owner (the other fields
    play no part in it)."""
    unused = ""
    params = EnrichParams.model_construct(
        input=unused, id_column=unused, text_column=unused, output=table, work=work or ""
    )
    return params.work_root()


def open_parquet(uri: str) -> pq.ParquetFile:
    """A published data file, opened through the storage layer (its footer is read here; row
    groups when asked). Unbuffered: a column chunk is read as it is decoded rather than
    fetched whole first, so a row group's vectors are held once, not twice."""
    fs, path = storage.arrow_filesystem(uri)
    return pq.ParquetFile(path, filesystem=fs, pre_buffer=False, buffer_size=READ_BUFFER)


def with_storage_credentials(block: str | None, call: Callable[[], T]) -> T:
    """``call()`` reaching ``s3://`` with the prefect-aws ``AwsCredentials`` block ``block``
    (None: the ``AWS_*`` variables). The block applies inside the call only: the analyst's
    session is left as it was."""
    if not block:
        return call()

    def run() -> T:
        storage.use_credentials(block)
        return call()

    return contextvars.copy_context().run(run)


def _found(uris: list[str], pattern: re.Pattern[str]) -> dict[str, str]:
    """Partition value → URI of the files matching ``pattern``."""
    found = {}
    for uri in uris:
        match = pattern.search(uri)
        if match:
            found[match[1]] = uri
    return found


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
