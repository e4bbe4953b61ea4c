"""Measuring a benchmark phase in a fresh child process, so its peak RSS is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_phase(script: str, name: str, work: Path) -> tuple[float, float, dict[str, Any]]:
    """Seconds, peak RSS in MiB and the phase's counts: ``script --phase name --work work``
    run in a child process, which answers with ``report``."""
    done = subprocess.run(
        [sys.executable, script, "--phase", name, "--work", str(work)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak_mib"], result["counts"]


def report(phase: Callable[[Path], dict[str, Any]], work: Path) -> None:
    """In the child: time ``phase`` and print seconds, peak RSS and counts as one JSON line."""
    start = time.perf_counter()
    counts = phase(work)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "counts": counts}))
