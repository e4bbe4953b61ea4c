"""The enrich flow's parameters: pydantic models and enums, so the Prefect UI renders a form."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

import kinds


class Kind(StrEnum):
    """What to ask Mistral for each row."""

    embeddings = "embeddings"
    moderation = "moderation"
    chat_moderation = "chat-moderation"
    classification = "classification"  # zero-shot labels through /v1/chat/completions
    classifier = "classifier"  # a fine-tuned classifier through /v1/classifications
    extract = "extract"  # typed fields through /v1/chat/completions with a strict JSON Schema


class CacheMode(StrEnum):
    """How a run uses the content cache."""

    use = "use"  # read hits, add new results after publishing
    refresh = "refresh"  # send every row again, add the new results
    off = "off"  # neither read nor write


class OnCancel(StrEnum):
    """What a cancelled flow run does with the Mistral jobs it started."""

    cancel = "cancel"  # stop the spending: cancel the jobs
    detach = "detach"  # leave them running; a later run with the same input reattaches


class MixedVersions(StrEnum):
    """What a run does when its partition's results came from different versions of the model
    (an alias such as ``mistral-moderation-latest`` moved between two runs, or during one)."""

    resend = "resend"  # send the rows answered by older versions again; one version published
    refuse = "refuse"  # fail before publishing, naming the versions; a rerun reuses the jobs
    accept = "accept"  # publish as they are; the manifest and summary list the versions


class WaitMode(StrEnum):
    """How a run waits for its Mistral jobs (hours on the real service)."""

    poll = "poll"  # the flow run polls until every job is over (it holds its worker)
    suspend = "suspend"  # it suspends once every job is recorded; `resume-finished` resumes it


# Where mapped shard tasks run: the flow's thread pool, a local Dask cluster started for the run
# (optionally with N worker processes), or a running Dask scheduler's address.
TASK_RUNNER_PATTERN = re.compile(r"threads|dask(:[1-9][0-9]?)?|(tcp|tls)://[^\s/]+")

MAX_PARTITION_LENGTH = 128
PARTITION_PATTERN = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")


class KindOptions(BaseModel):
    """Options of the chosen kind; one of another kind is refused (see ``Kind.check``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        default=None,
        description="Model id. Default per kind: mistral-embed, mistral-moderation-latest, "
        "mistral-small-latest (classification, extract). Required for kind 'classifier' "
        "unless classifier_model is given.",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="classification: the allowed labels (at least two).",
    )
    instructions: str | None = Field(
        default=None,
        description="classification and extract: the system prompt; default per kind.",
    )
    classifier_model: str | None = Field(
        default=None, description="classifier: the fine-tuned model id (ft:classifier:...)."
    )
    output_dimension: Annotated[int, Field(gt=0, le=3072)] | None = Field(
        default=None, description="embeddings with codestral-embed: vector length."
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="extract: a JSON Schema object whose flat properties (string, number, "
        "integer, boolean, enum, or an array of those) become typed columns, e.g. "
        '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
    )

    @field_validator("model", "instructions", "classifier_model", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        """The run form sends "" for a text box left empty: the kind's default."""
        return None if value == "" else value


class EnrichParams(BaseModel):
    """Everything a run needs; validated before anything is read or spent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(
        description="Parquet input: a file, a directory (hive partitions are read as columns), "
        "a glob, or an s3:// URI of any of these."
    )
    id_column: str = Field(description="Column with a unique, non-null id per row.")
    text_column: str = Field(
        description="Column with the text (for chat-moderation: a list of {role, content})."
    )
    kind: Kind = Kind.embeddings
    options: KindOptions = Field(default_factory=KindOptions)
    output: str = Field(description="Where the enriched table goes: a folder or an s3:// URI.")
    partition: str | None = Field(
        default=None,
        description="Value of the output's `partition` column; default: the run date (UTC).",
    )
    shard_size: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=20_000, description="Rows per shard (one batch job each)."
    )
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0, description="Seconds between two status checks of the run's jobs."
    )
    timeout_hours: Annotated[int, Field(ge=1, le=168)] = Field(
        default=24, description="Mistral's timeout per batch job."
    )
    max_retries: Annotated[int, Field(ge=0, le=10)] = Field(
        default=2, description="Follow-up jobs for rows that failed transiently."
    )
    max_rejected_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.01, description="Validation: the largest share of rows that may be rejected."
    )
    norm_tolerance: Annotated[float, Field(gt=0, le=1)] = Field(
        default=1e-3, description="Validation: how far an embedding's L2 norm may be from 1."
    )
    cache: str | None = Field(
        default=None,
        description="Content cache (Parquet, a folder or s3:// URI); default: `_enrich/_cache` "
        "beside the output, shared by every table there.",
    )
    cache_mode: CacheMode = Field(
        default=CacheMode.use,
        description="use: rows whose text was enriched before with the same model and options "
        "are not sent again; refresh: send all, update the cache; off: no cache.",
    )
    dry_run: bool = Field(
        default=False,
        description="Stop after the plan: requests, tokens and estimated cost; nothing is "
        "uploaded, no job is created, nothing is published.",
    )
    max_cost_usd: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="Refuse to submit when the estimated cost is over this many US dollars.",
    )
    price_table: str | None = Field(
        default=None,
        description="Price table (JSON) for cost estimates; default: the project's "
        "schemas/prices.json.",
    )
    on_cancel: OnCancel = Field(
        default=OnCancel.cancel,
        description="When the flow run is cancelled: cancel its Mistral jobs, or detach "
        "(leave them running for a later run to reattach).",
    )
    on_mixed_versions: MixedVersions = Field(
        default=MixedVersions.resend,
        description="When the service reports that a partition's results came from different "
        "versions of the model (an alias moved): resend the rows of older versions (within "
        "max_cost_usd), refuse to publish, or accept and list the versions in the manifest.",
    )
    keep_staging: bool = Field(
        default=False,
        description="Keep the staged rows, request files and results after publishing (for "
        "debugging); by default only job records and the validation result stay.",
    )
    lease_wait_seconds: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=0.0,
        description="When another run is writing the same output partition: seconds to wait "
        "for it to end before refusing (0: refuse at once, naming that run).",
    )
    task_runner: str = Field(
        default="threads",
        description="Where the shard tasks run: `threads` (Prefect's thread pool in the flow's "
        "process), `dask` or `dask:N` (a local Dask cluster of N worker processes, started and "
        "stopped by the run), or a Dask scheduler's address (`tcp://host:8786`), whose workers "
        "must reach s3:// input, output and work folders.",
    )
    wait: WaitMode = Field(
        default=WaitMode.poll,
        description="poll: the run polls its jobs until they are over; suspend: once every job "
        "is submitted and recorded the run suspends and frees its worker, and the "
        "`resume-finished` deployment resumes it when all its jobs are over (needs a "
        "deployment; `enrich run` always polls).",
    )
    work: str | None = Field(
        default=None,
        description="Where staging, rejected rows, quarantine and manifests go; default: "
        "`_enrich/<output name>` beside the output, so the table folder holds only the table.",
    )
    storage_credentials: str = Field(
        default="",
        title="Storage credentials block",
        description="Name of a prefect-aws AwsCredentials block for s3:// locations (its access "
        "key, secret, region and endpoint_url); empty: the AWS_* variables of the machine "
        "running the run (and of each Dask worker).",
    )

    @model_validator(mode="before")
    @classmethod
    def _kind_inside_options(cls, data: Any) -> Any:
        """The run form sends the kind inside ``options`` (one set of options per kind); Python
        callers, the CLI and parameter files may give it beside them. Either way, one kind."""
        if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
            return data
        options = dict(data["options"])
        if "kind" not in options:
            return data
        inner, outer = options.pop("kind"), data.get("kind")
        if outer is not None and str(outer) != str(inner):
            raise ValueError(
                f"kind is given twice: {outer!r} and options.kind {inner!r}; give it once"
            )
        return {**data, "kind": inner, "options": options}

    @field_validator("partition", "price_table", "work", "cache", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """The run form sends "" for a text box left empty: the documented default."""
        return None if value == "" else value

    @field_validator("input", "output", "work", "cache", "price_table")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """A local path is made absolute where the parameters are read (the worker's folder):
        artifacts, events, logs and job metadata then name one place, not one per clone."""
        if value is None or "://" in value.removeprefix("file://"):
            return value
        return os.path.normpath(Path(value.removeprefix("file://")).expanduser().absolute())

    @field_validator("partition")
    @classmethod
    def _partition_is_a_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value or len(value) > MAX_PARTITION_LENGTH:
            raise ValueError(
                f"partition must be 1 to {MAX_PARTITION_LENGTH} characters (got {len(value)})"
            )
        if not PARTITION_PATTERN.fullmatch(value) or ".." in value:
            raise ValueError(
                f"partition {value!r} must be a plain name: letters, digits, '.', '_', '+' and "
                "'-', not starting with '.' and without '..' (no '/', '\\', '=', wildcards or "
                "control characters: it names a folder inside the table), e.g. 2026-11-22"
            )
        return value

    @field_validator("task_runner")
    @classmethod
    def _task_runner_is_known(cls, value: str) -> str:
        if not TASK_RUNNER_PATTERN.fullmatch(value):
            raise ValueError(
                f"task_runner {value!r} must be 'threads', 'dask', 'dask:N' (N local worker "
                "processes, 1-99) or a Dask scheduler address such as 'tcp://10.0.0.5:8786'"
            )
        return value

    @model_validator(mode="after")
    def _shared_cluster_needs_shared_storage(self) -> EnrichParams:
        if "://" not in self.task_runner or self.task_runner.startswith("dask"):
            return self
        local = [
            f"{name}={value!r}"
            for name, value in (
                ("input", self.input),
                ("output", self.output),
                ("work", self.work_root()),
                ("cache", self.cache_root() if self.cache_mode is not CacheMode.off else None),
            )
            if value is not None and not value.startswith("s3://")
        ]
        if local:
            raise ValueError(
                f"task_runner {self.task_runner!r} runs shards on other machines, which cannot "
                f"see this machine's folders: {', '.join(local)}; use s3:// locations (or "
                "task_runner 'dask' for a cluster on this machine)"
            )
        return self

    @model_validator(mode="after")
    def _kind_options(self) -> EnrichParams:
        kinds.kind_of(self).check(self.options)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The schema Prefect stores and renders as the run form: one set of options per kind
        (the form shows the chosen kind's only, and the server refuses, say, a classification
        without labels before a run exists), titled sections, no null toggles where a default
        exists."""
        schema = handler(core_schema)
        form_schema(handler.resolve_ref_schema(schema), handler.resolve_ref_schema)
        return schema

    def as_form(self) -> dict[str, Any]:
        """The parameters as the run form sends them (the kind inside ``options``, no nulls):
        what a deployment, whose server enforces the form's schema, accepts."""
        data = self.model_dump(mode="json", exclude_none=True)
        options = {k: v for k, v in data.pop("options").items() if v not in ([], "")}
        data["options"] = {"kind": data.pop("kind"), **options}
        return data

    @property
    def model(self) -> str:
        return kinds.kind_of(self).model(self.options)

    @property
    def endpoint(self) -> str:
        return kinds.kind_of(self).endpoint

    def work_root(self) -> str:
        if self.work:
            return self.work.rstrip("/")
        parent, _, name = self.output.rstrip("/").rpartition("/")
        return f"{parent}/_enrich/{name}" if parent else f"_enrich/{name}"

    def cache_root(self) -> str:
        if self.cache:
            return self.cache.rstrip("/")
        parent, _, _ = self.output.rstrip("/").rpartition("/")
        return f"{parent}/_enrich/_cache" if parent else "_enrich/_cache"

    def partition_value(self, now: datetime | None = None) -> str:
        return self.partition or (now or datetime.now(UTC)).strftime("%Y-%m-%d")

    def result_options(self) -> dict[str, object]:
        """The options that change a result: part of every job's identity."""
        kind = kinds.kind_of(self)
        return {"kind": self.kind.value, "model": self.model, **kind.result_options(self.options)}


# The run form ------------------------------------------------------------------------------------

# Optional text parameters whose default is described, not None-valued: shown as a text box with
# an empty default (no "str / None" toggle); "" is read as unset.
EMPTY_MEANS_DEFAULT = frozenset(
    {"partition", "price_table", "work", "cache", "model", "instructions", "classifier_model"}
)


def form_schema(schema: dict[str, Any], resolve: Any) -> None:
    """Rewrite ``EnrichParams``' JSON Schema in place for the run form (see
    ``EnrichParams.__get_pydantic_json_schema__``)."""
    properties: dict[str, Any] = schema["properties"]
    properties.pop("kind", None)
    schema["required"] = [name for name in schema.get("required", []) if name != "kind"]
    option_fields = resolve(properties["options"])["properties"]
    properties["options"] = {
        "title": "Kind and its options",
        "description": "What to ask Mistral for each row; the chosen kind's options.",
        "anyOf": [_variant(kinds.get(k.value), option_fields, resolve) for k in Kind],
        "default": {"kind": Kind.embeddings.value},
    }
    for name, field in list(properties.items()):
        if name != "options":
            properties[name] = _plain(name, field, resolve)


def _variant(kind: Any, fields: dict[str, Any], resolve: Any) -> dict[str, Any]:
    shown = {
        name: _plain(name, fields[name], resolve) | kind.options_schema.get(name, {})
        for name in kind.options_shown
    }
    return {
        "title": kind.name,
        "description": kind.summary,
        "type": "object",
        "properties": {
            "kind": {"title": "Kind", "type": "string", "const": kind.name, "default": kind.name},
            **shown,
        },
        "required": ["kind", *kind.options_required],
        "additionalProperties": False,
    }


def _plain(name: str, field: dict[str, Any], resolve: Any) -> dict[str, Any]:
    """An enum inline under a readable title (not its class name); a nullable text with a
    described default as a plain text box."""
    title = field.get("title") or name.replace("_", " ").capitalize()
    if "$ref" in field:
        target = resolve(field)
        if "enum" in target:
            rest = {k: v for k, v in field.items() if k != "$ref"}
            return {**target, **rest, "title": title}
        return field
    options = field.get("anyOf", [])
    if name in EMPTY_MEANS_DEFAULT and {"type": "null"} in options:
        (kept,) = [o for o in options if o != {"type": "null"}]
        rest = {k: v for k, v in field.items() if k not in ("anyOf", "default")}
        return {**kept, **rest, "title": title, "default": ""}
    return field
