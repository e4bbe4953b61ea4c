"""The analysts' library on tables the real flow published: one view over three kinds, similarity
search (local and S3), describe, and the `enrich similar` / `enrich describe` commands.

One input enriched three times (embeddings, moderation, classification) into two partitions: the
second changes one text and adds a row, and one row of the first is rejected (a null text)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import enrich
from emulator.server import EmulatorProcess
from flows.cli import app
from flows.enrich import enrich as enrich_flow
from schemas.params import Kind, KindOptions
from tasks.edges import storage
from tasks.edges.mistral import TerminalApiError
from tests.flows.conftest import flow_params
from tests.seaweed import BUCKET, SeaweedS3
from tests.support import API_KEY

TEXTS = [
    "I love this product, excellent",
    "terrible service, the worst",
    "the meeting is on Tuesday",
    "you idiots, I will kill you",
    "great support and a fast refund",
    "the parcel was late and broken",
    "the order arrived on time",
    "worst app ever, it crashes",
    "thanks for the quick answer",
    None,  # rejected in the first partition
]
FIRST, SECOND = "2026-11-22", "2026-11-23"
CHANGED = 0  # its text turns negative in the second partition
ADDED = 10  # only in the second partition
LABELS = ["positive", "negative", "neutral"]
KINDS = {
    "embeddings": (Kind.embeddings, {}),
    "moderation": (Kind.moderation, {}),
    "classification": (Kind.classification, {"labels": LABELS}),
}
LINEAGE = ("model", "enriched_at", "batch_job_id", "result_source")


@dataclass(frozen=True)
class Published:
    root: Path  # the outputs' parent: one folder per kind, and _enrich/

    def table(self, name: str) -> str:
        return str(self.root / name)


def partition_input(root: Path, partition: str) -> Path:
    texts = list(TEXTS)
    ids = list(range(len(texts)))
    if partition == SECOND:
        texts[CHANGED] = "terrible product, the worst"
        texts[9] = "the invoice is wrong"
        texts.append("my parcel never arrived")
        ids.append(ADDED)
    path = root / "input" / f"{partition}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    teams = [f"team-{i % 3}" for i in ids]
    pl.DataFrame({"id": ids, "text": texts, "team": teams}).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: None, emulator: EmulatorProcess
) -> Iterator[Published]:
    """Three kinds over two partitions, published by the real flow (six runs)."""
    root = tmp_path_factory.mktemp("analysts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MISTRAL_SERVER_URL", emulator.url)
        patch.setenv("MISTRAL_API_KEY", API_KEY)
        for partition in (FIRST, SECOND):
            source = partition_input(root, partition)
            for name, (kind, options) in KINDS.items():
                params = flow_params(
                    source,
                    root / "out" / name,
                    kind=kind,
                    options=KindOptions.model_validate(options),
                    partition=partition,
                    max_rejected_fraction=0.5,
                )
                enrich_flow(params)
    yield Published(root / "out")


@pytest.fixture
def query_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "query-cache"
    monkeypatch.setenv("ENRICH_QUERY_CACHE", str(folder))
    return folder


def uploaded(published: Published, s3: SeaweedS3) -> str:
    """The three published tables (data and manifests) copied to S3 as they are."""
    base = f"s3://{BUCKET}/analysts-{uuid.uuid4().hex[:8]}"
    storage.upload_tree(published.root, base)
    return base


def cosine_reference(table: str, query: np.ndarray) -> pl.DataFrame:
    """Every row's cosine with ``query``, by brute force over the whole (small) table."""
    frame = pl.scan_parquet(f"{table}/*/*.parquet", hive_partitioning=True).collect()
    vectors = frame["embedding"].to_numpy().astype(np.float64)
    scores = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    return frame.select("id", "partition").with_columns(score=scores)


# One view over kinds -----------------------------------------------------------------------


def test_read_joins_the_kinds_on_id_and_partition(published: Published) -> None:
    view = enrich.read({name: published.table(name) for name in KINDS})
    assert isinstance(view, pl.LazyFrame)
    frame = view.collect().sort("partition", "id")

    # Input columns once, then each kind's results, then each kind's lineage, prefixed.
    assert frame.columns[:4] == ["id", "text", "team", "partition"]
    assert frame.columns.count("text") == 1 and "embedding" in frame.columns
    assert {"flagged", "label", "score_violence_and_threats"} <= set(frame.columns)
    for name in KINDS:
        assert {f"{name}_{column}" for column in LINEAGE} <= set(frame.columns)
    assert "model" not in frame.columns and "classification_model" in frame.columns
    assert frame["moderation_model"].unique().to_list() == ["mistral-moderation-latest"]

    # Nine rows in the first partition (one rejected), eleven in the second; the added row
    # only in the second.
    assert frame.group_by("partition").len().sort("partition")["len"].to_list() == [9, 11]
    assert frame.filter(pl.col("id") == ADDED)["partition"].to_list() == [SECOND]
    assert frame.null_count().select(["embedding", "flagged", "label"]).row(0) == (0, 0, 0)

    # Partitions aligned: the changed row carries each partition's own text and results.
    changed = frame.filter(pl.col("id") == CHANGED).sort("partition")
    assert changed["label"].to_list() == ["positive", "negative"]
    embeddings = pl.read_parquet(
        Path(published.table("embeddings")) / f"partition={SECOND}" / "part-0.parquet"
    ).filter(pl.col("id") == CHANGED)
    np.testing.assert_array_equal(changed["embedding"][1].to_numpy(), embeddings["embedding"][0])


def test_read_one_partition_inner_and_an_explicit_id(published: Published) -> None:
    tables = {
        "moderation": published.table("moderation"),
        "classes": published.table("classification"),
    }
    frame = enrich.read(tables, partitions=[SECOND], how="inner", id="id").collect()
    assert frame.height == 11 and set(frame["partition"]) == {SECOND}
    assert {"classes_model", "moderation_batch_job_id"} <= set(frame.columns)


def test_read_prefixes_result_columns_that_collide(published: Published) -> None:
    tables = {
        "first": published.table("classification"),
        "again": published.table("classification"),
    }
    frame = enrich.read(tables).collect()
    assert {"first_label", "again_label"} <= set(frame.columns) and "label" not in frame.columns
    assert frame.filter(pl.col("first_label") != pl.col("again_label")).height == 0


def test_read_on_s3(published: Published, s3: SeaweedS3) -> None:
    base = uploaded(published, s3)
    view = enrich.read({name: f"{base}/{name}" for name in KINDS}, partitions=[FIRST])
    frame = view.select("id", "partition", "flagged", "label").collect()
    assert frame.height == 9 and set(frame["partition"]) == {FIRST}


# Similarity search ---------------------------------------------------------------------------


def test_similar_by_id_finds_the_row_first_and_matches_brute_force(published: Published) -> None:
    table = published.table("embeddings")
    found = enrich.similar(table, id=CHANGED, k=5, columns=["text", "team"])
    assert found.columns == ["id", "score", "partition", "text", "team"]
    first = found.row(0, named=True)
    # The row of the latest partition holding the id: the changed text, not the first one.
    assert (first["id"], first["partition"], first["text"]) == (
        CHANGED,
        SECOND,
        "terrible product, the worst",
    )
    assert first["score"] == pytest.approx(1.0, abs=1e-5)

    query = (
        pl.read_parquet(f"{table}/partition={SECOND}/part-0.parquet")
        .filter(pl.col("id") == CHANGED)["embedding"][0]
        .to_numpy()
    )
    reference = cosine_reference(table, query).sort("score", descending=True).head(5)
    np.testing.assert_allclose(found["score"], reference["score"], atol=1e-5)
    assert found["score"].is_sorted(descending=True)

    # A row whose text is the same in both partitions: both rows score 1.0, in table order.
    same = enrich.similar(table, id=3, k=2)
    assert same.select("id", "partition").rows() == [(3, FIRST), (3, SECOND)]
    assert same["score"].to_list() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_similar_by_text_embeds_once_then_reads_the_cache(
    published: Published,
    mistral: EmulatorProcess,
    query_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = published.table("embeddings")
    found = enrich.similar(table, text=TEXTS[5], k=3, columns=["text"])
    assert found["text"][0] == TEXTS[5] and found["score"][0] == pytest.approx(1.0, abs=1e-5)
    entries = list(query_cache.glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["model"] == "mistral-embed"

    # The same question with a key the service refuses: the cached vector answers it, a new
    # text cannot be embedded.
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-refused")
    again = enrich.similar(table, text=TEXTS[5], k=3, columns=["text"])
    assert again.equals(found)
    with pytest.raises(TerminalApiError, match=r"Embedding the query text.*HTTP 401"):
        enrich.similar(table, text="a text never asked", k=3)


def test_similar_where_and_partitions(
    published: Published, mistral: EmulatorProcess, query_cache: Path
) -> None:
    table = published.table("embeddings")
    found = enrich.similar(
        table, text="late parcel", k=20, where="team = 'team-1' AND id < 9", columns=["team"]
    )
    assert found.height == 6  # ids 1, 4, 7 in both partitions
    assert set(found["team"]) == {"team-1"} and set(found["id"]) == {1, 4, 7}
    only = enrich.similar(table, id=ADDED, k=30, partitions=[SECOND], where="partition > '2026'")
    assert set(only["partition"]) == {SECOND} and only.height == 11


def test_similar_warns_when_the_table_was_embedded_by_another_version(
    tmp_path: Path, published: Published, mistral: EmulatorProcess, query_cache: Path
) -> None:
    copy = tmp_path / "out"
    storage.upload_tree(published.root, str(copy))  # a local copy whose manifests we edit
    for manifest in (copy / "_enrich" / "embeddings" / "published").rglob("_manifest.json"):
        record = json.loads(manifest.read_text())
        record["model_versions"] = {"mistral-embed-2312": record["counts"]["published_rows"]}
        manifest.write_text(json.dumps(record))
    with pytest.warns(
        enrich.ModelVersionWarning, match="mistral-embed-2312 .20 rows.*not comparable"
    ):
        enrich.similar(str(copy / "embeddings"), text=TEXTS[0], k=1)


def test_similar_on_s3(
    published: Published, s3: SeaweedS3, mistral: EmulatorProcess, query_cache: Path
) -> None:
    table = f"{uploaded(published, s3)}/embeddings"
    local = enrich.similar(published.table("embeddings"), text=TEXTS[1], k=4, columns=["text"])
    remote = enrich.similar(table, text=TEXTS[1], k=4, columns=["text"])
    assert remote.equals(local)
    by_id = enrich.similar(table, id=ADDED, k=2)
    assert by_id["id"][0] == ADDED and by_id["partition"][0] == SECOND


@pytest.mark.parametrize(
    ("table", "question", "error", "message"),
    [
        ("moderation", {"id": 1}, enrich.NotEmbeddingsError, "is a moderation table"),
        ("embeddings", {"id": 404}, enrich.UnknownIdError, "no row has id 404"),
        ("embeddings", {"id": "x"}, enrich.UnknownIdError, "'x' cannot be an id"),
        ("embeddings", {"id": 1, "text": "a"}, enrich.BadQueryError, "not both"),
        ("embeddings", {}, enrich.BadQueryError, "not neither"),
        ("embeddings", {"id": 1, "where": "team ="}, enrich.BadQueryError, "is not SQL"),
        (
            "embeddings",
            {"id": 1, "where": "colour = 'red'"},
            enrich.BadQueryError,
            "no column 'colour'",
        ),
        ("embeddings", {"id": 1, "where": "team"}, enrich.BadQueryError, "is not a condition"),
        ("embeddings", {"id": 1, "columns": ["nope"]}, enrich.BadQueryError, "no column 'nope'"),
        (
            "embeddings",
            {"id": 1, "partitions": ["2020-01-01"]},
            enrich.UnknownPartitionError,
            "2026-11-22, 2026-11-23",
        ),
        ("missing", {"id": 1}, enrich.TableNotFoundError, "no published table at"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_similar_refuses_what_it_cannot_answer(
    published: Published,
    table: str,
    question: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        enrich.similar(published.table(table), **question)  # type: ignore[arg-type]


# Describe ------------------------------------------------------------------------------------


def test_describe_tells_columns_counts_models_and_runs(published: Published) -> None:
    described = enrich.describe(published.table("moderation"))
    assert described.kind == "moderation"
    names = [c.name for c in described.columns]
    assert names[:3] == ["id", "text", "team"] and "flagged" in names
    columns = {c.name: c for c in described.columns}
    assert columns["flagged"].type == "bool"
    assert "flagged at least one category" in (columns["flagged"].description or "")
    assert (columns["team"].description or "").startswith("input column")
    assert [p.partition for p in described.partitions] == [FIRST, SECOND]
    assert [(p.published_rows, p.rejected_rows) for p in described.partitions] == [(9, 1), (11, 0)]
    assert described.partitions[0].rejected_by_reason == {"null_text": 1}
    assert all(p.success and p.run_id and p.published_at and p.jobs for p in described.partitions)
    assert list(described.models) == ["mistral-moderation-latest"]
    assert sum(described.models["mistral-moderation-latest"].values()) == 20

    text = str(described)
    for expected in ("Columns", "Partitions", "Models", "Runs", FIRST, "null_text 1", "flagged"):
        assert expected in text


def test_describe_on_s3_without_success_marker(published: Published, s3: SeaweedS3) -> None:
    base = uploaded(published, s3)
    storage.remove(f"{base}/embeddings/partition={FIRST}/_SUCCESS")
    described = enrich.describe(f"{base}/embeddings")
    assert [p.success for p in described.partitions] == [False, True]
    assert described.published_rows == 20 and described.kind == "embeddings"


# The commands --------------------------------------------------------------------------------


def test_similar_and_describe_commands(published: Published) -> None:
    runner = CliRunner()
    table = published.table("embeddings")
    result = runner.invoke(
        app, ["similar", "--table", table, "--id", "3", "-k", "3", "--columns", "text,team"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "score" in result.output and str(TEXTS[3]) in result.output
    assert any(line.lstrip("│ ").startswith("3 ") and "1.0" in line for line in lines)

    described = runner.invoke(app, ["describe", "--table", published.table("classification")])
    assert described.exit_code == 0, described.output
    assert "label" in described.output and "mistral-small-latest" in described.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--id", "1", "--text", "a"], "not both"),
        ([], "not neither"),
        (["--id", "404"], "no row has id '404'"),
        (["--id", "1", "--where", "team ="], "is not SQL"),
    ],
)
def test_similar_command_explains_bad_input(
    published: Published, argv: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["similar", "--table", published.table("embeddings"), *argv])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_commands_on_a_table_that_is_not_there_or_not_embeddings(published: Published) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["describe", "--table", published.table("nothing")])
    assert missing.exit_code == 1 and "no published table at" in missing.output
    moderation = runner.invoke(
        app, ["similar", "--table", published.table("moderation"), "--id", "1"]
    )
    assert moderation.exit_code == 1 and "is a moderation table" in moderation.output
