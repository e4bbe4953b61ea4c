"""Answering batch request lines; runs in worker processes so a job uses every core.

The parent decides the injected line faults (their counters are persisted state) and hands each
worker a slice of raw lines; the worker answers them through the shared ``Engine`` and returns the
output and error lines, already serialised.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from emulator.catalog import Catalog
from emulator.content import seed_of
from emulator.endpoints import Engine
from emulator.faults import CorruptAnswers, draw

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_worker: dict[str, Engine] = {}  # the engine of this worker process


@dataclass(frozen=True)
class LineFault:
    status: int
    message: str
    as_string: bool  # the failure is told in "error" (a string), not in response.body


@dataclass(frozen=True)
class Slice:
    job_id: str
    endpoint: str
    model: str | None
    lines: list[tuple[int, bytes]]  # (line number, raw line)
    faults: dict[int, LineFault]
    out_path: Path  # where the worker writes this slice's output lines
    err_path: Path
    corrupt: CorruptAnswers | None = None
    seed: int = 0


@dataclass(frozen=True)
class SliceResult:
    out_path: Path
    err_path: Path
    succeeded: int
    failed: int
    dropped: int = 0


def init_worker(catalog: Catalog) -> None:
    engine = Engine(catalog)
    engine.call("/v1/embeddings", {"model": "mistral-embed", "input": "warm up"})
    _worker["engine"] = engine


def answer_slice(work: Slice) -> SliceResult:
    """Answer the lines into the slice's output and error files (output order shuffled, as on
    the real service). The bytes stay out of the parent process: it only splices the files."""
    engine = _worker.get("engine") or _worker.setdefault("engine", Engine(Catalog.load(None)))
    ok: list[bytes] = []
    failed: list[bytes] = []
    dropped = 0
    for number, raw in work.lines:
        success, line = answer_line(engine, work, number, raw)
        if line:
            (ok if success else failed).append(line)
        else:  # a dropped answer (fault injection): counted as a success it never wrote
            dropped += 1
    first = work.lines[0][0] if work.lines else 0
    random.Random(seed_of(work.job_id, str(first))).shuffle(ok)
    for path, lines in ((work.out_path, ok), (work.err_path, failed)):
        with path.open("wb") as handle:
            handle.writelines(lines)
    return SliceResult(work.out_path, work.err_path, len(ok), len(failed), dropped)


def custom_id_of(raw: bytes) -> Any:
    try:
        request = orjson.loads(raw)
    except ValueError:
        return None
    return request.get("custom_id") if isinstance(request, dict) else None


def _error_body(message: str, type_: str) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": type_, "param": None, "code": None}


def answer_line(engine: Engine, work: Slice, number: int, raw: bytes) -> tuple[bool, bytes]:
    custom_id: Any = None
    error: str | None = None
    body: Any
    try:
        request = orjson.loads(raw)
        if not isinstance(request, dict) or not isinstance(request.get("body"), dict):
            raise ValueError("a request line needs a JSON object 'body'")
        custom_id = request.get("custom_id")
        fault = work.faults.get(number)
        if fault is not None:
            status = fault.status
            kind = "rate_limited" if status == 429 else "internal_error"
            body = None if fault.as_string else _error_body(fault.message, kind)
            error = fault.message if fault.as_string else None
        else:
            status, body = engine.call(work.endpoint, request["body"], work.model)
            rule = work.corrupt
            if (
                status == 200
                and rule is not None
                and draw(work.seed, "corrupt", custom_id) < rule.rate
            ):
                if rule.mode == "drop":
                    return True, b""
                body = corrupt(body, rule.mode)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        status = 400
        body = _error_body(f"Invalid request line {number}: {exc}", "invalid_request_error")
    line = {
        "id": f"batch-{work.job_id[:8]}-{number}-{uuid.uuid4()}",
        "custom_id": custom_id,
        "response": {"status_code": status, "body": body},
        "error": error,
    }
    return status < 400 and error is None, orjson.dumps(line, option=_DUMP_OPTIONS)


def corrupt(body: dict[str, Any], mode: str) -> dict[str, Any]:
    """A wrong answer that still parses: what the validation gate exists to stop."""
    if mode == "wrong_dimension":
        for item in body.get("data", []):
            text = orjson.dumps(item["embedding"], option=orjson.OPT_SERIALIZE_NUMPY)
            item["embedding"] = orjson.Fragment(text[: text.rindex(b",")] + b"]")  # one value short
    elif mode == "out_of_range":
        for result in body.get("results", []):
            for scores in _score_maps(result):
                for name in scores:
                    scores[name] = scores[name] * 3 + 1
    elif mode == "unknown_label":
        for choice in body.get("choices", []):
            choice["message"]["content"] = orjson.dumps({"label": "not-a-label"}).decode()
    return body


def _score_maps(result: dict[str, Any]) -> list[dict[str, float]]:
    if "category_scores" in result:
        return [result["category_scores"]]
    return [
        target["scores"]
        for target in result.values()
        if isinstance(target, dict) and "scores" in target
    ]
