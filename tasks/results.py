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

from schemas.params import EnrichParams, Kind
from tasks.core.errors import TERMINAL_5XX, TRANSIENT_STATUS_CODES
from tasks.plan import TEXT_KEY
from tasks.requests import INPUT_CONTEXT_TOKENS

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


def _usage_schema() -> pl.Struct:
    return pl.Struct({"prompt_tokens": pl.Int64, "completion_tokens": pl.Int64})


def _scores_struct(names: list[str], value: pl.DataType | type[pl.DataType]) -> pl.Struct:
    return pl.Struct(dict.fromkeys(names, value))


def _output_schema(kind: Kind, sample: dict[str, Any]) -> dict[str, Any]:
    """The fields to read from an output line; category and target names come from the data."""
    body: dict[str, Any] = {"usage": _usage_schema()}
    first = (sample.get("response") or {}).get("body") or {}
    if kind is Kind.embeddings:
        body["data"] = pl.List(pl.Struct({"embedding": pl.List(pl.Float32), "index": pl.Int64}))
    elif kind in (Kind.moderation, Kind.chat_moderation):
        result = (first.get("results") or [{}])[0]
        names = list((result.get("category_scores") or {}).keys())
        body["results"] = pl.List(
            pl.Struct(
                {
                    "categories": _scores_struct(names, pl.Boolean),
                    "category_scores": _scores_struct(names, pl.Float64),
                }
            )
        )
    elif kind is Kind.classifier:
        result = (first.get("results") or [{}])[0]
        targets = {
            target: list(((spec or {}).get("scores") or {}).keys())
            for target, spec in result.items()
        }
        body["results"] = pl.List(
            pl.Struct(
                {
                    target: pl.Struct({"scores": _scores_struct(labels, pl.Float64)})
                    for target, labels in targets.items()
                }
            )
        )
    else:
        body["choices"] = pl.List(
            pl.Struct({"message": pl.Struct({"content": pl.String}), "finish_reason": pl.String})
        )
    return {
        "custom_id": pl.String,
        "response": pl.Struct({"status_code": pl.Int64, "body": pl.Struct(body)}),
        "error": pl.String,
    }


def _items(kind: Kind, frame: pl.DataFrame) -> pl.DataFrame:
    """One row per answered input: custom_id, position, the raw result fields."""
    body = pl.col("response").struct.field("body")
    if kind is Kind.embeddings:
        return (
            frame.select("custom_id", body.struct.field("data").alias("item"))
            .explode("item")
            .select(
                "custom_id",
                pl.col("item").struct.field("index").alias("position"),
                pl.col("item").struct.field("embedding").alias("embedding"),
            )
        )
    if kind in (Kind.moderation, Kind.chat_moderation, Kind.classifier):
        return (
            frame.select("custom_id", body.struct.field("results").alias("item"))
            .explode("item")
            .with_columns(pl.int_range(pl.len()).over("custom_id").cast(pl.Int64).alias("position"))
        )
    return frame.select(
        "custom_id",
        pl.lit(0, pl.Int64).alias("position"),
        body.struct.field("choices").list.first().alias("choice"),
    )


def _result_columns(kind: Kind, items: pl.DataFrame, params: EnrichParams) -> pl.DataFrame:
    """Rows of (custom_id, position, result columns)."""
    keys = ["custom_id", "position"]
    if kind is Kind.embeddings:
        return items
    if kind in (Kind.moderation, Kind.chat_moderation):
        categories = items["item"].struct.field("categories").struct.unnest()
        scores = items["item"].struct.field("category_scores").struct.unnest()
        flags = categories.rename({c: f"category_{c}" for c in categories.columns})
        values = scores.rename({c: f"score_{c}" for c in scores.columns})
        flagged = pl.any_horizontal(pl.all()).alias("flagged") if flags.width else pl.lit(False)
        return pl.concat(
            [items.select(keys), flags.select(flagged), flags, values], how="horizontal"
        )
    if kind is Kind.classifier:
        parts = [items.select(keys)]
        for target in items["item"].struct.fields:
            scores = items["item"].struct.field(target).struct.field("scores").struct.unnest()
            labels = scores.columns
            best = pl.concat_list(pl.all()).list.arg_max()
            top = scores.select(best.alias("i"))["i"]
            parts.append(
                pl.DataFrame({f"{target}_label": pl.Series(labels, dtype=pl.String).gather(top)})
            )
            parts.append(scores.rename({label: f"{target}_score_{label}" for label in labels}))
        return pl.concat(parts, how="horizontal")
    # The label is kept as answered: the validation gate, not the parser, judges the label set.
    content = pl.col("choice").struct.field("message").struct.field("content")
    return items.select(*keys, content.str.json_path_match("$.label").alias("label"))


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


def parse(
    params: EnrichParams,
    manifest: pl.DataFrame,
    output: Path | None,
    errors: Path | None,
    job_id: str,
    job_status: str,
) -> Parsed:
    """Join a job's answers back to the manifest; see the module docstring."""
    kind = params.kind
    lines = pl.DataFrame(schema={"custom_id": pl.String})
    items = pl.DataFrame(
        schema={
            "custom_id": pl.String,
            "position": pl.Int64,
            "_present": pl.Boolean,
        }
    )
    prompt_tokens = completion_tokens = 0
    # Category and target names are read off the first answer; embeddings need no sample.
    named = kind in (Kind.moderation, Kind.chat_moderation, Kind.classifier)
    sample = (_first_line(output) if named else {}) if output is not None else None
    if output is not None and sample is not None and output.stat().st_size:
        schema = _output_schema(kind, sample)
        parts_lines, parts_items = [], []
        # A piece of the file at a time: only the result columns outlive their piece, never the
        # whole file's JSON text nor its full response structs.
        for piece in _pieces(output):
            ok = pl.read_ndjson(piece, schema=schema)
            failed_here = ok.select(
                (pl.col("response").struct.field("status_code") >= 400)
                | pl.col("error").is_not_null()
            ).to_series()
            if failed_here.any():  # rare: failures usually come in the error file
                ok = ok.filter(~failed_here)
            usage = ok.select(pl.col("response").struct.field("body").struct.field("usage")).unnest(
                "usage"
            )
            prompt_tokens += int(usage["prompt_tokens"].sum() or 0)
            completion_tokens += int(usage["completion_tokens"].sum() or 0)
            parts_lines.append(ok.select("custom_id"))
            parts_items.append(_result_columns(kind, _items(kind, ok), params))
            del ok, piece
        if parts_lines:
            lines = pl.concat(parts_lines)
            items = pl.concat(parts_items, how="diagonal_relaxed").with_columns(
                pl.lit(True).alias("_present")
            )
    error_lines = _error_lines(errors)

    answered = pl.concat([lines, error_lines.select("custom_id")])
    duplicate_lines = answered.height - answered["custom_id"].n_unique()
    # The first answer wins: an output line before an error line for the same custom_id.
    if items.select(pl.struct("custom_id", "position").is_duplicated().any()).item():
        items = items.unique(["custom_id", "position"], keep="first", maintain_order=True)
    error_lines = error_lines.filter(~pl.col("custom_id").is_in(lines["custom_id"].implode()))
    error_lines = error_lines.unique("custom_id", keep="first", maintain_order=True)

    keys = ["custom_id", "position"]
    answered_ok = pl.col("custom_id").is_in(lines["custom_id"].implode())
    answered_err = pl.col("custom_id").is_in(error_lines["custom_id"].implode())
    result_cols = [c for c in items.columns if c not in (*keys, "_present")]
    tokens = ["_tokens"] if "_tokens" in manifest.columns else []  # kept for the cache
    # The wide columns (vectors) are joined once: every item comes from an answered line, so
    # the inner join is exactly the answered inputs. The bookkeeping below uses narrow columns.
    results = manifest.join(items, on=keys, how="inner").select(
        TEXT_KEY, *result_cols, *tokens, pl.lit(job_id).alias("batch_job_id")
    )
    narrow = manifest.join(items.select(*keys, "_present"), on=keys, how="left").select(
        TEXT_KEY, "custom_id", "_present"
    )
    del items
    matched = narrow.filter(answered_ok)

    incomplete = matched.filter(pl.col("_present").is_null()).select(
        TEXT_KEY,
        pl.lit("incomplete_response").alias("reason"),
        pl.lit(None, pl.Int64).alias("status_code"),
        pl.lit("the response held fewer results than inputs").alias("message"),
        pl.lit(True).alias("transient"),
    )
    transient_codes = pl.lit(sorted(TRANSIENT_STATUS_CODES), dtype=pl.List(pl.Int64)).first()
    api_failed = (
        narrow.filter(answered_err & ~answered_ok)
        .select(TEXT_KEY, "custom_id")
        .join(error_lines, on="custom_id")
        .select(
            TEXT_KEY,
            pl.lit("api_error").alias("reason"),
            "status_code",
            "message",
            (
                pl.col("status_code").is_null()
                | pl.col("status_code").is_in(transient_codes)
                | (
                    (pl.col("status_code") >= 500)
                    & ~pl.col("status_code").is_in(sorted(TERMINAL_5XX))
                )
            ).alias("transient"),
        )
    )
    unanswered = narrow.filter(~answered_ok & ~answered_err)
    missing_lines = unanswered["custom_id"].n_unique()
    not_answered = unanswered.select(
        TEXT_KEY,
        pl.lit("not_processed").alias("reason"),
        pl.lit(None, pl.Int64).alias("status_code"),
        pl.lit(f"not answered: batch job {job_id} ended {job_status}").alias("message"),
        pl.lit(True).alias("transient"),
    )
    failures = pl.concat([incomplete, api_failed, not_answered]).with_columns(
        pl.lit(job_id).alias("batch_job_id")
    )
    return Parsed(
        results=results,
        failures=failures.select(FAILURE_SCHEMA.keys()).cast(FAILURE_SCHEMA),  # type: ignore[arg-type]
        missing_lines=missing_lines,
        duplicate_lines=duplicate_lines,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


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
