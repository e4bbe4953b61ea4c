"""Results: output and error files → one result or one failure per submitted text.

Output files are parsed with polars against an explicit schema (no per-line Python); packed lines
are exploded back to their inputs and joined to the manifest on (custom_id, position). Every
(custom_id, position) that was sent comes back exactly once: as a result, as a failure from the
error file, or as a failure "not answered" — duplicates are counted and the first answer kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl

import kinds
from kinds import ANSWER_ERROR, Kind
from schemas.params import EnrichParams, KindOptions
from tasks.core.columns import MODEL_VERSION, TEXT_KEY
from tasks.core.errors import TERMINAL_5XX, TRANSIENT_STATUS_CODES
from tasks.core.packing import INPUT_CONTEXT_TOKENS

FAILURE_SCHEMA = {
    TEXT_KEY: pl.UInt64,
    "reason": pl.String,
    "status_code": pl.Int64,
    "message": pl.String,
    "transient": pl.Boolean,
    "batch_job_id": pl.String,
}


@dataclass(frozen=True)
class Parsed:
    results: pl.DataFrame  # _text_key, result columns, batch_job_id
    failures: pl.DataFrame  # FAILURE_SCHEMA
    missing_lines: int
    duplicate_lines: int
    prompt_tokens: int
    completion_tokens: int


def _first_line(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                value = orjson.loads(line)
                return value if isinstance(value, dict) else None
    return None


PIECE_BYTES = 32 << 20  # how much of an output file is parsed at once


def _pieces(path: Path, size: int | None = None) -> Iterator[bytes]:
    """The file in pieces of about ``size`` bytes, each ending at a line break."""
    rest = b""
    with path.open("rb") as handle:
        while block := handle.read(size or PIECE_BYTES):
            block = rest + block if rest else block
            cut = block.rfind(b"\n") + 1
            if not cut:  # a line longer than a piece: read on
                rest = block
                continue
            rest = block[cut:]
            yield block[:cut]
    if rest.strip():
        yield rest


def _line_schema(kind: Kind, sample: dict[str, Any]) -> dict[str, Any]:
    """The fields to read from an output line: the kind's body fields and the usage."""
    usage = pl.Struct({"prompt_tokens": pl.Int64, "completion_tokens": pl.Int64})
    body = {"usage": usage, "model": pl.String, **kind.output_schema(sample)}
    return {
        "custom_id": pl.String,
        "response": pl.Struct({"status_code": pl.Int64, "body": pl.Struct(body)}),
        "error": pl.String,
    }


@dataclass(frozen=True)
class Answers:
    lines: pl.DataFrame  # custom_id of every answered line, and the model its body names
    items: pl.DataFrame  # custom_id, position, the kind's result columns
    prompt_tokens: int
    completion_tokens: int


def read_answers(kind: Kind, options: KindOptions, output: Path | None) -> Answers:
    """The output file's answered lines, a piece at a time: only the result columns outlive
    their piece, never the whole file's JSON text nor its full response structs."""
    # Category and target names are read off the first answer; other kinds need no sample.
    sample = (_first_line(output) if kind.named_results else {}) if output is not None else None
    lines: list[pl.DataFrame] = []
    items: list[pl.DataFrame] = []
    prompt_tokens = completion_tokens = 0
    if output is not None and sample is not None and output.stat().st_size:
        schema = _line_schema(kind, sample)
        body = pl.col("response").struct.field("body")
        for piece in _pieces(output):
            ok = _answered(pl.read_ndjson(piece, schema=schema))
            usage = ok.select(body.struct.field("usage")).unnest("usage")
            prompt_tokens += int(usage["prompt_tokens"].sum() or 0)
            completion_tokens += int(usage["completion_tokens"].sum() or 0)
            lines.append(ok.select("custom_id", body.struct.field("model").alias(MODEL_VERSION)))
            items.append(kind.results(kind.items(body, ok), options))
    if not lines:
        return Answers(
            pl.DataFrame(schema={"custom_id": pl.String, MODEL_VERSION: pl.String}),
            pl.DataFrame(schema={"custom_id": pl.String, "position": pl.Int64}),
            prompt_tokens,
            completion_tokens,
        )
    return Answers(
        pl.concat(lines),
        pl.concat(items, how="diagonal_relaxed"),
        prompt_tokens,
        completion_tokens,
    )


def _answered(frame: pl.DataFrame) -> pl.DataFrame:
    """The lines that carry an answer; failures usually come in the error file, rarely here."""
    failed = (pl.col("response").struct.field("status_code") >= 400) | pl.col("error").is_not_null()
    return frame.filter(~failed.fill_null(False))


def _error_lines(path: Path | None) -> pl.DataFrame:
    """The error file, read line by line: its bodies vary too much for a fixed schema, and it
    holds only the failed lines."""
    rows: list[dict[str, Any]] = []
    if path is not None:
        with path.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                line = orjson.loads(raw)
                response = line.get("response") or {}
                status = response.get("status_code")
                rows.append(
                    {
                        "custom_id": line.get("custom_id"),
                        "status_code": status,
                        "message": _error_message(response.get("body"), line.get("error"), status),
                    }
                )
    return pl.DataFrame(
        rows, schema={"custom_id": pl.String, "status_code": pl.Int64, "message": pl.String}
    )


def _error_message(body: Any, error: Any, status: int | None) -> str:
    if isinstance(error, str) and error:
        return error
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(body, dict):
        if body.get("message"):
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return "; ".join(f"{d.get('loc')}: {d.get('msg')}" for d in detail[:3])
        if detail:
            return str(detail)
    return f"HTTP {status}" if status else "unknown error"


KEYS = ["custom_id", "position"]


def parse(
    params: EnrichParams,
    manifest: pl.DataFrame,
    output: Path | None,
    errors: Path | None,
    job_id: str,
    job_status: str,
    job_model: str | None = None,
) -> Parsed:
    """Join a job's answers back to the manifest; see the module docstring. Each result
    carries the model version that answered it: the one its response body names, else the
    job's model, else the model the run asked for."""
    answers = read_answers(kinds.kind_of(params), params.options, output)
    lines, error_lines = answers.lines, _error_lines(errors)
    answered = pl.concat([lines.select("custom_id"), error_lines.select("custom_id")])
    # The first answer wins: an output line before an error line for the same custom_id.
    items = answers.items
    if items.select(pl.struct(KEYS).is_duplicated().any()).item():
        items = items.unique(KEYS, keep="first", maintain_order=True)
    error_lines = error_lines.filter(~pl.col("custom_id").is_in(lines["custom_id"].implode()))
    error_lines = error_lines.unique("custom_id", keep="first", maintain_order=True)

    usable, unusable = _split_unusable(items)
    versions = lines.unique("custom_id", keep="first").with_columns(
        answered_by(pl.col(MODEL_VERSION), job_model, params.model)
    )
    results = _results(manifest, usable, job_id, versions)
    # Bookkeeping on narrow columns only: which inputs were answered, and how.
    narrow = manifest.join(
        items.select(*KEYS, pl.lit(True).alias("_present")), on=KEYS, how="left"
    ).select(TEXT_KEY, "custom_id", "_present")
    del items, usable
    answered_ok = pl.col("custom_id").is_in(lines["custom_id"].implode())
    answered_err = pl.col("custom_id").is_in(error_lines["custom_id"].implode())
    unanswered = narrow.filter(~answered_ok & ~answered_err)
    failures = pl.concat(
        [
            _incomplete(narrow.filter(answered_ok)),
            _invalid(manifest, unusable),
            _api_failed(narrow.filter(answered_err & ~answered_ok), error_lines),
            _not_answered(unanswered, job_id, job_status),
        ]
    ).with_columns(pl.lit(job_id).alias("batch_job_id"))
    return Parsed(
        results=results,
        failures=failures.select(FAILURE_SCHEMA.keys()).cast(FAILURE_SCHEMA),  # type: ignore[arg-type]
        missing_lines=unanswered["custom_id"].n_unique(),
        duplicate_lines=answered.height - answered["custom_id"].n_unique(),
        prompt_tokens=answers.prompt_tokens,
        completion_tokens=answers.completion_tokens,
    )


def answered_by(named: pl.Expr, job_model: str | None, asked: str) -> pl.Expr:
    """The version an answer came from: the one its body names, unless the body only repeats
    the name asked for while the job names a version; else the job's; else the name asked for."""
    job = job_model or asked
    repeats_the_alias = named.is_null() | (named == asked)
    return pl.when(repeats_the_alias).then(pl.lit(job)).otherwise(named).alias(MODEL_VERSION)


def _split_unusable(items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(usable answers, unusable ones with the kind's reason): a kind may judge an answer
    unusable (``ANSWER_ERROR``), e.g. extract's answer that is not a JSON object."""
    if ANSWER_ERROR not in items.columns:
        return items, pl.DataFrame(
            schema={"custom_id": pl.String, "position": pl.Int64, ANSWER_ERROR: pl.String}
        )
    bad = pl.col(ANSWER_ERROR).is_not_null()
    unusable = items.filter(bad).select(*KEYS, ANSWER_ERROR)
    return items.filter(~bad).drop(ANSWER_ERROR), unusable


def _results(
    manifest: pl.DataFrame, items: pl.DataFrame, job_id: str, versions: pl.DataFrame
) -> pl.DataFrame:
    """The answered inputs with their result columns and answering model version. The wide
    columns (vectors) are joined once: every item comes from an answered line, so the inner
    join is exactly those inputs."""
    result_cols = [c for c in items.columns if c not in KEYS]
    tokens = ["_tokens"] if "_tokens" in manifest.columns else []  # kept for the cache
    return (
        manifest.join(items, on=KEYS, how="inner")
        .join(versions, on="custom_id", how="left")
        .select(
            TEXT_KEY,
            *result_cols,
            *tokens,
            pl.lit(job_id).alias("batch_job_id"),
            MODEL_VERSION,
        )
    )


def _failure(reason: str, message: pl.Expr, transient: pl.Expr | bool) -> list[pl.Expr]:
    status = pl.col("status_code") if reason == "api_error" else pl.lit(None, pl.Int64)
    return [
        pl.col(TEXT_KEY),
        pl.lit(reason).alias("reason"),
        status.alias("status_code"),
        message.alias("message"),
        (transient if isinstance(transient, pl.Expr) else pl.lit(transient)).alias("transient"),
    ]


def _incomplete(answered: pl.DataFrame) -> pl.DataFrame:
    missing = answered.filter(pl.col("_present").is_null())
    message = pl.lit("the response held fewer results than inputs")
    return missing.select(_failure("incomplete_response", message, transient=True))


def _invalid(manifest: pl.DataFrame, unusable: pl.DataFrame) -> pl.DataFrame:
    rows = manifest.select(TEXT_KEY, *KEYS).join(unusable, on=KEYS, how="inner")
    return rows.select(_failure("invalid_answer", pl.col(ANSWER_ERROR), transient=False))


def _api_failed(failed: pl.DataFrame, error_lines: pl.DataFrame) -> pl.DataFrame:
    status = pl.col("status_code")
    transient = (
        status.is_null()
        | status.is_in(sorted(TRANSIENT_STATUS_CODES))
        | ((status >= 500) & ~status.is_in(sorted(TERMINAL_5XX)))  # as errors.transient_status
    )
    rows = failed.select(TEXT_KEY, "custom_id").join(error_lines, on="custom_id")
    return rows.select(_failure("api_error", pl.col("message"), transient))


def _not_answered(unanswered: pl.DataFrame, job_id: str, job_status: str) -> pl.DataFrame:
    message = pl.lit(f"not answered: batch job {job_id} ended {job_status}")
    return unanswered.select(_failure("not_processed", message, transient=True))


def too_long_failures(too_long: pl.DataFrame) -> pl.DataFrame:
    """Texts over the model's context, refused before sending (terminal)."""
    return too_long.select(
        TEXT_KEY,
        pl.lit("text_too_long").alias("reason"),
        pl.lit(None, pl.Int64).alias("status_code"),
        pl.format(
            "the text has {} tokens; the model takes at most {}",
            pl.col("_tokens"),
            pl.lit(INPUT_CONTEXT_TOKENS),
        ).alias("message"),
        pl.lit(False).alias("transient"),
        pl.lit(None, pl.String).alias("batch_job_id"),
    ).cast(FAILURE_SCHEMA)  # type: ignore[arg-type]
