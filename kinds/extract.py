"""extract: typed fields out of free text through /v1/chat/completions, strict JSON Schema.

The user gives a JSON Schema object of flat properties (string, number, integer, boolean, enum,
and arrays of those) and instructions. Each row's text goes to a chat model whose answer must be a
JSON object of that schema (``response_format`` json_schema, strict). Each property becomes a
typed column of the same name: string, float64, int64, bool, or a list of those.

An answer that is not a JSON object (cut off at the token limit, prose, nothing) is a rejected row
with the reason. A JSON object is kept, and the gate judges it: a value of the wrong type, a value
outside its enum and a missing required property each fail the ``extract`` suite. The answer's
JSON text is kept for the gate (and the cache) in a gate-only column, never published.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from kinds.base import ANSWER_ERROR, GATE_ONLY, Column, StructuredChat, chat_content
from kinds.insight import Insight, bars, value_counts

if TYPE_CHECKING:
    from kinds.insight import PublishedRows
    from schemas.params import EnrichParams, KindOptions

ANSWER = f"{GATE_ONLY}answer"
MAX_ANSWER_TOKENS = 1024
DEFAULT_INSTRUCTIONS = (
    "Extract the requested fields from the user's text. Answer with a JSON object of the given "
    "schema; use only what the text says."
)
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
# ``schemas.tables``' lineage columns and partition (it imports kinds; a test keeps them equal).
RESERVED = frozenset(
    {"enriched_at", "model", "model_version", "batch_job_id", "result_source", "partition"}
)
TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "number": pl.Float64(),
    "integer": pl.Int64(),
    "boolean": pl.Boolean(),
}
PROPERTY = (
    "property {} of options.json_schema, as the model extracted it; null when absent or not of "
    "its type"
)
SAMPLE_VALUES: dict[str, Any] = {
    "string": "a short answer of about eight words or so",
    "number": 12345.678,
    "integer": 123456,
    "boolean": False,
}


@dataclass(frozen=True)
class Field:
    """One property of the user's schema."""

    name: str
    type: str  # string | number | integer | boolean
    array: bool
    enum: tuple[Any, ...] | None
    required: bool
    description: str | None = None  # the property's own, if the schema gives one

    @property
    def dtype(self) -> pl.DataType:
        return pl.List(TYPES[self.type]) if self.array else TYPES[self.type]


def fields(schema: dict[str, Any] | None) -> list[Field]:
    """The properties of ``schema``; ValueError naming the property and what to change."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ValueError(
            "kind 'extract' needs options.json_schema: a JSON Schema object, e.g. "
            '{"type": "object", "properties": {"city": {"type": "string"}}}'
        )
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise ValueError("options.json_schema needs at least one entry in 'properties'")
    required = schema.get("required", list(properties))
    if not isinstance(required, list) or not set(required) <= set(properties):
        raise ValueError(
            f"options.json_schema 'required' must list property names (got {required!r})"
        )
    return [_field(name, spec, name in required) for name, spec in properties.items()]


def _field(name: str, spec: Any, required: bool) -> Field:
    if not NAME.fullmatch(name) or name in RESERVED:
        raise ValueError(
            f"options.json_schema property {name!r} cannot be a column name: use letters, "
            f"digits and '_' starting with a letter, not one of {sorted(RESERVED)}"
        )
    if not isinstance(spec, dict):
        raise ValueError(f"options.json_schema property {name!r} must be an object")
    array = spec.get("type") == "array"
    item = spec.get("items") if array else spec
    if not isinstance(item, dict):
        raise ValueError(f"options.json_schema property {name!r}: an array needs 'items'")
    enum = item.get("enum")
    if enum is not None and (not isinstance(enum, list) or not enum):
        raise ValueError(f"options.json_schema property {name!r}: 'enum' must be a non-empty list")
    kind = item.get("type", _enum_type(enum) if enum is not None else None)
    if kind not in TYPES:
        raise ValueError(
            f"options.json_schema property {name!r} has type {kind!r}; flat properties only: "
            "string, number, integer, boolean, an enum of one type, or an array of those"
        )
    if enum is not None and not all(_fits(value, kind) for value in enum):
        raise ValueError(
            f"options.json_schema property {name!r}: every 'enum' value must be a {kind} "
            f"(got {enum!r})"
        )
    described = spec.get("description", item.get("description"))
    return Field(
        name,
        kind,
        array,
        tuple(enum) if enum is not None else None,
        required,
        described if isinstance(described, str) and described.strip() else None,
    )


def _fits(value: Any, kind: str) -> bool:
    """Whether a JSON value has the JSON Schema type ``kind`` (a bool is not a number)."""
    if isinstance(value, bool):
        return kind == "boolean"
    if isinstance(value, int):
        return kind in ("integer", "number")
    if isinstance(value, float):
        return kind == "number"
    return isinstance(value, str) and kind == "string"


def _enum_type(enum: list[Any]) -> str | None:
    """The one type an untyped enum's values share (integers and floats: number)."""
    for kind in ("boolean", "integer", "number", "string"):
        if all(_fits(value, kind) for value in enum):
            return kind
    return None


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """What is sent: the user's properties, closed to others."""
    return {
        "type": "object",
        "properties": schema["properties"],
        "required": schema.get("required", list(schema["properties"])),
        "additionalProperties": False,
    }


class Extract(StructuredChat):
    name = "extract"
    summary = "typed fields per text from your JSON Schema, by a chat model"
    options_shown = ("json_schema", "instructions", "model")
    options_required = ("json_schema",)
    options_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "json_schema": {"type": "object", "required": ["type", "properties"]}
    }
    suite = "extract"
    default_instructions = DEFAULT_INSTRUCTIONS
    max_answer_tokens = MAX_ANSWER_TOKENS
    columns = (
        Column(
            "<property>",
            "string → string, number → float64, integer → int64, boolean → bool, an enum → "
            "its values' type, an array → a list of those",
            PROPERTY.format("<property>")
            + " (the property's own description in the schema replaces this one)",
        ),
    )

    def check(self, options: KindOptions) -> None:
        super().check(options)
        fields(options.json_schema)

    def answer_options(self, options: KindOptions) -> dict[str, Any]:
        return {"json_schema": options.json_schema}

    def output_names(self, options: KindOptions) -> list[str]:
        return [f.name for f in fields(options.json_schema)]

    def describe_columns(self, names: list[str], options: KindOptions) -> dict[str, str]:
        return {
            f.name: f.description or PROPERTY.format(f.name)
            for f in fields(options.json_schema)
            if f.name in names
        }

    def answer_schema(self, options: KindOptions) -> dict[str, Any]:
        return strict_schema(options.json_schema or {})

    def prompt_overhead(self, options: KindOptions) -> list[str]:
        return [self.instructions(options), json.dumps(self.answer_schema(options))]

    def answer_sample(self, options: KindOptions) -> str:
        sample = {}
        for f in fields(options.json_schema):
            value = max(f.enum, key=lambda v: len(str(v))) if f.enum else SAMPLE_VALUES[f.type]
            sample[f.name] = [value] * 3 if f.array else value
        return json.dumps(sample)

    def results(self, items: pl.DataFrame, options: KindOptions) -> pl.DataFrame:
        content = chat_content()
        whole = content.str.json_path_match("$")
        cut = pl.col("choice").struct.field("finish_reason") == "length"
        error = (
            pl.when(content.is_null())
            .then(pl.lit("the answer has no content"))
            .when(whole.is_null() & cut.fill_null(False))
            .then(pl.lit(f"the answer was cut off at {MAX_ANSWER_TOKENS} tokens: not JSON"))
            .when(whole.is_null())
            .then(pl.lit("the answer is not valid JSON"))
            .when(
                ~whole.str.starts_with("{") | ~content.str.strip_chars_start().str.starts_with("{")
            )
            .then(pl.lit("the answer is not a JSON object"))
        )
        answer = pl.when(error.is_null()).then(content)
        return items.select(
            "custom_id",
            "position",
            *(typed(answer, f).alias(f.name) for f in fields(options.json_schema)),
            answer.alias(ANSWER),
            error.alias(ANSWER_ERROR),
        )

    def checks(
        self, enriched: pl.DataFrame, ids: pl.DataFrame, options: KindOptions
    ) -> pl.DataFrame:
        found = problems(fields(options.json_schema))
        return pl.concat([ids, enriched.select(*found)], how="horizontal")

    def insight(self, rows: PublishedRows, params: EnrichParams) -> list[Insight]:
        frame = rows.scan()
        found = []
        for field in fields(params.options.json_schema):
            # An enum's values as the column's values read as text: 1 of a number enum is "1.0".
            enum = pl.Series(list(field.enum or ()), dtype=TYPES[field.type]).cast(pl.String)
            counts = value_counts(frame, field.name, explode=field.array, known=tuple(enum))
            title = f"Values of {field.name}"
            note = "each item of a list counted" if field.array else ""
            chart = bars(title, counts) if field.enum is not None else None
            found.append(Insight(title, counts, note=note, chart=chart))
        return found


def problems(schema: list[Field]) -> list[pl.Expr]:
    """Per row, how many properties have a value of the wrong type, are required but missing, or
    are outside their enum: the columns the ``extract`` suite holds to zero."""
    answer = pl.col(ANSWER)
    wrong, missing, outside = [], [], []
    for field in schema:
        column = pl.col(field.name)
        wrong.append(~right_type(answer, field))
        if field.required:
            missing.append(raw(answer, field).is_null())
        if field.enum is not None:
            values = pl.Series(list(field.enum), dtype=TYPES[field.type])
            allowed = pl.lit(values).implode()
            inside = (
                column.list.eval(pl.element().is_in(allowed.first())).list.all()
                if field.array
                else column.is_in(allowed.first())
            )
            outside.append(column.is_not_null() & ~inside)
    return [
        _count(wrong).alias("type_errors"),
        _count(missing).alias("missing_required"),
        _count(outside).alias("enum_errors"),
    ]


def _count(flags: list[pl.Expr]) -> pl.Expr:
    if not flags:
        return pl.lit(0, pl.Int64)
    return pl.sum_horizontal(f.fill_null(False).cast(pl.Int64) for f in flags)


# A value's JSON type, read off the compact text polars re-serialises an answer to: in it a key
# is always `"name":` right after `{` or `,`, and the value's first character tells its type.
FIRST_CHARACTER = {"string": '"', "boolean": "[tf]", "number": "[-0-9]", "integer": "[-0-9]"}
SCALAR = {
    "string": r'"(?:[^"\\]|\\.)*"',
    "boolean": "true|false",
    "number": r"-?[0-9][0-9.eE+-]*",
    "integer": r"-?[0-9]+",
}


def raw(answer: pl.Expr, field: Field) -> pl.Expr:
    """The property's JSON value as text (strings unquoted), null when absent or null."""
    return answer.str.json_path_match(f"$.{field.name}")


def right_type(answer: pl.Expr, field: Field) -> pl.Expr:
    """Whether the property's value has its declared JSON type (true when absent or null)."""
    compact = answer.str.json_path_match("$")
    first = compact.str.extract(f'[{{,]"{field.name}":(.)', 1)
    if field.array:
        item = SCALAR[field.type]
        whole = f"^\\[(?:(?:{item})(?:,(?:{item}))*)?\\]$"
        ok = (first == "[") & raw(answer, field).str.contains(whole)
    elif field.type == "integer":
        ok = raw(answer, field).str.contains(f"^{SCALAR['integer']}$") & first.str.contains(
            "[-0-9]"
        )
    else:
        ok = first.str.contains(f"^{FIRST_CHARACTER[field.type]}$")
    return (first.is_null() | (first == "n") | ok).fill_null(False)


def typed(answer: pl.Expr, field: Field) -> pl.Expr:
    """The property's value in its column type; null when absent or of another type."""
    value = pl.when(right_type(answer, field)).then(raw(answer, field))
    if not field.array:
        return _scalar(value, field.type)
    items = value.str.json_decode(pl.List(pl.String))
    return items.list.eval(_scalar(pl.element(), field.type))


def _scalar(value: pl.Expr, kind: str) -> pl.Expr:
    if kind == "boolean":
        return pl.when(value == "true").then(True).when(value == "false").then(False)
    return value.cast(TYPES[kind], strict=False)
