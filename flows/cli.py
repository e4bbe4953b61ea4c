"""The ``enrich`` command line: ``enrich run`` runs the same flow as the deployments.

``enrich run`` has one flag per parameter, made from the ``EnrichParams`` model itself (and from
the model of its nested ``options``): ``--field-name``, with the field's description and default,
so a field added to the models is a flag with no edit here. ``--params FILE`` holds the whole
parameter object (JSON or YAML); the flags given on the command line override it.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, ParamSpec, TypeVar, Union, cast, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, to_json

from emulator.cli import emulator
from schemas.params import EnrichParams, Kind

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Enrich Parquet datasets through the Mistral Batch API.",
)
app.command("emulator")(emulator)


# JSON and YAML documents: --params FILE and the @FILE value of a non-scalar flag.

YAML_SUFFIXES = {".yaml", ".yml"}
YAML_BOOL = "tag:yaml.org,2002:bool"
YAML_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2's implicit types: only true/false are booleans and dates stay text,
    so ``cache_mode: off`` and ``partition: 2026-11-22`` reach the model as the strings it wants."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in {YAML_BOOL, YAML_TIMESTAMP}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_document(path: Path) -> object:
    """A JSON or YAML file's content, by extension (.json, .yaml, .yml), else by content."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    suffix = path.suffix.lower()
    try:
        return _parse_document(text, suffix)
    except (ValueError, yaml.YAMLError) as exc:
        expected = {".json": "JSON", **dict.fromkeys(YAML_SUFFIXES, "YAML")}
        raise ValueError(f"{path} is not {expected.get(suffix, 'JSON or YAML')}: {exc}") from exc


def _parse_document(text: str, suffix: str) -> object:
    if suffix in YAML_SUFFIXES:
        return yaml.load(text, Loader=_YamlLoader)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if suffix == ".json":
            raise
    return yaml.load(text, Loader=_YamlLoader)


def document_value(text: str) -> object:
    """A non-scalar flag's value: JSON text, or ``@FILE`` to read a JSON or YAML file."""
    if text.startswith("@"):
        return read_document(Path(text[1:]))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{text!r} is not JSON ({exc}); give JSON text, or @FILE to read a JSON or YAML file"
        ) from exc


def strings_value(values: Iterable[str]) -> list[str]:
    """A list flag's values: ``--labels a,b --labels c`` is ``[a, b, c]``; ``--labels ''`` is
    ``[]`` (one comma-separated flag, as before the flag could repeat)."""
    return [part.strip() for value in values if value for part in value.split(",")]


# One flag per field of a parameter model.

PLAIN_TYPES = (str, int, float, Path)


class Shape(Enum):
    """How a field's value is given on the command line."""

    switch = "switch"  # bool: --x / --no-x
    value = "value"  # str, int, float, path, enum or literal (choices): --x VALUE
    strings = "strings"  # list[str]: --x A,B --x C
    document = "document"  # anything else (dict, list of objects, union): --x JSON | --x @FILE


SHAPE_HELP = {
    Shape.strings: "Repeat the flag, or separate values with commas.",
    Shape.document: "JSON text, or @FILE to read a JSON or YAML file.",
}


def _bare(annotation: Any) -> Any:
    """The type a field holds, without Optional and constraints: ``Annotated[int, ...] | None``
    is ``int``; a union of several types stays that union."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _bare(get_args(annotation)[0])
    if origin in (Union, UnionType):
        members = [arg for arg in get_args(annotation) if arg is not NoneType]
        return _bare(members[0]) if len(members) == 1 else annotation
    return annotation


def _is_class(annotation: Any, base: type) -> bool:
    plain = get_origin(annotation) is None and isinstance(annotation, type)
    return plain and issubclass(annotation, base)


def _shape(annotation: Any) -> Shape:
    if annotation is bool:
        return Shape.switch
    if (
        annotation in PLAIN_TYPES
        or _is_class(annotation, Enum)
        or get_origin(annotation) is Literal
    ):
        return Shape.value
    if get_origin(annotation) is list and [_bare(arg) for arg in get_args(annotation)] == [str]:
        return Shape.strings
    return Shape.document


def _own_doc(annotation: Any) -> str:
    """The first line of a class's own docstring (not an inherited one), or ''."""
    doc = vars(annotation).get("__doc__") if isinstance(annotation, type) else None
    return inspect.cleandoc(doc).split("\n")[0] if doc else ""


@dataclass(frozen=True)
class FieldFlag:
    """The command-line flag of one field of a parameter model."""

    path: tuple[str, ...]  # where the value goes in the parameter object: ("options", "labels")
    field: FieldInfo
    panel: str | None = None  # the --help panel; a nested model's fields get their own

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def shape(self) -> Shape:
        return _shape(_bare(self.field.annotation))

    @property
    def help(self) -> str:
        """The field's description (an enum's docstring when it has none), and how to give it."""
        bare = _bare(self.field.annotation)
        described = self.field.description or (_own_doc(bare) if _is_class(bare, Enum) else "")
        parts = [described.rstrip(".") + "." if described else ""]
        if self.field.is_required():
            parts.append("Required: here or in --params FILE.")
        parts.append(SHAPE_HELP.get(self.shape, ""))
        return " ".join(part for part in parts if part)

    def default(self) -> Any:
        """The model's default (None when the field is required)."""
        if self.field.is_required():
            return None
        return self.field.get_default(call_default_factory=True)

    def parameter(self) -> inspect.Parameter:
        """The keyword parameter typer turns into this flag."""
        hint, default, option = self._typer()
        annotated = cast(Any, Annotated)[hint, option]
        kind = inspect.Parameter.KEYWORD_ONLY
        return inspect.Parameter(self.name, kind, default=default, annotation=annotated)

    def _typer(self) -> tuple[Any, Any, Any]:
        """The type hint, default and ``typer.Option`` of the flag."""
        common: dict[str, Any] = {"help": self.help, "rich_help_panel": self.panel}
        default = self.default()
        if self.shape is Shape.switch:
            return bool, default, typer.Option(f"{self.option}/--no-{self.option[2:]}", **common)
        if self.shape is Shape.value:
            return _bare(self.field.annotation) | None, default, typer.Option(self.option, **common)
        if self.shape is Shape.strings:
            shown = default or None  # typer shows no default for an empty list
            return list[str] | None, shown, typer.Option(self.option, metavar="A,B", **common)
        shown = None if default is None else to_json(default).decode()  # as the flag takes it
        option = typer.Option(self.option, parser=document_value, metavar="JSON|@FILE", **common)
        return str | None, shown, option

    def value(self, given: Any) -> Any:
        """The field's value from what the command line gave."""
        return strings_value(given) if self.shape is Shape.strings else given


def field_flags(
    model: type[BaseModel], prefix: tuple[str, ...] = (), panel: str | None = None
) -> tuple[FieldFlag, ...]:
    """One flag per field of ``model``; a field holding a model gets one per field of that model,
    in a --help panel of its own, and its values are gathered under the field's name."""
    flags: list[FieldFlag] = []
    for name, field in model.model_fields.items():
        nested = _bare(field.annotation)
        if _is_class(nested, BaseModel):
            title = f"{_own_doc(nested).rstrip('.')} ({name}.*)".lstrip()
            flags += field_flags(nested, (*prefix, name), title)
        else:
            flags.append(FieldFlag((*prefix, name), field, panel))
    return tuple(flags)


def with_field_flags(flags: Sequence[FieldFlag]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Add ``flags`` to a command's signature, as keyword parameters after its own (the command
    takes them as ``**kwargs``); typer makes one option of each. Two flags of one name, or a flag
    named like a parameter of the command, are refused here rather than shadowing each other."""

    def add(command: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        seen = {p.name: p.name for p in own}
        for flag in flags:
            if flag.name in seen:
                raise TypeError(
                    f"{'.'.join(flag.path)} and {seen[flag.name]} would both be {flag.option}: "
                    "rename one of the fields"
                )
            seen[flag.name] = ".".join(flag.path)
        parameters = [*own, *(flag.parameter() for flag in flags)]
        command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return command

    return add


def was_given(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given (on the command line), rather than left at its default."""
    source = ctx.get_parameter_source(name)
    # Compared by name: typer bundles its own click, whose ParameterSource is not public.
    return source is not None and source.name not in {"DEFAULT", "DEFAULT_MAP"}


def given_values(
    ctx: typer.Context, flags: Sequence[FieldFlag], values: dict[str, Any]
) -> dict[str, Any]:
    """``values`` (a parameter object) with the value of every flag given on the command line on
    top, each at its field's place (nested fields inside their model's mapping)."""
    for flag in flags:
        if was_given(ctx, flag.name):
            values = _put(values, flag.path, flag.value(ctx.params[flag.name]))
    return values


def _put(values: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    head, *rest = path
    if not rest:
        return {**values, head: value}
    inner = values.get(head)
    return {**values, head: _put(inner if isinstance(inner, dict) else {}, tuple(rest), value)}


FLAGS = field_flags(EnrichParams)
FLAG_BY_PATH = {flag.path: flag for flag in FLAGS}


def read_params(path: Path) -> dict[str, Any]:
    """The parameter object of ``--params FILE``."""
    try:
        values = read_document(path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--params") from exc
    if not isinstance(values, dict):
        raise typer.BadParameter(
            f"{path} holds a {type(values).__name__}, not the parameter object: a mapping such "
            "as {input: ..., id_column: ..., text_column: ..., output: ..., options: {...}}",
            param_hint="--params",
        )
    return values


def build_params(ctx: typer.Context, params_file: Path | None) -> EnrichParams:
    """The run's parameters: those of ``params_file``, with the flags given on the command line
    (never their defaults) on top, validated."""
    from_file = read_params(params_file) if params_file else {}
    values = given_values(ctx, FLAGS, from_file)
    options = values.get("options")
    if values.get("kind") not in (None, from_file.get("kind")) and isinstance(options, dict):
        # --kind overrides the file, whose kind may sit inside its options (the form's shape)
        values = {**values, "options": {k: v for k, v in options.items() if k != "kind"}}
    try:
        return EnrichParams.model_validate(values)
    except ValidationError as exc:
        raise typer.BadParameter(explain(exc)) from exc


def explain(exc: ValidationError) -> str:
    """What is wrong with the parameters: one line per error, naming the flag that fixes it."""
    lines = [_explain(error) for error in exc.errors(include_url=False)]
    return "\n".join(
        [
            "the run's parameters are not valid:",
            *(f"  {line}" for line in lines),
            "Fix the flag or the key in --params FILE: every parameter has a flag named after "
            "its last part (options.x_y is --x-y); `enrich run --help` lists them.",
        ]
    )


def _explain(error: ErrorDetails) -> str:
    path = tuple(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    key = ".".join(path)
    if not path:
        return message
    if error["type"] == "extra_forbidden":
        return f"{key} is not a parameter: remove it from the --params file"
    option = _option_at(path)
    if error["type"] == "missing":
        return f"{key} is required: give {option}, or set {key} in the --params file"
    got = "" if error["type"] == "value_error" else f" (got {_short(error['input'])})"
    return f"{option} ({key}): {message}{got}"


def _option_at(path: tuple[str, ...]) -> str:
    """The flag of the field at ``path`` or above it (an error may point inside a value)."""
    for end in range(len(path), 0, -1):
        if path[:end] in FLAG_BY_PATH:
            return FLAG_BY_PATH[path[:end]].option
    return ".".join(path)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The commands.

ParamsFile = Annotated[
    Path | None,
    typer.Option(
        "--params",
        exists=True,
        dir_okay=False,
        help="The whole parameter object as JSON or YAML (the flow's parameters, `options` "
        "nested); the flags given here override its values.",
    ),
]
SummaryJson = Annotated[
    Path | None,
    typer.Option(help="Also write the run summary (counts, cost, seconds per step) here."),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Print every log line of the flow and task runs as Prefect's console does (each "
        "task's 'Finished in state' line too). Without it: one line per step, a live panel in a "
        "terminal, warnings and errors; the Prefect API and UI get every line either way.",
    ),
]


@app.command("run")
@with_field_flags(FLAGS)
def run(
    ctx: typer.Context,
    *,
    params_file: ParamsFile = None,
    summary_json: SummaryJson = None,
    verbose: Verbose = False,
    **_flags: Any,  # one per parameter: read with their sources from ctx
) -> None:
    """Run the enrich flow once, in this process (Prefect's local API unless one is set).

    Every parameter has a flag; --params FILE gives them all at once, and flags override it.
    Progress shows one line per step (with a live panel in a terminal), then the run's summary
    table."""
    params = build_params(ctx, params_file)
    from rich.console import Console

    from flows.console import print_markdown, showing_progress, summary_markdown
    from flows.enrich import enrich
    from tasks.core.errors import EnrichError
    from tasks.core.keys import artifact_key
    from tasks.core.pricing import BudgetExceededError
    from tasks.lease import LeaseHeldError

    console = Console()
    try:
        with showing_progress(console, verbose=verbose) as progress:
            summary = enrich(params)
    except (BudgetExceededError, LeaseHeldError) as exc:
        typer.echo(f"Refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    except EnrichError as exc:
        if not exc.expected:
            raise  # a bug: its traceback is the clue
        typer.echo(f"Failed: {exc}", err=True)  # the message is the whole story
        raise typer.Exit(1) from exc
    if summary_json is not None:
        summary_json.write_text(summary.model_dump_json(indent=2))
    if summary.dry_run:
        typer.echo("Dry run: nothing was uploaded, submitted or published.")
        return
    key = artifact_key(params, "summary")
    markdown = summary_markdown(key, progress.flow_run_id) if progress.flow_run_id else None
    if markdown is not None:
        console.print()
        print_markdown(console, markdown)
    typer.echo(
        f"Enriched {summary.enriched_rows:,} of {summary.rows_in:,} rows "
        f"({summary.rejected_rows:,} rejected, {summary.cache_hit_rows:,} from the cache) into "
        f"{summary.output} partition={summary.partition}"
    )


@app.command("serve")
def serve() -> None:
    """Serve every deployment of prefect.yaml from this process (no work pool, no worker): the
    nightly schedules, ad hoc runs from the Prefect UI and the hourly reconcile."""
    import os

    from deployments.serve import PROJECT, serve_all

    os.chdir(PROJECT)  # the deployments' relative paths (demo dataset) resolve as with a worker
    serve_all()


cache_app = typer.Typer(no_args_is_help=True, help="Inspect, compact or purge the content cache.")
app.add_typer(cache_app, name="cache")

CacheOption = Annotated[
    str, typer.Option("--cache", help="The cache folder or s3:// URI (a run's `cache`).")
]
KindFilter = Annotated[Kind | None, typer.Option(help="Only this kind.")]
ModelFilter = Annotated[str | None, typer.Option(help="Only this model id.")]


@cache_app.command("info")
def cache_info(cache: CacheOption) -> None:
    """One line per kind/model/options folder: files, entries, size."""
    from tasks import cache as content_cache

    found = content_cache.folders(cache)
    if not found:
        typer.echo(f"The cache at {cache} is empty.")
    for f in found:
        stale = "" if f.current else "  (old key scheme: never read; purge it)"
        typer.echo(
            f"{f.kind:16} {f.model:40} {f.files:5} files {f.entries:12,} entries "
            f"{f.bytes / 1e6:10,.1f} MB  {f.uri}{stale}"
        )


@cache_app.command("compact")
def cache_compact(cache: CacheOption, kind: KindFilter = None, model: ModelFilter = None) -> None:
    """Merge each folder's files into few files with unique keys, sorted (faster lookups).
    Run it when no enrich run is using the cache."""
    from tasks import cache as content_cache

    for f in content_cache.select(cache, kind.value if kind else None, model):
        files, before, after = content_cache.compact(f.uri)
        typer.echo(
            f"{f.kind} {f.model}: {files} files, {before:,} entries -> {after:,} unique entries"
        )


@cache_app.command("purge")
def cache_purge(
    cache: CacheOption,
    kind: KindFilter = None,
    model: ModelFilter = None,
    all_entries: Annotated[
        bool, typer.Option("--all", help="Remove the whole cache (every kind and model).")
    ] = False,
) -> None:
    """Remove cached results by kind and/or model, or all of them (--all)."""
    from tasks import cache as content_cache

    if kind is None and model is None and not all_entries:
        raise typer.BadParameter("give --kind and/or --model, or --all to remove everything")
    removed = content_cache.purge(cache, kind.value if kind else None, model)
    entries = sum(f.entries for f in removed)
    typer.echo(f"Removed {len(removed)} cache folder(s), {entries:,} entries, from {cache}.")


# The analysts' commands: the `enrich` package (similarity search, describe) on the command line.

TableOption = Annotated[
    str,
    typer.Option(
        "--table", help="The published table: a run's `output` (a folder or an s3:// URI)."
    ),
]
WorkOption = Annotated[
    str | None,
    typer.Option(
        "--work",
        help="The run's `work` root, when it was not the default (_enrich/<name> beside the "
        "table): where the manifests are.",
    ),
]
StorageCredentialsOption = Annotated[
    str | None,
    typer.Option(
        "--storage-credentials",
        help="A prefect-aws AwsCredentials block for s3:// (default: the AWS_* variables).",
    ),
]


def _answer(question: Callable[[], R]) -> R:
    """``question()``, with its warnings printed and an analyst's mistake (a missing table, an
    unknown id, a bad condition) ending the command with its message and exit code 1."""
    import warnings

    from tasks.core.errors import EnrichError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            answer = question()
        except EnrichError as exc:
            if not exc.expected:
                raise
            typer.echo(f"Failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        finally:
            for warning in caught:
                if issubclass(warning.category, UserWarning):
                    typer.echo(f"Warning: {warning.message}", err=True)
    return answer


@app.command("similar")
def similar(
    table: TableOption,
    text: Annotated[
        str | None,
        typer.Option(
            help="Find rows whose text means something close to this (embedded with the "
            "table's model; cached locally, see ENRICH_QUERY_CACHE)."
        ),
    ] = None,
    row_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="Find rows close to the row with this id (its own vector; it comes first, "
            "with score 1.0).",
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="How many rows.")] = 10,
    where: Annotated[
        str | None,
        typer.Option(
            help="A SQL condition over the table's columns, applied before scoring, e.g. "
            "\"team = 'billing' AND partition >= '2026-11-01'\"."
        ),
    ] = None,
    columns: Annotated[
        list[str] | None,
        typer.Option(metavar="A,B", help="Columns to show beside id and score (e.g. text)."),
    ] = None,
    partition: Annotated[
        list[str] | None,
        typer.Option(metavar="P", help="Only these partitions (repeat, or commas). Default: all."),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="The id column, for tables whose manifests do not record it."),
    ] = None,
    work: WorkOption = None,
    storage_credentials: StorageCredentialsOption = None,
) -> None:
    """The k rows of an embeddings table nearest to a text or to a row (cosine similarity),
    best first. Reads one row group at a time, whatever the table's size."""
    import polars as pl

    import enrich

    found = _answer(
        lambda: enrich.similar(
            table,
            text=text,
            id=row_id,
            k=k,
            where=where,
            columns=strings_value(columns or []),
            partitions=strings_value(partition) if partition else None,
            storage_credentials=storage_credentials,
            id_column=id_column,
            work=work,
        )
    )
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=80,
        tbl_width_chars=160,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        float_precision=4,
    ):
        typer.echo(found)


@app.command("describe")
def describe(
    table: TableOption,
    partition: Annotated[
        list[str] | None,
        typer.Option(metavar="P", help="Only these partitions (repeat, or commas). Default: all."),
    ] = None,
    work: WorkOption = None,
    storage_credentials: StorageCredentialsOption = None,
) -> None:
    """A published table at a glance: its columns and what they mean, rows per partition
    (published, rejected, _SUCCESS), the models that answered, and the runs that wrote it."""
    import enrich

    described = _answer(
        lambda: enrich.describe(
            table,
            partitions=strings_value(partition) if partition else None,
            work=work,
            storage_credentials=storage_credentials,
        )
    )
    typer.echo(str(described))
