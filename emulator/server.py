"""Run the emulator on a socket, and start/stop it as a child process (tests and the demo)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import uvicorn

from emulator.app import EmulatorConfig, create_app

READY_PREFIX = "Mistral API emulator listening on "


class _AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"{READY_PREFIX}{self._url}", flush=True)


def serve(config: EmulatorConfig, host: str, port: int, *, access_log: bool = False) -> None:
    """Bind ``host:port`` (0: a free port), print the ready line, serve until SIGINT/SIGTERM."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    uv_config = uvicorn.Config(
        create_app(config),
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=5,
    )
    _AnnouncingServer(uv_config, f"http://{shown_host}:{bound_port}").run(sockets=[sock])


class ServiceStartError(RuntimeError):
    """A child server exited before it printed its ready line; its output says why."""


class ChildService:
    """A server run as a child process: started, awaited until it prints its ready line, stopped.

    Output is collected (``output``) so a failed start shows why. Used for the emulator here and
    for the tests' S3 server.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.output: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def launch(
        self,
        args: list[str],
        ready: Callable[[str], bool],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60.0,
    ) -> str:
        """Start ``args``; return the first line for which ``ready`` holds."""
        self._process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
        )
        assert self._process.stdout is not None
        threading.Thread(target=self._pump, args=(self._process.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise ServiceStartError(
                    f"{self.name} exited before it was ready:\n" + "".join(self.output)
                )
            if ready(line):
                return line
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n" + "".join(self.output))

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (graceful) or SIGKILL (a crash, for restart tests); SIGKILL if it hangs."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


class ManagedServer:
    """A server a test or a benchmark runs as a child process: ``with Server(...) as server``
    starts it and stops it, whatever happens in between. Subclasses launch ``self._service``."""

    def __init__(self, name: str) -> None:
        self._service = ChildService(name)

    @property
    def output(self) -> list[str]:
        return self._service.output

    @property
    def pid(self) -> int | None:
        return self._service.pid

    def start(self, timeout: float = 60.0) -> Self:
        raise NotImplementedError

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        self._service.stop(kill=kill, timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmulatorProcess(ManagedServer):
    """The emulator as a child process on a free loopback port.

    The API key travels in the environment, never on the command line (``ps`` shows arguments).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        api_key: str | None = None,
        faults: Path | None = None,
        extra_args: tuple[str, ...] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = data_dir
        self.api_key = api_key
        self.faults = faults
        self.extra_args = extra_args
        self.host = host
        self.url = ""
        super().__init__("emulator")

    def start(self, timeout: float = 60.0) -> EmulatorProcess:
        args = [sys.executable, "-m", "emulator", "--host", self.host, "--port", "0"]
        args += ["--data-dir", str(self.data_dir), *self.extra_args]
        if self.faults is not None:
            args += ["--faults", str(self.faults)]
        env = {k: v for k, v in os.environ.items() if k != "EMULATOR_API_KEY"}
        if self.api_key is not None:
            env["EMULATOR_API_KEY"] = self.api_key
        line = self._service.launch(
            args, lambda text: text.startswith(READY_PREFIX), env=env, timeout=timeout
        )
        self.url = line[len(READY_PREFIX) :].strip()
        return self
