"""Answering batch request lines; runs in worker processes so a job uses every core.

The parent decides the injected line faults (their counters are persisted state) and hands each
worker a slice of raw lines; the worker answers them through the shared ``Engine`` and returns the
output and error lines, already serialised.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from emulator import content
from emulator.catalog import Catalog
from emulator.endpoints import Engine
from emulator.faults import CorruptAnswers

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
    random.Random(content.seed_of(work.job_id, str(first))).shuffle(ok)
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
            if status == 200 and rule is not None and rule.chooses(work.seed, custom_id):
                if rule.mode == "drop":
                    return True, b""
                body = corrupt(body, rule.mode, request["body"])
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


def corrupt(body: dict[str, Any], mode: str, request: dict[str, Any]) -> dict[str, Any]:
    """A wrong answer with a 200 status, for ``request`` (its body): what the validation gate
    exists to stop. Modes are described in ``emulator.faults``."""
    _CORRUPTIONS[mode](body, request)
    return body


def _wrong_dimension(body: dict[str, Any], _: dict[str, Any]) -> None:
    for item in body.get("data", []):
        text = orjson.dumps(item["embedding"], option=orjson.OPT_SERIALIZE_NUMPY)
        item["embedding"] = orjson.Fragment(text[: text.rindex(b",")] + b"]")  # one value short


def _out_of_range(body: dict[str, Any], _: dict[str, Any]) -> None:
    for result in body.get("results", []):
        for scores in _score_maps(result):
            for name in scores:
                scores[name] = scores[name] * 3 + 1


def _unknown_label(body: dict[str, Any], _: dict[str, Any]) -> None:
    for message in _messages(body):
        message["content"] = orjson.dumps({"label": "not-a-label"}).decode()


def _malformed_json(body: dict[str, Any], _: dict[str, Any]) -> None:
    for message in _messages(body):
        answer = message["content"] or ""
        cut = answer[: len(answer) // 2]
        while _parses(cut):  # half of a bare number can still be one
            cut = cut[:-1]
        message["content"] = cut


def _wrong_type(body: dict[str, Any], request: dict[str, Any]) -> None:
    response_format = request.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return
    schema = response_format["json_schema"]["schema"]
    for message in _messages(body):
        try:
            answer = orjson.loads(message["content"])
        except orjson.JSONDecodeError:  # already cut short by max_tokens: wrong enough
            continue
        message["content"] = orjson.dumps(mistyped(answer, schema)).decode()


_CORRUPTIONS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "wrong_dimension": _wrong_dimension,
    "out_of_range": _out_of_range,
    "unknown_label": _unknown_label,
    "malformed_json": _malformed_json,
    "wrong_type": _wrong_type,
}


def mistyped(answer: Any, schema: Mapping[str, Any]) -> Any:
    """``answer`` (valid for ``schema``) with one value of a JSON type the schema does not admit.

    The value changed is the first property, in the schema's order, that some type would break;
    the whole answer when none can be; nothing when the schema admits anything anywhere.
    """
    properties = schema.get("properties", {}) if isinstance(answer, dict) else {}
    for name, subschema in properties.items():
        if name in answer:
            wrong = _mistyped_value(answer[name], content.admitted_types(subschema, schema))
            if wrong is not _UNBREAKABLE:
                return {**answer, name: wrong}
    wrong = _mistyped_value(answer, content.admitted_types(schema))
    return answer if wrong is _UNBREAKABLE else wrong


_UNBREAKABLE = object()


def _mistyped_value(value: Any, admitted: frozenset[str] | None) -> Any:
    """A stand-in for ``value`` of a type outside ``admitted``, as a confused model might write
    it (``"3"`` for 3, ``1`` for true); ``_UNBREAKABLE`` when every type is admitted."""
    if admitted is None:
        return _UNBREAKABLE
    as_text = value if isinstance(value, str) else orjson.dumps(value).decode()
    as_number = int(value) if isinstance(value, bool) else 1
    stand_ins = {
        "boolean": (as_number, as_text),
        "integer": (as_text, True),
        "number": (as_text, True),
        "string": (as_number, [value]),
        "array": (as_text, {"items": value}),
        "object": (as_text, [value]),
        "null": (as_text, as_number),
    }[content.json_type(value)]
    return next((s for s in stand_ins if content.json_type(s) not in admitted), _UNBREAKABLE)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The assistant messages of a chat completion (none for other endpoints)."""
    return [choice["message"] for choice in body.get("choices", [])]


def _parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _score_maps(result: dict[str, Any]) -> list[dict[str, float]]:
    if "category_scores" in result:
        return [result["category_scores"]]
    return [
        target["scores"]
        for target in result.values()
        if isinstance(target, dict) and "scores" in target
    ]
