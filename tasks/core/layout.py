"""Where things live.

The table folder (``output``) holds only what analysts read: ``partition=<value>/part-0.parquet``
and an empty ``_SUCCESS`` marker. Everything else lives under the work root (default
``_enrich/<output name>`` beside the output): polars reads every non-empty file under a folder it
scans, so staging, rejected rows or a manifest inside the table would break
``polars.scan_parquet(output)`` or leak into it.

    <work>/staging/<run>/        rows, request shards, results, staged outputs, checks
    <work>/rejected/partition=<value>/<flow run>-<n>.parquet   named by the manifest
    <work>/published/partition=<value>/_manifest.json
    <work>/published/partition=<value>/_insight.png   charts of the results (the results artifact)
    <output parent>/_enrich/_leases/<output name>/partition=<value>/<generation>.json
                                 one writer per partition (keyed by the output, not the work root)
    <work>/quarantine/<run>/     staged data, validation result and Data Docs of a failed run
    <work>/runs/<flow run id>/   the Mistral jobs a flow run created or reattached (cancel hook)
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

from schemas.params import EnrichParams
from schemas.tables import PARTITION_COLUMN

DATA_FILE = "part-0.parquet"
SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"
INSIGHT_IMAGE = "_insight.png"


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage (``s3://...``) rather than a local path."""
    return "://" in uri and not uri.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """``parts`` below ``uri``: a ``/``-joined key on object storage, a local path else."""
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri.removeprefix("file://"), *parts))


@dataclass(frozen=True)
class Layout:
    """Every path of a table: its partitions, and its work root (staging, rejected rows,
    manifests, quarantine, job records, leases). One owner: everyone else asks it."""

    output: str
    work: str

    @classmethod
    def of(cls, params: EnrichParams) -> Layout:
        return cls(params.output, params.work_root())

    # The table: what analysts read.

    def partition_folder(self, partition: str) -> str:
        return join(self.output, f"{PARTITION_COLUMN}={partition}")

    def data_file(self, partition: str) -> str:
        return join(self.partition_folder(partition), DATA_FILE)

    def success_marker(self, partition: str) -> str:
        return join(self.partition_folder(partition), SUCCESS_MARKER)

    # The work root: what the pipeline keeps.

    def staging(self, run_key: str) -> str:
        return join(self.work, "staging", run_key)

    def rejected_folder(self, partition: str) -> str:
        return join(self.work, "rejected", f"{PARTITION_COLUMN}={partition}")

    def rejected_file(self, partition: str, run_id: str) -> str:
        """Unique to each publish (a retry of the same flow run too): the manifest names the one
        that goes with the published data."""
        unique = uuid.uuid4().hex[:8]
        return join(self.rejected_folder(partition), f"{run_id}-{unique}.parquet")

    def manifest_file(self, partition: str) -> str:
        return join(self.work, "published", f"{PARTITION_COLUMN}={partition}", MANIFEST)

    def insight_image(self, partition: str) -> str:
        """Charts of the published results, beside the manifest (never in the table folder)."""
        return join(self.work, "published", f"{PARTITION_COLUMN}={partition}", INSIGHT_IMAGE)

    def publish_scratch(self, partition: str) -> str:
        """Where a publish stages the small objects it moves into the table folder."""
        return join(self.work, "published", f"{PARTITION_COLUMN}={partition}", "_tmp")

    def quarantine(self, run: str) -> str:
        return join(self.work, "quarantine", run)

    def run_jobs(self, flow_run_id: str) -> str:
        """Where a flow run records its Mistral jobs the moment they exist: a cancel hook running
        in another process (the worker's) finds them there."""
        return join(self.work, "runs", flow_run_id)

    def leases(self) -> str:
        """Keyed by the output itself (not the work folder): runs that point other ``work``
        folders at the same table still meet on its lease."""
        parent, _, name = self.output.rstrip("/").rpartition("/")
        return join(f"{parent}/_enrich" if parent else "_enrich", "_leases", name)

    def lease_folder(self, partition: str) -> str:
        return join(self.leases(), f"{PARTITION_COLUMN}={partition}")


@dataclass(frozen=True)
class Staging:
    """Every path inside one run's staging folder (``Layout.staging``)."""

    root: str

    def rows(self, shard: int | None = None) -> str:
        """The input rows, bucketed by text key (one hive partition per shard)."""
        base = join(self.root, "rows")
        return base if shard is None else join(base, f"_bucket={shard}")

    def cache_lookup(self) -> str:
        return join(self.root, "cache")

    def hits(self) -> str:
        return join(self.cache_lookup(), "hits.parquet")

    def cached(self, shard: int | None = None) -> str:
        """Results copied out of the content cache, bucketed like the rows."""
        base = join(self.root, "cached")
        return base if shard is None else join(base, f"_bucket={shard}")

    def attempt(self, shard: int, attempt: int) -> str:
        """A shard attempt's request file, manifest, job record and results."""
        return join(self.root, "shards", f"{shard:05d}", f"attempt-{attempt}")

    def staged(self, folder: str, shard: int) -> str:
        """A shard's part of a staged output (enriched, rejected, checks, ids, cache-add)."""
        return join(self.root, folder, f"part-{shard:05d}.parquet")

    def publish_data(self) -> str:
        return join(self.root, "publish", DATA_FILE)

    def validation(self) -> str:
        return join(self.root, "validation.json")

    def data_docs(self) -> str:
        return join(self.root, "data_docs")
