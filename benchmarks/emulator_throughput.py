"""Emulator throughput: embedding inputs processed per second, and download MB/s.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/emulator_throughput.py``).

Each figure is printed beside a baseline measured in the same run on the same machine, because
machines here are shared and noisy: compare the ratios, not the absolute seconds.

* processing: a batch job of packed embedding requests (64 inputs a line, as the enrich flow sends),
  timed from RUNNING to SUCCESS by polling; baseline: the same inputs embedded in-process by the
  emulator's engine with no HTTP, no files and no job bookkeeping.
* downloads: the job's output file streamed through the SDK; baseline: reading the same file from
  disk in 1 MiB blocks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mistralai.client import Mistral

from emulator.catalog import Catalog
from emulator.endpoints import Engine
from emulator.server import EmulatorProcess


def build_input(lines: int, per_line: int) -> bytes:
    rows = []
    for i in range(lines):
        texts = [
            f"review {i}-{k}: the parcel arrived late but support was great"
            for k in range(per_line)
        ]
        rows.append(json.dumps({"custom_id": str(i), "body": {"input": texts}}))
    return "\n".join(rows).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=102_400, help="embedding inputs in the job")
    parser.add_argument("--per-line", type=int, default=64, help="inputs packed in one request")
    args = parser.parse_args()
    lines = args.inputs // args.per_line
    payload = build_input(lines, args.per_line)

    engine = Engine(Catalog.load(None))
    sample = [json.loads(x)["body"] for x in payload.splitlines()[: max(1, lines // 10)]]
    engine.call("/v1/embeddings", {"model": "mistral-embed", "input": ["warm up"]})
    start = time.perf_counter()
    for body in sample:
        engine.call("/v1/embeddings", body, "mistral-embed")
    engine_rate = len(sample) * args.per_line / (time.perf_counter() - start)

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorProcess(Path(tmp), extra_args=("--queue-seconds", "0")) as emu,
    ):
        client = Mistral(api_key="bench", server_url=emu.url)
        uploaded = client.files.upload(
            file={"file_name": "bench.jsonl", "content": payload}, purpose="batch"
        )
        job = client.batch.jobs.create(
            endpoint="/v1/embeddings", input_files=[uploaded.id], model="mistral-embed"
        )
        started = None
        while job.status in ("QUEUED", "RUNNING"):
            if job.status == "RUNNING" and started is None:
                started = time.perf_counter()
            time.sleep(0.05)
            job = client.batch.jobs.get(job_id=job.id)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        assert job.status == "SUCCESS" and job.output_file, job
        job_rate = args.inputs / elapsed

        output = client.files.retrieve(file_id=job.output_file)
        start = time.perf_counter()
        received = 0
        response = client.files.download(file_id=job.output_file)
        for block in response.iter_bytes(1 << 20):
            received += len(block)
        download_s = time.perf_counter() - start
        assert received == output.size_bytes

        stored = sorted((Path(tmp) / "files" / f"{job.output_file}.parts").glob("*"))
        start = time.perf_counter()
        for part in stored:
            with part.open("rb") as handle:
                while handle.read(1 << 20):
                    pass
        disk_s = time.perf_counter() - start

    mb = received / 1e6
    print(f"embedding inputs: {args.inputs:,} in {lines:,} requests of {args.per_line}")
    print(f"{'measure':<34}{'emulator':>14}{'baseline':>14}{'ratio':>8}")
    rows = [
        ("processing, inputs/s", job_rate, engine_rate),
        ("download, MB/s", mb / download_s, mb / disk_s),
    ]
    for name, measured, baseline in rows:
        print(f"{name:<34}{measured:>14,.0f}{baseline:>14,.0f}{measured / baseline:>8.2f}")
    print(f"output file: {mb:,.0f} MB; targets: >= 20,000 inputs/s, >= 200 MB/s")


if __name__ == "__main__":
    main()
