"""One writer per table partition: a lease taken before anything is spent.

A lease is a numbered object under ``<work>/leases/partition=<value>/``: ``<generation>.json``,
created only if absent (a hard link locally, ``If-None-Match: *`` on S3), so of two runs racing
for the same generation exactly one wins. The highest generation is the current lease; it is
free when released (``<generation>.released``), expired (its holder renews it every
``ttl / 5`` seconds from a background thread), or held by a process of this host that is gone
(a SIGKILLed run frees its partition at once, without waiting for the expiry).

The holder checks before it publishes that the lease is still its own; a run that lost it (a
pause longer than the ttl let another take over) stops rather than publish over the other.
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import copy_context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.params import EnrichParams
from tasks.core.errors import TerminalError, TransientError
from tasks.core.layout import Layout
from tasks.edges import storage

TTL_SECONDS = 300.0
_GENERATION_DIGITS = 10


class LeaseHeldError(TransientError):
    """Another live run holds the partition. Transient: once that run ends, the lease is
    free."""

    expected = True


class LeaseLostError(TerminalError):
    """The run's lease was taken over by another run: it must not publish. Terminal: this run
    never gets the lease back; a new run takes a new one."""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _host_identity() -> dict[str, Any]:
    """What makes a pid comparable: the host, its boot, and the pid namespace (containers that
    share a host name still have pids of their own)."""
    identity: dict[str, Any] = {"host": socket.gethostname()}
    with suppress(OSError):
        identity["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with suppress(OSError):
        identity["pid_namespace"] = Path("/proc/self/ns/pid").stat().st_ino
    return identity


def _alive_here(holder: dict[str, Any]) -> bool:
    """False only when the holder ran in this host's pid space and its process is gone."""
    here = _host_identity()
    if any(holder.get(k) != v for k, v in here.items()) or len(here) < 3:
        return True
    pid = int(holder.get("pid", 0))
    if pid <= 0:
        return True
    started = _process_start(pid)
    if started is None:
        return not Path("/proc").is_dir()  # no /proc: cannot tell, trust the expiry
    return holder.get("pid_start") in (None, started)


def describe(holder: dict[str, Any]) -> str:
    run = holder.get("flow_run_id") or "a run outside Prefect"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("acquired_at", 0))))
    return f"flow run {run} (host {holder.get('host')}, pid {holder.get('pid')}, since {since})"


@dataclass
class Lease:
    folder: str
    generation: int
    record: dict[str, Any]
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    lost: str | None = None
    succeeded: dict[str, Any] | None = None  # the holder before, when it ended unreleased
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return _lease_uri(self.folder, self.generation)

    def start_renewing(self) -> None:
        self._thread = threading.Thread(  # the run's context: its storage credentials
            target=copy_context().run, args=(self._renew_loop,), name="enrich-lease", daemon=True
        )
        self._thread.start()

    def _renew_loop(self) -> None:
        ttl = float(self.record["ttl"])
        while not self._stop.wait(ttl / 5):
            try:
                self.renew()
            except LeaseLostError as exc:
                self.lost = str(exc)
                self.log.error("%s", exc)
                return
            except OSError as exc:  # storage hiccup: the next renewal may succeed
                self.log.warning("Could not renew the lease %s: %s", self.uri, exc)

    def _halt_renewal(self) -> None:
        """Stop the renewal thread (tests: a holder that pauses)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def renew(self) -> None:
        self.check()
        now = time.time()
        self.record |= {"renewed_at": now, "expires_at": now + float(self.record["ttl"])}
        storage.write_json(self.uri, self.record)

    def check(self) -> None:
        """Raise ``LeaseLostError`` unless this run still holds the partition: its lease is the
        newest, names this run, is not released, and has not expired (renewals may have
        failed)."""
        if self.lost:
            raise LeaseLostError(self.lost)
        if time.time() > float(self.record["expires_at"]):
            self.lost = (
                f"the lease {self.uri} expired: it could not be renewed for "
                f"{self.record['ttl']:.0f} s, so another run may have taken the partition over. "
                "This run stops without publishing; run it again."
            )
            raise LeaseLostError(self.lost)
        top = _top(self.folder)
        current = _read(top[1]) if top else None
        if (
            top is None
            or top[0] != self.generation
            or current is None
            or current.get("owner") != self.record["owner"]
            or storage.exists(_released_uri(self.uri))
        ):
            holder = current
            by = describe(holder) if holder else "nobody"
            self.lost = (
                f"the lease on {self.folder} was taken over by {by}; this run stops "
                "without publishing. Run it again once that run is over."
            )
            raise LeaseLostError(self.lost)

    def held(self) -> bool:
        """Whether this run still holds the partition (logged when it does not)."""
        try:
            self.check()
        except LeaseLostError as exc:
            self.log.warning("%s", exc)
            return False
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.lost:
            try:
                storage.write_bytes(_released_uri(self.uri), b"")
            except OSError as exc:  # the lease then frees itself when it expires
                self.log.warning("Could not release the lease %s: %s", self.uri, exc)


def _lease_uri(folder: str, generation: int) -> str:
    return storage.join(folder, f"{generation:0{_GENERATION_DIGITS}d}.json")


def _released_uri(lease_uri: str) -> str:
    return lease_uri.removesuffix(".json") + ".released"


def _read(uri: str) -> dict[str, Any] | None:
    try:
        value = storage.read_json(uri)
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _top(folder: str) -> tuple[int, str] | None:
    generations = []
    for uri in storage.list_files(folder, ".json"):
        stem = posixpath.basename(uri).removesuffix(".json")
        if stem.isdigit():
            generations.append((int(stem), uri))
    return max(generations) if generations else None


def _holder_if_live(
    folder: str, now: float
) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
    """The current generation, its live holder (None when the lease is free) and, when the
    lease is free because its holder died or expired without releasing it, that holder."""
    top = _top(folder)
    if top is None:
        return 0, None, None
    generation, uri = top
    holder = _read(uri)
    if holder is None or storage.exists(_released_uri(uri)):
        return generation, None, None
    if float(holder.get("expires_at", 0)) < now or not _alive_here(holder):
        return generation, None, holder
    return generation, holder, None


def acquire(
    folder: str,
    flow_run_id: str | None,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    wait_seconds: float = 0.0,
    ttl: float = TTL_SECONDS,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Lease:
    """Take the lease on ``folder`` (one partition of one table): wait up to ``wait_seconds``
    for a live holder to end, then refuse with ``LeaseHeldError`` naming it."""
    deadline = clock() + wait_seconds
    announced = False
    while True:
        now = clock()
        generation, holder, ended = _holder_if_live(folder, now)
        if holder is None:
            record = {
                "owner": uuid.uuid4().hex,
                "flow_run_id": flow_run_id,
                **_host_identity(),
                "pid": os.getpid(),
                "pid_start": _process_start(os.getpid()),
                "acquired_at": now,
                "renewed_at": now,
                "expires_at": now + ttl,
                "ttl": ttl,
            }
            uri = _lease_uri(folder, generation + 1)
            try:
                storage.write_json(uri, record, exclusive=True)
            except FileExistsError:
                continue  # another run took this generation first: look again
            written = _read(uri)  # a store that ignored the condition would let both "win"
            if written is None or written.get("owner") != record["owner"]:
                continue
            for old in range(max(1, generation - 2), generation):  # keep the last few
                storage.remove(_lease_uri(folder, old))
                storage.remove(_released_uri(_lease_uri(folder, old)))
            lease = Lease(folder, generation + 1, record, log, succeeded=ended)
            lease.start_renewing()
            return lease
        if now >= deadline:
            raise LeaseHeldError(
                f"{folder} is being written by {describe(holder)}; its lease runs until "
                f"{time.strftime('%H:%M:%S UTC', time.gmtime(float(holder['expires_at'])))} "
                "unless renewed. Wait for that run to end, or give this run "
                "lease_wait_seconds to wait for it."
            )
        if not announced:
            log.info(
                "Waiting up to %.0f s for %s to release %s", wait_seconds, describe(holder), folder
            )
            announced = True
        sleep(min(2.0, max(0.05, deadline - now)))


def release_for_run(leases_root: str, flow_run_id: str) -> list[str]:
    """Release every lease under ``leases_root`` that ``flow_run_id`` holds (the cancel and
    crash hooks: they run in another process than the flow's)."""
    released = []
    for uri in storage.list_files(leases_root, ".json"):
        holder = _read(uri)
        if holder and holder.get("flow_run_id") == flow_run_id:
            top = _top(uri.rsplit("/", 1)[0])
            if top is not None and top[1] == uri and not storage.exists(_released_uri(uri)):
                storage.write_bytes(_released_uri(uri), b"")
                released.append(uri)
    return released


def sweep_after_takeover(lease: Lease, params: EnrichParams) -> int:
    """Remove the temporary files a dead holder left among its job records (a SIGKILL while
    another of its threads was writing one). Its own reruns never sweep there: a rerun is a new
    flow run with a folder of its own. Safe: the holder is gone, so nothing writes there."""
    dead_run = (lease.succeeded or {}).get("flow_run_id")
    if not dead_run:
        return 0
    return storage.sweep_temporary(Layout.of(params).run_jobs(str(dead_run)))


@contextmanager
def holding_partition(params: EnrichParams, partition: str) -> Iterator[Lease]:
    """The flow's lease on (output, partition), released when the block ends; a killed run's
    lease is freed by its death (same host), its hooks, or its expiry."""
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    log = get_run_logger()
    lease = acquire(
        Layout.of(params).lease_folder(partition),
        flow_run.get_id(),
        log,
        wait_seconds=params.lease_wait_seconds,
    )
    log.info("Holding the lease on %s partition=%s (%s)", params.output, partition, lease.uri)
    try:
        sweep_after_takeover(lease, params)
        yield lease
    finally:
        lease.release()
