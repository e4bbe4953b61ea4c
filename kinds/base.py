"""The one protocol every kind of enrichment implements, and what several kinds share.

A kind says everything that differs between enrichments: the endpoint and default model, how a
request body is built and how texts are packed into lines, what an answer looks like and which
columns it becomes, what the validation gate derives and checks, what the estimate counts, and
what is worth looking at in the published results, and what each result column means. Nothing
outside ``kinds/`` asks which kind it is handling. Pure logic: polars and pyarrow only.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl
import pyarrow as pa

if TYPE_CHECKING:
    from kinds.insight import Insight, PublishedRows
    from schemas.params import EnrichParams, KindOptions

ANSWER_ERROR = "_answer_error"  # a result column: why an answer is unusable (null when it is)
GATE_ONLY = "_gate_"  # result columns with this prefix reach the gate and the cache, not analysts


@dataclass(frozen=True)
class Packing:
    """Several texts share one request line, within the endpoint's limits."""

    max_inputs: int = 512
    max_tokens: int = 16_384
    context_tokens: int = 8_192  # a longer text is refused before sending


@dataclass(frozen=True)
class Column:
    """A published column as analysts read it: in the README's table and in the Parquet files'
    field metadata. A ``<part>`` in ``name`` stands for a part read off the answer or the
    options (``score_<name>``); the same ``<part>`` in ``description`` is then the column's own
    part."""

    name: str
    type: str  # as the README shows it
    description: str

    def describe(self, name: str) -> str | None:
        """The description of the column ``name``; None when this column's name does not fit."""
        pieces = PART.split(self.name)  # literal, part, literal, part, ..., literal
        pattern = "".join(
            f"(?P<{piece}>.+)" if i % 2 else re.escape(piece) for i, piece in enumerate(pieces)
        )
        found = re.fullmatch(pattern, name)
        if found is None:
            return None
        parts = found.groupdict()
        return PART.sub(lambda part: parts.get(part[1], part[0]), self.description)

    def parts(self) -> list[str]:
        """The names of the ``<part>``s of the column's name."""
        return PART.findall(self.name)


PART = re.compile(r"<(\w+)>")


class TextInput:
    """The text column holds strings."""

    wanted = "a string column"

    def arrow_ok(self, arrow_type: pa.DataType) -> bool:
        return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))

    def normalised(self, text: pl.Expr) -> pl.Expr:
        return text.str.normalize("NFC")

    def empty(self, text: pl.Expr) -> pl.Expr:
        return text.str.strip_chars() == ""

    def size(self, text: pl.Expr) -> pl.Expr:
        return text.str.len_bytes()

    def token_text(self, text: pl.Expr) -> pl.Expr:
        """The text whose tokens are counted."""
        return text


class MessagesInput(TextInput):
    """The text column holds a conversation: a list of {role, content} structs."""

    wanted = "a list of {role: string, content: string} structs"

    def arrow_ok(self, arrow_type: pa.DataType) -> bool:
        if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
            return False
        item = arrow_type.value_type
        return bool(pa.types.is_struct(item)) and {"role", "content"} <= {f.name for f in item}

    def normalised(self, text: pl.Expr) -> pl.Expr:
        return text.list.eval(
            pl.element().struct.with_fields(pl.field("content").str.normalize("NFC"))
        )

    def empty(self, text: pl.Expr) -> pl.Expr:
        return text.list.len() == 0

    def size(self, text: pl.Expr) -> pl.Expr:
        return text.list.eval(pl.element().struct.field("content").str.len_bytes()).list.sum()

    def token_text(self, text: pl.Expr) -> pl.Expr:  # an estimate: the turns' contents
        return text.list.eval(pl.element().struct.field("content")).list.join("\n")


TEXT = TextInput()
MESSAGES = MessagesInput()


class Kind(ABC):
    """One kind of enrichment. Subclasses set the class attributes and the abstract methods."""

    name: ClassVar[str]
    endpoint: ClassVar[str]
    suite: ClassVar[str]  # schemas/expectations/<suite>.json
    # The run form: the kind's one-line summary, the options it shows (``KindOptions`` fields),
    # those it requires, and JSON Schema refinements the server checks before a run exists.
    summary: ClassVar[str] = ""
    options_shown: ClassVar[tuple[str, ...]] = ("model",)
    options_required: ClassVar[tuple[str, ...]] = ()
    options_schema: ClassVar[dict[str, dict[str, Any]]] = {}
    default_model: ClassVar[str | None] = None
    input: ClassVar[TextInput] = TEXT
    packing: ClassVar[Packing | None] = None  # None: one text per request line
    tokenizer: ClassVar[str | None] = None  # None: the model's own
    named_results: ClassVar[bool] = False  # the answer's field names are read off the data
    vector_column: ClassVar[str | None] = None
    columns: ClassVar[tuple[Column, ...]] = ()  # the result columns analysts read

    # Parameters ------------------------------------------------------------------------------

    def model(self, options: KindOptions) -> str:
        """The model a run asks for."""
        model = options.model or self.default_model
        if model is None:
            raise ValueError(f"kind {self.name!r} needs options.model")
        return model

    def check(self, options: KindOptions) -> None:
        """Refuse options this kind cannot use (ValueError, saying what to give)."""
        usable = {"model", *self.options_shown}
        for name in type(options).model_fields:
            if name not in usable and getattr(options, name) not in (None, [], ""):
                raise ValueError(
                    f"options.{name} does not apply to kind {self.name!r}, whose options are "
                    f"{', '.join(sorted(usable))}"
                )

    def result_options(self, options: KindOptions) -> dict[str, Any]:
        """The options besides kind and model that change a result (part of every identity)."""
        return {}

    def output_names(self, options: KindOptions) -> list[str]:
        """The columns this kind adds whose names are known before any answer."""
        return []

    def describe_columns(self, names: list[str], options: KindOptions) -> dict[str, str]:
        """The description of each of ``names`` that is one of this kind's result columns: by
        default the first of ``columns`` whose name fits; a kind that can say more about a
        run's column (the labels asked for, the vectors' length) does."""
        found = {}
        for name in names:
            described = (column.describe(name) for column in self.columns)
            description = next((d for d in described if d is not None), None)
            if description is not None:
                found[name] = description
        return found

    # Requests --------------------------------------------------------------------------------

    @abstractmethod
    def body(self, params: EnrichParams, inputs: pl.Expr) -> pl.Expr:
        """The JSON text of a request body. ``inputs`` is the line's list of texts when the kind
        packs, else the row's text."""

    def prompt_overhead(self, options: KindOptions) -> list[str]:
        """Texts billed as prompt tokens on every request besides the input itself."""
        return []

    def answer_sample(self, options: KindOptions) -> str:
        """A typical answer, for the completion-token estimate ('' when nothing is generated)."""
        return ""

    # Results ---------------------------------------------------------------------------------

    @abstractmethod
    def output_schema(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The response body fields to read from an output line (``sample``: the first line)."""

    @abstractmethod
    def items(self, body: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
        """One row per answered input: custom_id, position, the raw fields."""

    @abstractmethod
    def results(self, items: pl.DataFrame, options: KindOptions) -> pl.DataFrame:
        """custom_id, position and the result columns; an optional ``ANSWER_ERROR`` column
        rejects the rows whose answer is unusable, with the reason."""

    # Validation ------------------------------------------------------------------------------

    @abstractmethod
    def checks(
        self, enriched: pl.DataFrame, ids: pl.DataFrame, options: KindOptions
    ) -> pl.DataFrame:
        """The narrow frame the kind's suite validates: ``ids`` (column ``id``) plus derived
        columns; vectors never reach the gate."""

    def suite_parameters(
        self, params: EnrichParams, columns: list[str], checks: pl.DataFrame
    ) -> dict[str, Any]:
        """Run-time values for the suite's ``$PARAMETER`` placeholders."""
        return {}

    def vector_dimension(self, params: EnrichParams) -> int | None:
        """The length every vector must have, when the model fixes it."""
        return None

    # Insight ---------------------------------------------------------------------------------

    def insight(self, rows: PublishedRows, params: EnrichParams) -> list[Insight]:
        """What a published partition's results look like, for a person to judge at a glance:
        small titled tables (counts, rates, quantiles, a sample) and charts, computed without
        loading the rows whole (``kinds.insight``)."""
        return []


class StructuredChat(Kind):
    """A kind answered by a chat model as a strict JSON object: the instructions are the system
    turn, the row's text the user turn, and ``answer_schema`` the ``response_format``."""

    endpoint = "/v1/chat/completions"
    default_model = "mistral-small-latest"
    tokenizer = "chat"
    default_instructions: ClassVar[str]
    max_answer_tokens: ClassVar[int]

    @abstractmethod
    def answer_schema(self, options: KindOptions) -> dict[str, Any]:
        """The JSON Schema every answer must follow."""

    @abstractmethod
    def answer_options(self, options: KindOptions) -> dict[str, Any]:
        """The kind's own options that change an answer (the instructions are added)."""

    def instructions(self, options: KindOptions) -> str:
        return options.instructions or self.default_instructions

    def result_options(self, options: KindOptions) -> dict[str, Any]:
        return {**self.answer_options(options), "instructions": self.instructions(options)}

    def body(self, params: EnrichParams, inputs: pl.Expr) -> pl.Expr:
        options = params.options
        schema = self.answer_schema(options)
        return chat_body(
            self.instructions(options), self.name, schema, self.max_answer_tokens, inputs
        )

    def output_schema(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"choices": CHOICES}

    def items(self, body: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
        """A chat answer per line: its first choice."""
        return frame.select(
            "custom_id",
            pl.lit(0, pl.Int64).alias("position"),
            body.struct.field("choices").list.first().alias("choice"),
        )


# Shared by several kinds ---------------------------------------------------------------------


def json_body(*fields: pl.Expr, constant: dict[str, Any] | None = None) -> pl.Expr:
    """The JSON text of an object: the per-row ``fields`` first, then ``constant`` values
    (encoded once, so a nested schema keeps exactly its own keys)."""
    encoded = pl.struct(*fields).struct.json_encode()
    if not constant:
        return encoded
    tail = json.dumps(constant, separators=(",", ":"), ensure_ascii=False)[1:]
    return pl.concat_str(encoded.str.strip_suffix("}"), pl.lit("," + tail))


def chat_body(
    instructions: str, schema_name: str, schema: dict[str, Any], max_tokens: int, text: pl.Expr
) -> pl.Expr:
    """A chat completion asking for a strict JSON object: the instructions as the system turn,
    the row's text as the user turn."""
    messages = pl.concat_list(
        pl.struct(pl.lit("system").alias("role"), pl.lit(instructions).alias("content")),
        pl.struct(pl.lit("user").alias("role"), text.alias("content")),
    )
    return json_body(
        messages.alias("messages"),
        constant={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            },
            "temperature": 0.0,
            "max_tokens": max_tokens,
        },
    )


CHOICES = pl.List(
    pl.Struct({"message": pl.Struct({"content": pl.String}), "finish_reason": pl.String})
)


def chat_content() -> pl.Expr:
    return pl.col("choice").struct.field("message").struct.field("content")


def named(names: list[str], value: pl.DataType | type[pl.DataType]) -> pl.Struct:
    return pl.Struct(dict.fromkeys(names, value))


def results_items(body: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
    """A ``results`` list per line, one item per input in order."""
    return (
        frame.select("custom_id", body.struct.field("results").alias("item"))
        .explode("item")
        .with_columns(pl.int_range(pl.len()).over("custom_id").cast(pl.Int64).alias("position"))
    )


def first_result(sample: dict[str, Any]) -> dict[str, Any]:
    body = (sample.get("response") or {}).get("body") or {}
    result = (body.get("results") or [{}])[0]
    return result if isinstance(result, dict) else {}


def score_range(pattern: str) -> list[pl.Expr]:
    """The smallest and largest of the score columns matching ``pattern``, per row."""
    scores = pl.col(pattern).cast(pl.Float64)
    return [
        pl.min_horizontal(scores).alias("score_min"),
        pl.max_horizontal(scores).alias("score_max"),
    ]
