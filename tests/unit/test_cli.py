"""`enrich run`'s flags are made from the parameter models: every field has one, and flags,
`--params FILE` and the flow's parameter dict build the same `EnrichParams`. Nothing here starts
a flow: the command line is parsed into a context, or fails validation before the flow is
imported."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import typer
import typer.main
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from flows.cli import (
    FieldFlag,
    Shape,
    app,
    build_params,
    field_flags,
    given_values,
    strings_value,
    with_field_flags,
)
from schemas.params import EnrichParams, KindOptions

RUN = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
WIDE = {"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"}  # no wrapping in --help and error panels
COMMAND_ONLY = {"--params", "--summary-json", "--verbose"}  # flags that are not parameters

REQUIRED_ARGS = ["--input", "in.parquet", "--id-column", "id", "--text-column", "text"]
REQUIRED_ARGS += ["--output", "out"]
REQUIRED = {"input": "in.parquet", "id_column": "id", "text_column": "text", "output": "out"}


def parse(*argv: str) -> EnrichParams:
    """`enrich run ARGV`'s parameters, without running the flow."""
    ctx = RUN.make_context("run", list(argv))
    return build_params(ctx, ctx.params["params_file"])


def plain(output: str) -> str:
    """Rich's panels without their borders and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def fields() -> dict[str, str]:
    """Every parameter's flag and description, walked here apart from flows.cli: the fields of
    EnrichParams, those of the KindOptions in its `options` in place of `options` itself."""
    nested = {name: f for name, f in EnrichParams.model_fields.items() if name != "options"}
    every = nested | KindOptions.model_fields
    return {"--" + name.replace("_", "-"): f.description or "" for name, f in every.items()}


def options_of(command: Any) -> list[str]:
    return [opt for param in command.params for opt in param.opts]


def test_every_field_has_a_flag_with_its_description() -> None:
    by_option = {param.opts[0]: param for param in RUN.params}
    missing = sorted(set(fields()) - set(by_option))
    assert not missing, f"parameters without a flag on `enrich run`: {missing}"
    for option, description in fields().items():
        assert by_option[option].help, f"{option} has no help: give its field a description"
        assert description.rstrip(".") in by_option[option].help, option
    assert set(by_option) - set(fields()) == COMMAND_ONLY


def test_no_two_flags_share_a_name() -> None:
    options = options_of(RUN)
    assert len(options) == len(set(options))


def test_help_lists_every_field_with_its_description() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    shown = plain(result.output)
    for option, description in fields().items():
        assert option in shown
        assert " ".join(description.split()).rstrip(".") in shown, option
    assert "--params" in shown and "--no-dry-run" in shown


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param([], {}, id="required only"),
        pytest.param(
            shlex.split(
                "--kind moderation --partition 2026-11-22 --shard-size 10 --poll-interval 0.5 "
                "--timeout-hours 2 --max-retries 0 --max-rejected-fraction 0.2 "
                "--norm-tolerance 0.01 --cache c --cache-mode off --max-cost-usd 3.5 "
                "--price-table p.json --on-cancel detach --lease-wait-seconds 5 "
                "--task-runner dask:2 --wait suspend --work w"
            ),
            {
                "kind": "moderation",
                "partition": "2026-11-22",
                "shard_size": 10,
                "poll_interval": 0.5,
                "timeout_hours": 2,
                "max_retries": 0,
                "max_rejected_fraction": 0.2,
                "norm_tolerance": 0.01,
                "cache": "c",
                "cache_mode": "off",
                "max_cost_usd": 3.5,
                "price_table": "p.json",
                "on_cancel": "detach",
                "lease_wait_seconds": 5.0,
                "task_runner": "dask:2",
                "wait": "suspend",
                "work": "w",
            },
            id="every top-level value",
        ),
        pytest.param(
            ["--dry-run", "--keep-staging"], {"dry_run": True, "keep_staging": True}, id="switches"
        ),
        pytest.param(
            ["--no-dry-run", "--no-keep-staging"],
            {"dry_run": False, "keep_staging": False},
            id="switches off",
        ),
        pytest.param(
            [
                "--kind",
                "classification",
                "--labels",
                "positive, negative",
                "--instructions",
                "Terse.",
            ],
            {
                "kind": "classification",
                "options": {"labels": ["positive", "negative"], "instructions": "Terse."},
            },
            id="comma-separated labels",
        ),
        pytest.param(
            ["--kind", "classification", "--labels", "a", "--labels", "b,c"],
            {"kind": "classification", "options": {"labels": ["a", "b", "c"]}},
            id="repeated labels",
        ),
        pytest.param(
            ["--model", "codestral-embed", "--output-dimension", "256"],
            {"options": {"model": "codestral-embed", "output_dimension": 256}},
            id="embeddings options",
        ),
        pytest.param(
            ["--kind", "classifier", "--classifier-model", "ft:classifier:x"],
            {"kind": "classifier", "options": {"classifier_model": "ft:classifier:x"}},
            id="classifier",
        ),
    ],
)
def test_flags_build_the_params_of_the_same_dict(argv: list[str], expected: dict[str, Any]) -> None:
    assert parse(*REQUIRED_ARGS, *argv) == EnrichParams.model_validate(REQUIRED | expected)


def test_an_extract_schema_comes_from_a_file_as_the_readme_shows(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"product": {"type": "string"}}}
    (tmp_path / "order.json").write_text(json.dumps(schema))
    built = parse(*REQUIRED_ARGS, "--kind", "extract", "--json-schema", f"@{tmp_path}/order.json")
    assert built.kind.value == "extract" and built.options.json_schema == schema


FROM_FILE = REQUIRED | {
    "kind": "classification",
    "shard_size": 5,
    "dry_run": True,
    "cache_mode": "off",
    "partition": "2026-11-22",
    "options": {"labels": ["a", "b"], "instructions": "From the file."},
}
# Written by hand: `off`, `true` and the date unquoted, as people write YAML.
FROM_FILE_YAML = """\
input: in.parquet
id_column: id
text_column: text
output: out
kind: classification
shard_size: 5
dry_run: true
cache_mode: off
partition: 2026-11-22
options:
  labels: [a, b]
  instructions: From the file.
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("params.json", json.dumps(FROM_FILE)),
        ("params.yaml", FROM_FILE_YAML),
        ("params.yml", FROM_FILE_YAML),
        ("params", json.dumps(FROM_FILE)),  # by content
        ("params.txt", FROM_FILE_YAML),  # by content
    ],
)
def test_params_file_with_flags_on_top(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert parse("--params", str(path)) == EnrichParams.model_validate(FROM_FILE)
    overridden = parse("--params", str(path), "--shard-size", "7", "--labels", "x,y")
    options = {"labels": ["x", "y"], "instructions": "From the file."}  # the rest stays
    assert overridden == EnrichParams.model_validate(
        FROM_FILE | {"shard_size": 7, "options": options}
    )


def test_a_form_shaped_file_and_a_kind_flag(tmp_path: Path) -> None:
    """A file saved from the run form holds the kind inside its options; --kind overrides it
    like any flag, and the file's options of its own kind do not come along silently."""
    path = tmp_path / "params.json"
    form = FROM_FILE | {"options": {"kind": "classification", "labels": ["a", "b"]}}
    form.pop("kind", None)
    path.write_text(json.dumps(form))
    assert parse("--params", str(path)).kind == "classification"
    assert parse("--params", str(path), "--kind", "moderation", "--labels", "").kind == "moderation"


def test_only_flags_given_override_the_file_not_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(FROM_FILE))
    params = parse("--params", str(path), "--no-dry-run")
    assert params.dry_run is False  # given
    assert params.shard_size == 5 and params.cache_mode == "off"  # defaults of unset flags: no


def run_cli(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", *argv], env=WIDE)
    return result.exit_code, plain(result.output)


@pytest.mark.parametrize(
    ("argv", "messages"),
    [
        pytest.param(
            ["--input", "in.parquet", "--shard-size", "0", "--partition", "a/b"],
            [
                "id_column is required: give --id-column, or set id_column in the --params file",
                "output is required: give --output, or set output in the --params file",
                "--shard-size (shard_size): Input should be greater than or equal to 1 (got 0)",
                "--partition (partition): partition 'a/b' must be a plain name",
            ],
            id="fields",
        ),
        pytest.param(
            [*REQUIRED_ARGS, "--kind", "classification", "--labels", "a"],
            ["kind 'classification' needs options.labels"],
            id="across fields",
        ),
    ],
)
def test_invalid_params_name_the_flags_to_fix(argv: list[str], messages: list[str]) -> None:
    code, output = run_cli(*argv)
    assert code == 2
    assert "Invalid value: the run's parameters are not valid:" in output
    for message in messages:
        assert message in output
    assert "every parameter has a flag named after its last part (options.x_y is --x-y)" in output


def test_unknown_key_in_the_params_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(FROM_FILE_YAML + "shards: 3\n")
    code, output = run_cli("--params", str(path))
    assert code == 2
    assert "shards is not a parameter: remove it from the --params file" in output


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("params.json", "{input: x", "params.json is not JSON: Expecting property name"),
        ("params.yaml", "- a\n- b\n", "params.yaml holds a list, not the parameter object"),
        ("params.yaml", "a: [b\n", "params.yaml is not YAML"),
    ],
)
def test_unreadable_params_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    code, output = run_cli("--params", str(tmp_path / name))
    assert code == 2 and message in output
    assert "--params" in output


# Generic shapes, on a model of their own: a dict field (a JSON Schema, say) and others.


class Level(StrEnum):
    low = "low"
    high = "high"


class Extra(BaseModel):
    """Extra options."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] | None = Field(default=None, description="A JSON Schema.")
    weights: list[float] = Field(default_factory=list, description="Weights per column.")
    limits: dict[str, int] = Field(default_factory=lambda: {"rows": 10}, description="Limits.")


class Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A name.")
    level: Level = Field(default=Level.low, description="How much.")
    extra: Extra = Field(default_factory=Extra)


def probe_app(model: type[BaseModel]) -> typer.Typer:
    """A one-command app with one flag per field of `model`, printing the model it builds."""
    flags = field_flags(model)
    probe = typer.Typer()

    @probe.command()
    @with_field_flags(flags)
    def show(ctx: typer.Context, **_: Any) -> None:
        typer.echo(model.model_validate(given_values(ctx, flags, {})).model_dump_json())

    return probe


def probe(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(probe_app(Probe), list(argv), env=WIDE)
    return result.exit_code, result.output


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_a_dict_field_takes_json_text(tmp_path: Path) -> None:
    code, output = probe(
        "--name", "n", "--json-schema", json.dumps(SCHEMA), "--weights", "[1, 2.5]"
    )
    assert code == 0, output
    built = Probe.model_validate_json(output)
    assert built.extra == Extra(json_schema=SCHEMA, weights=[1.0, 2.5], limits={"rows": 10})


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("schema.json", json.dumps(SCHEMA)),
        ("schema.yaml", "type: object\nproperties:\n  city: {type: string}\nrequired: [city]\n"),
    ],
)
def test_a_dict_field_takes_at_file(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    code, output = probe("--name", "n", "--json-schema", f"@{tmp_path / name}")
    assert code == 0, output
    assert Probe.model_validate_json(output).extra.json_schema == SCHEMA


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{type: object}", "is not JSON (Expecting property name"),
        ("@missing.json", "cannot read missing.json: No such file or directory"),
    ],
)
def test_a_bad_document_value_says_how_to_give_it(value: str, message: str) -> None:
    code, output = probe("--name", "n", "--json-schema", value)
    assert code == 2
    assert message in plain(output) and "--json-schema" in plain(output)


def test_probe_help_shows_documents_lists_and_choices() -> None:
    code, output = probe("--help")
    shown = plain(output)
    assert code == 0
    assert "--json-schema JSON|@FILE A JSON Schema. JSON text, or @FILE" in shown
    assert "--limits JSON|@FILE Limits. JSON text, or @FILE" in shown
    assert '[default: {"rows":10}]' in shown
    assert "Repeat the flag" not in shown  # list[float] is a document, not a list of strings
    assert "--name" in shown and "A name. Required: here or in --params FILE." in shown
    assert "low|high" in shown and "[default: low]" in shown
    assert "Extra options (extra.*)" in shown


def test_a_nested_field_named_like_another_is_refused() -> None:
    class Inner(BaseModel):
        name: str = "x"

    class Outer(BaseModel):
        name: str = "y"
        inner: Inner = Field(default_factory=Inner)

    def command(**_: Any) -> None: ...

    with pytest.raises(TypeError, match=r"inner.name and name would both be --name: rename one"):
        with_field_flags(field_flags(Outer))(command)


@pytest.mark.parametrize(
    ("annotation", "shape"),
    [
        (bool, Shape.switch),
        (str, Shape.value),
        (str | None, Shape.value),
        (Annotated[int, Field(gt=0)] | None, Shape.value),
        (float, Shape.value),
        (Path, Shape.value),
        (Level, Shape.value),
        (Literal["a", "b"], Shape.value),
        (list[str], Shape.strings),
        (dict[str, Any] | None, Shape.document),
        (list[int], Shape.document),
        (int | str, Shape.document),
    ],
)
def test_shape_of_a_field(annotation: Any, shape: Shape) -> None:
    class One(BaseModel):
        x: annotation

    (flag,) = field_flags(One)
    assert isinstance(flag, FieldFlag) and flag.shape is shape


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], []),
        ([""], []),
        (["a"], ["a"]),
        (["a, b", "c"], ["a", "b", "c"]),
        (["a,,b"], ["a", "", "b"]),  # the model says what is wrong with an empty label
    ],
)
def test_strings_value(given: list[str], expected: list[str]) -> None:
    assert strings_value(given) == expected


@pytest.mark.parametrize(("given", "seen"), [(None, "false"), ("true", "true")])
def test_the_temporary_server_sends_no_telemetry_unless_asked(given: str | None, seen: str) -> None:
    """``enrich run`` without PREFECT_API_URL starts a temporary server; on an offline machine
    its telemetry logged an error every run. Off by default; an explicit opt-in is kept."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    if given is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = given
    script = (
        "import flows.cli; from prefect.settings import get_current_settings; "
        "print(get_current_settings().server.analytics_enabled)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == {"false": "False", "true": "True"}[seen]
