"""Where things live.

The table folder (``output``) holds only what analysts read: ``partition=<value>/part-0.parquet``
and an empty ``_SUCCESS`` marker. Everything else lives under the work root (default
``_enrich/<output name>`` beside the output): polars reads every non-empty file under a folder it
scans, so staging, rejected rows or a manifest inside the table would break
``polars.scan_parquet(output)`` or leak into it.

    <work>/staging/<run>/        rows, request shards, results, staged outputs, checks
    <work>/rejected/partition=<value>/<flow run>-<n>.parquet   named by the manifest
    <work>/published/partition=<value>/_manifest.json
    <output parent>/_enrich/_leases/<output name>/partition=<value>/<generation>.json
                                 one writer per partition (keyed by the output, not the work root)
    <work>/quarantine/<run>/     staged data, validation result and Data Docs of a failed run
    <work>/runs/<flow run id>/   the Mistral jobs a flow run created or reattached (cancel hook)
"""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path

from schemas.params import EnrichParams
from schemas.tables import PARTITION_COLUMN

DATA_FILE = "part-0.parquet"
SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage (``s3://...``) rather than a local path."""
    return "://" in uri and not uri.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """``parts`` below ``uri``: a ``/``-joined key on object storage, a local path else."""
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri.removeprefix("file://"), *parts))


def partition_folder(params: EnrichParams, partition: str) -> str:
    return join(params.output, f"{PARTITION_COLUMN}={partition}")


def data_file(params: EnrichParams, partition: str) -> str:
    return join(partition_folder(params, partition), DATA_FILE)


def staging(params: EnrichParams, run_key: str) -> str:
    return join(params.work_root(), "staging", run_key)


def success_marker(params: EnrichParams, partition: str) -> str:
    return join(partition_folder(params, partition), SUCCESS_MARKER)


def rejected_folder(params: EnrichParams, partition: str) -> str:
    return join(params.work_root(), "rejected", f"{PARTITION_COLUMN}={partition}")


def rejected_file(params: EnrichParams, partition: str, run_id: str) -> str:
    """Unique to each publish (a retry of the same flow run too): the manifest names the one
    that goes with the published data."""
    unique = uuid.uuid4().hex[:8]
    return join(rejected_folder(params, partition), f"{run_id}-{unique}.parquet")


def leases(params: EnrichParams) -> str:
    """Keyed by the output itself (not the work folder): runs that point other ``work`` folders
    at the same table still meet on its lease."""
    parent, _, name = params.output.rstrip("/").rpartition("/")
    return join(f"{parent}/_enrich" if parent else "_enrich", "_leases", name)


def lease_folder(params: EnrichParams, partition: str) -> str:
    return join(leases(params), f"{PARTITION_COLUMN}={partition}")


def manifest_file(params: EnrichParams, partition: str) -> str:
    return join(params.work_root(), "published", f"{PARTITION_COLUMN}={partition}", MANIFEST)


def publish_scratch(params: EnrichParams, partition: str) -> str:
    """Where a publish stages the small objects it moves into the table folder."""
    return join(params.work_root(), "published", f"{PARTITION_COLUMN}={partition}", "_tmp")


def quarantine(params: EnrichParams, run: str) -> str:
    return join(params.work_root(), "quarantine", run)


def run_jobs(params: EnrichParams, flow_run_id: str) -> str:
    """Where a flow run records its Mistral jobs the moment they exist: a cancel hook running in
    another process (the worker's) finds them there."""
    return join(params.work_root(), "runs", flow_run_id)
