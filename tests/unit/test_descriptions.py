"""Column descriptions: one source (``schemas.tables`` and each kind's ``columns``) for the README's
"Output tables", the published files' field metadata and the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kinds
from kinds.base import Column
from kinds.extract import RESERVED
from schemas import tables
from schemas.params import EnrichParams, Kind, KindOptions
from tasks.publish import PUBLISH_KEY, combine

README = Path(__file__).resolve().parents[2] / "README.md"


def params(kind: Kind, **options: Any) -> EnrichParams:
    return EnrichParams(
        input="/data/in.parquet",
        id_column="id",
        text_column="text",
        output="/data/out",
        kind=kind,
        options=KindOptions.model_validate(options),
    )


def test_the_readme_shows_exactly_the_descriptions_the_files_get() -> None:
    text = README.read_text()
    section = text[text.index("### Output tables\n") :]
    # Whole tables: blank lines before and after, so no row can be added or left out.
    for table in (tables.readme_output_table(), tables.readme_rejected_table()):
        assert f"\n\n{table}\n" in section, "render schemas.tables' tables into the README"


def test_every_kind_describes_its_columns_for_the_readme() -> None:
    rendered = tables.readme_output_table()
    for kind in Kind:
        assert kinds.get(kind).columns, f"kind {kind} declares no result columns"
        assert kind.value in rendered


@pytest.mark.parametrize(
    ("column", "name", "expected"),
    [
        (Column("flagged", "bool", "any"), "flagged", "any"),
        (Column("flagged", "bool", "any"), "flagged_x", None),
        (Column("score_<name>", "float64", "score of <name>"), "score_hate", "score of hate"),
        (Column("score_<name>", "float64", "score of <name>"), "score_", None),
        (
            Column("<target>_score_<label>", "float64", "<label> of <target>, not <other>"),
            "tone_score_calm",
            "calm of tone, not <other>",
        ),
        (Column("a.b_<x>", "string", "<x>"), "aXb_1", None),  # literal parts are literal
    ],
)
def test_a_column_pattern_describes_the_names_it_fits(
    column: Column, name: str, expected: str | None
) -> None:
    assert column.describe(name) == expected


def test_moderation_describes_each_category_by_name() -> None:
    moderation = kinds.get(Kind.moderation)
    found = moderation.describe_columns(
        ["flagged", "category_hate_and_discrimination", "score_hate_and_discrimination", "note"],
        KindOptions(),
    )
    assert found["flagged"] == "whether the model flagged at least one category"
    assert found["category_hate_and_discrimination"].startswith(
        "whether the model flagged category hate_and_discrimination ("
    )
    assert found["score_hate_and_discrimination"] == (
        "the model's score for category hate_and_discrimination, 0 to 1"
    )
    assert "note" not in found
    assert kinds.get(Kind.chat_moderation).columns == moderation.columns


def test_classifier_describes_targets_and_labels() -> None:
    found = kinds.get(Kind.classifier).describe_columns(
        ["sentiment_label", "sentiment_score_positive", "text"],
        KindOptions(classifier_model="ft:classifier:x"),
    )
    assert found == {
        "sentiment_label": "the label of target sentiment with the highest score (a target and "
        "its labels are named as the classifier names them)",
        "sentiment_score_positive": "the classifier's score for label positive of target sentiment",
    }


def test_classification_names_the_labels_of_the_run() -> None:
    options = KindOptions(labels=["spam", "ham"])
    found = kinds.get(Kind.classification).describe_columns(["label"], options)
    assert found == {
        "label": "the label the model chose, one of spam, ham (kept as answered: the validation "
        "gate checks it)"
    }
    assert kinds.get(Kind.classification).describe_columns(["text"], options) == {}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "the text's embedding by mistral-embed: 1024 float32 values of L2 norm 1"),
        (
            {"model": "codestral-embed", "output_dimension": 256},
            "the text's embedding by codestral-embed: 256 float32 values of L2 norm 1",
        ),
        (
            {"model": "some-embed-v9"},
            "the text's embedding by some-embed-v9: float32 values of L2 norm 1",
        ),
    ],
)
def test_embeddings_gives_the_model_and_the_dimension(
    options: dict[str, Any], expected: str
) -> None:
    found = kinds.get(Kind.embeddings).describe_columns(
        ["embedding"], KindOptions.model_validate(options)
    )
    assert found == {"embedding": expected}


def test_extract_keeps_each_propertys_own_description() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city the customer lives in"},
            "tags": {"type": "array", "items": {"type": "string", "description": "a topic"}},
            "year": {"type": "integer", "description": "  "},
        },
    }
    found = kinds.get(Kind.extract).describe_columns(
        ["id", "city", "tags", "year"], KindOptions(json_schema=schema)
    )
    assert found == {
        "city": "the city the customer lives in",
        "tags": "a topic",
        "year": "property year of options.json_schema, as the model extracted it; null when "
        "absent or not of its type",
    }


def test_extract_reserves_the_lineage_and_partition_names() -> None:
    assert {c.name for c in tables.LINEAGE} | {tables.PARTITION_COLUMN} == RESERVED


def test_the_rejected_columns_are_described_in_order() -> None:
    assert [c.name for c in tables.REJECTED_COLUMNS] == list(tables.REJECTED)
    reason = tables.REJECTED_COLUMNS[0].description
    assert all(f"{r} ({meaning})" in reason for r, meaning in tables.REJECT_REASONS.items())


def test_input_columns_keep_their_own_description_else_say_where_they_come_from() -> None:
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), metadata={b"description": b"the ticket number"}),
            pa.field("text", pa.string(), metadata={b"other": b"x"}),
        ]
    )
    found = tables.input_descriptions(["id", "text"], "s3://b/in/", schema)
    assert found == {"id": "the ticket number", "text": "input column, copied from s3://b/in/"}
    assert tables.input_descriptions(["id"], "/in", None) == {"id": "input column, copied from /in"}


def test_a_published_file_is_described_column_by_column() -> None:
    run = params(Kind.moderation)
    # An input column that looks like a result column is still an input column.
    inputs = tables.input_descriptions(["id", "text", "score_note"], run.input, None)
    names = ["id", "text", "score_note", "flagged", "score_hate", "enriched_at", "model", "odd"]
    names += ["model_version", "batch_job_id", "result_source"]
    found = tables.published_descriptions(names, inputs, run)
    assert list(found) == [n for n in names if n != "odd"]
    assert found["score_note"] == "input column, copied from /data/in.parquet"
    assert found["score_hate"] == "the model's score for category hate, 0 to 1"
    assert found["model_version"].startswith("the model version that answered")

    rejected = tables.rejected_descriptions(["id", "text", "reject_reason", "batch_job_id"], inputs)
    assert rejected["batch_job_id"] == (
        "the last batch job asked for the row (null when it was never sent)"
    )
    assert rejected["id"] == "input column, copied from /data/in.parquet"


def test_combine_writes_the_descriptions_into_the_field_metadata(tmp_path: Path) -> None:
    parts = []
    for i, labels in enumerate((["a", "b"], ["c", None])):
        part = tmp_path / f"part-{i}.parquet"
        pl.DataFrame({"id": [2 * i, 2 * i + 1], "label": labels}).write_parquet(part)
        parts.append(str(part))
    target = tmp_path / "out.parquet"
    rows = combine(
        parts,
        str(target),
        None,
        footer={"run_id": "r1"},
        describe=lambda names: {"label": f"the label ({len(names)} columns)"},
    )
    assert rows == 4
    schema = pq.read_schema(target)
    assert schema.field("label").metadata == {b"description": b"the label (2 columns)"}
    assert schema.field("id").metadata is None
    assert schema.metadata is not None and PUBLISH_KEY in schema.metadata
    assert pl.read_parquet(target)["label"].to_list() == ["a", "b", "c", None]
