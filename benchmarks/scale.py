"""The real thing at scale: `enrich run` end to end against the emulator, per dataset size.

Run: ``.venv/bin/python benchmarks/scale.py --rows 100000 1000000`` (``--kind embeddings``).

For each size: unique texts in one Parquet file, a fresh emulator, then ``enrich run`` as a child
process (its own temporary Prefect server included, as a user would run it). The script samples
the resident memory of the run's process and of its whole process tree (children included) every
quarter second, and prints beside it, measured in the same run:

* wall time split by step (the run's own ``step_seconds``: plan, build, submit, wait, collect,
  write, validate, cache, publish);
* output bytes, bytes left in staging and in the whole work folder;
* the baseline: polars' raw NDJSON parse of the very output files the run collected
  (``pl.read_ndjson`` per file, in a child process), against the run's post-processing
  (collect → publish); and beside it the parser the collect step uses alone (a typed
  ``pl.scan_ndjson`` with the kind's schema), on the same files.

Machines here are shared and noisy: read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.inputs import make_input
from emulator.server import EmulatorProcess

PROJECT = Path(__file__).resolve().parents[1]
ENRICH = str(Path(sys.executable).with_name("enrich"))
POST_PROCESSING = ("collect", "write", "validate", "cache-stage", "publish", "cache-promote")
API_KEY = "sk-scale-benchmark"


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class MemorySampler(threading.Thread):
    """Peak RSS of a process, and of it plus its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_process = self.peak_tree = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            own = _rss_kib(self.pid)
            tree = own + sum(_rss_kib(p) for p in _descendants(self.pid))
            self.peak_process = max(self.peak_process, own)
            self.peak_tree = max(self.peak_tree, tree)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_enrich(work: Path, emulator: EmulatorProcess, kind: str) -> dict[str, Any]:
    summary_path = work / "summary.json"
    env = os.environ | {
        "MISTRAL_SERVER_URL": emulator.url,
        "MISTRAL_API_KEY": API_KEY,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_HOME": str(work / "prefect-home"),
    }
    args = [ENRICH, "run", "--input", str(work / "input.parquet"), "--id-column", "id"]
    args += ["--text-column", "text", "--output", str(work / "out" / "table"), "--kind", kind]
    args += ["--partition", "2026-11-22", "--poll-interval", "2", "--cache-mode", "off"]
    args += ["--summary-json", str(summary_path)]
    log = (work / "enrich.log").open("w")
    started = time.perf_counter()
    child = subprocess.Popen(args, env=env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
    sampler = MemorySampler(child.pid)
    sampler.start()
    code = child.wait(timeout=6 * 3600)
    sampler.stop()
    log.close()
    seconds = time.perf_counter() - started
    if code != 0:
        tail = (work / "enrich.log").read_text().splitlines()[-30:]
        raise RuntimeError(f"enrich run exited {code}:\n" + "\n".join(tail))
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return {
        "seconds": seconds,
        "peak_process_mib": sampler.peak_process / 1024,
        "peak_tree_mib": sampler.peak_tree / 1024,
        "steps": summary["step_seconds"],
        "jobs": list(summary["jobs"]),
        "enriched": summary["enriched_rows"],
    }


def download_outputs(emulator: EmulatorProcess, jobs: list[str], target: Path) -> list[Path]:
    from mistralai.client import Mistral

    client = Mistral(api_key=API_KEY, server_url=emulator.url)
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for job_id in jobs:
        output = client.batch.jobs.get(job_id=job_id).output_file
        if not output:
            continue
        path = target / f"{job_id}.jsonl"
        with path.open("wb") as sink:
            for block in client.files.download(file_id=output).iter_bytes(1 << 20):
                sink.write(block)
        files.append(path)
    return files


RAW_PARSE = """
import sys, time, polars as pl
start = time.perf_counter()
rows = sum(pl.read_ndjson(path).height for path in sys.argv[1:])
print(time.perf_counter() - start, rows)
"""


# The parser the collect step uses, alone: a scan with the kind's schema given up front (vectors
# read straight into Float32 lists, no type inference), on the same files.
TYPED_PARSE = """
import sys, time, polars as pl
import kinds
from tasks.core.parsing import _first_line, _line_schema
from pathlib import Path
kind, paths = kinds.get(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
start = time.perf_counter()
rows = 0
for path in paths:
    schema = _line_schema(kind, _first_line(path) or {})
    rows += pl.scan_ndjson(path, schema=schema).collect().height
print(time.perf_counter() - start, rows)
"""


def parse_seconds(script: str, *args: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT,
    )
    return float(done.stdout.split()[0])


def measure(rows: int, kind: str, root: Path) -> dict[str, Any]:
    work = root / f"rows-{rows}"
    work.mkdir(parents=True)
    make_input(work, rows)
    with EmulatorProcess(work / "emulator", api_key=API_KEY) as emulator:
        run = run_enrich(work, emulator, kind)
        outputs = download_outputs(emulator, run["jobs"], work / "raw")
    output_json = sum(p.stat().st_size for p in outputs)
    baseline = parse_seconds(RAW_PARSE, *map(str, outputs))
    typed = parse_seconds(TYPED_PARSE, kind, *map(str, outputs))
    shutil.rmtree(work / "raw")
    post = sum(run["steps"].get(step, 0.0) for step in POST_PROCESSING)
    enrich_root = work / "out" / "_enrich" / "table"
    return run | {
        "rows": rows,
        "output_json_bytes": output_json,
        "table_bytes": folder_bytes(work / "out" / "table"),
        "staging_bytes": folder_bytes(enrich_root / "staging"),
        "work_bytes": folder_bytes(enrich_root),
        "raw_parse_seconds": baseline,
        "typed_parse_seconds": typed,
        "post_processing_seconds": post,
    }


def show(results: list[dict[str, Any]]) -> None:
    steps = sorted({s for r in results for s in r["steps"]}, key=list(results[0]["steps"]).index)
    print()
    print(
        "| rows | wall s | peak RSS run MiB | peak RSS tree MiB | output JSON GB | table GB "
        "| staging left GB | post-processing s | raw polars parse s | ratio "
        "| typed scan s (collect's parser) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['seconds']:.0f} | {r['peak_process_mib']:,.0f} "
            f"| {r['peak_tree_mib']:,.0f} | {r['output_json_bytes'] / 1e9:.2f} "
            f"| {r['table_bytes'] / 1e9:.2f} | {r['staging_bytes'] / 1e9:.2f} "
            f"| {r['post_processing_seconds']:.1f} | {r['raw_parse_seconds']:.1f} "
            f"| {r['post_processing_seconds'] / max(r['raw_parse_seconds'], 1e-9):.2f}x "
            f"| {r['typed_parse_seconds']:.1f} |"
        )
    print()
    print("| rows | " + " | ".join(steps) + " |")
    print("|---|" + "---|" * len(steps))
    for r in results:
        cells = " | ".join(f"{r['steps'].get(s, 0.0):.1f}" for s in steps)
        print(f"| {r['rows']:,} | {cells} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kind", default="embeddings")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="enrich-scale-", dir=args.workdir))
    results = []
    try:
        for rows in args.rows:
            result = measure(rows, args.kind, root)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "jobs"}), flush=True)
            shutil.rmtree(root / f"rows-{rows}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
