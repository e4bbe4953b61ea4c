"""The README's reading recipes run as written against tables the flow published.

The demo's three runs (embeddings, moderation, classification of one input) publish to
SeaweedFS, the embeddings one to local disk too; the python blocks of the README's "Reading the
tables" subsection are then executed in order in one namespace, the environment pointing their
inputs at those tables, and what each block bound is checked against the published rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from emulator.server import EmulatorProcess
from flows.demo import runs, sample_dataset
from flows.enrich import enrich
from tasks.edges import storage
from tests.flows.conftest import flow_params, read_table
from tests.seaweed import BUCKET, SeaweedS3

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Reading the tables: polars, pyarrow, DuckDB, pandas"
ROWS = 20
QUERY_ID = "c000003"  # the comment the similarity recipe queries with
_HEADING = re.compile(r"#{1,6} ")
_FENCE = "```"


@dataclass(frozen=True)
class Recipe:
    line: int  # of the README, where the block's code starts
    code: str


def readme_recipes(readme: Path = README, section: str = SECTION) -> list[Recipe]:
    """The ```python blocks between ``section``'s heading and the next heading (a ``#`` line
    inside a block is a comment, not a heading)."""
    lines = readme.read_text().splitlines()
    if section not in lines:
        raise AssertionError(f"README.md has no heading {section!r}")
    recipes: list[Recipe] = []
    block: list[str] | None = None
    language = ""
    start = 0
    for number, line in enumerate(lines[lines.index(section) + 1 :], lines.index(section) + 2):
        if block is None and line.startswith(_FENCE):
            block, language, start = [], line[len(_FENCE) :].strip(), number + 1
        elif block is not None and line.startswith(_FENCE):
            if language == "python":
                recipes.append(Recipe(start, "\n".join(block) + "\n"))
            block = None
        elif block is not None:
            block.append(line)
        elif _HEADING.match(line):
            break
    return recipes


def test_the_section_is_read_up_to_the_next_heading_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        f"{SECTION}\n\ntext\n\n```python\n# a comment, not a heading\nx = 1\n```\n\n"
        "```text\nnot python\n```\n\n```python\ny = 2\n```\n\n### Next\n\n```python\nz = 3\n```\n"
    )
    assert readme_recipes(readme) == [
        Recipe(6, "# a comment, not a heading\nx = 1\n"),
        Recipe(15, "y = 2\n"),
    ]


def published(tables: str, kind: str) -> pl.DataFrame:
    """A published table read back by the project's own storage layer, for comparison."""
    files = storage.list_files(f"{tables}/{kind}/comments/partition=2026-11-22", ".parquet")
    assert len(files) == 1, files
    return storage.read_parquet(files[0])


def run_recipes(namespace: dict[str, Any]) -> None:
    recipes = readme_recipes()
    assert len(recipes) >= 9, f"README recipes missing: {len(recipes)} python blocks"
    for recipe in recipes:
        # Compiled under the README's name, padded so a traceback points at the README's line.
        code = compile("\n" * (recipe.line - 1) + recipe.code, str(README), "exec")
        exec(code, namespace)


def bound(namespace: dict[str, Any], name: str) -> Any:
    if name not in namespace:
        raise AssertionError(f"no README recipe binds {name!r} any more: was a block renamed?")
    return namespace[name]


def test_readme_recipes_read_the_published_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistral: EmulatorProcess, s3: SeaweedS3
) -> None:
    local_tables = tmp_path / "local"
    s3_tables = f"s3://{BUCKET}/{tmp_path.name}/enriched"
    source = sample_dataset(tmp_path / "input" / "comments.parquet", rows=ROWS)
    for demo in runs(source, local_tables):  # the demo's runs: its kinds, options and layout
        table = Path(demo.output).relative_to(local_tables).as_posix()
        same = {"id_column": demo.id_column, "kind": demo.kind, "options": demo.options}
        outputs = [f"{s3_tables}/{table}"]
        if demo.kind.value == "embeddings":
            outputs.append(demo.output)
        for output in outputs:
            summary = enrich(flow_params(source, output, **same))
            assert summary.enriched_rows == ROWS, (demo.kind, output)

    embeddings = published(s3_tables, "embeddings").sort("comment_id")
    moderation = published(s3_tables, "moderation").sort("comment_id")
    classification = published(s3_tables, "classification").sort("comment_id")
    local = read_table(local_tables / "embeddings" / "comments").sort("comment_id")
    assert local["comment_id"].to_list() == embeddings["comment_id"].to_list()
    ids = sorted(embeddings["comment_id"])
    toxic = moderation.filter(pl.col("flagged"))
    assert 0 < toxic.height < ROWS  # the sample has toxic comments: the filters must find them

    monkeypatch.setenv("ENRICH_LOCAL_TABLES", str(local_tables))
    monkeypatch.setenv("ENRICH_S3_TABLES", s3_tables)
    ns: dict[str, Any] = {}
    run_recipes(ns)

    # polars, local and S3
    assert sorted(bound(ns, "embeddings")["comment_id"]) == ids
    vectors = bound(ns, "vectors")
    assert vectors.shape == (ROWS, 1024) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert bound(ns, "moderation").height == ROWS
    assert sorted(bound(ns, "flagged")["comment_id"]) == sorted(toxic["comment_id"])

    # pyarrow, local and S3
    assert sorted(bound(ns, "arrow_embeddings").column("comment_id").to_pylist()) == ids
    labels = pl.from_arrow(bound(ns, "arrow_labels"))
    assert isinstance(labels, pl.DataFrame)
    assert labels.sort("comment_id")["label"].to_list() == classification["label"].to_list()
    assert set(labels["partition"]) == {"2026-11-22"}

    # pandas on S3
    counts = bound(ns, "label_counts").to_dict()
    assert counts == dict(classification["label"].value_counts().iter_rows())

    # DuckDB, local and S3
    [(partition, comments, first_enriched)] = bound(ns, "per_partition")
    assert str(partition) == "2026-11-22" and comments == ROWS
    assert first_enriched == local["enriched_at"].min()
    per_channel = bound(ns, "per_channel")
    expected = moderation.group_by("channel").agg(
        comments=pl.len(), flagged=pl.col("flagged").sum()
    )
    assert per_channel.to_dicts() == expected.sort("channel").cast(per_channel.schema).to_dicts()

    # DuckDB similarity: the queried comment first, at 1.0, then its neighbours by score
    similar = bound(ns, "similar")
    assert len(similar) == 5
    assert similar[0][0] == QUERY_ID and similar[0][2] == pytest.approx(1.0, abs=1e-5)
    scores = [score for _, _, score in similar]
    assert scores == sorted(scores, reverse=True) and scores[1] < 1 - 1e-6
    matrix = embeddings["embedding"].to_numpy()
    by_id = dict(zip(embeddings["comment_id"], matrix @ matrix[ids.index(QUERY_ID)], strict=True))
    assert scores == pytest.approx(sorted(by_id.values(), reverse=True)[:5], abs=1e-5)

    # DuckDB view over the three kinds: one row per id, every kind's columns
    view = bound(ns, "con").sql("SELECT * FROM enriched ORDER BY comment_id").pl()
    assert view["comment_id"].to_list() == ids
    assert view.schema["embedding"] == pl.Array(pl.Float32, 1024)
    category_columns = [c for c in moderation.columns if c.startswith(("category_", "score_"))]
    assert set(category_columns) <= set(view.columns) and category_columns
    assert view["flagged"].to_list() == moderation["flagged"].to_list()
    assert view["label"].to_list() == classification["label"].to_list()
    for kind, rows in (
        ("embeddings", embeddings),
        ("moderation", moderation),
        ("classification", classification),
    ):
        for column in ("model", "enriched_at", "batch_job_id", "result_source"):
            assert view[f"{kind}_{column}"].to_list() == rows[column].to_list(), (kind, column)
    expected_by_label = (
        classification.join(moderation, on="comment_id")
        .group_by("label")
        .agg(comments=pl.len(), flagged=pl.col("flagged").sum())
        .sort("label")
    )
    assert bound(ns, "flagged_by_label") == list(expected_by_label.iter_rows())
