"""Result insights: what each kind computes from a small published frame, how the generic code
renders it (markdown tables, one PNG), and where the PNG goes (beside the manifest)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import kinds
from kinds.insight import NULL_VALUE, TOP_VALUES, Chart, Insight, value_counts
from schemas.params import EnrichParams, Kind, KindOptions
from tasks.core.insight import MAX_CHARTS, charts, markdown_table, render_png, to_markdown
from tasks.core.layout import Layout
from tasks.insight import PublishedFile, describe_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FrameRows:
    """A published partition held in memory, handed out two rows at a time."""

    def __init__(self, frame: pl.DataFrame, batch_rows: int = 2) -> None:
        self.frame = frame
        self.batch_rows = batch_rows
        self.read: list[list[str]] = []

    def scan(self) -> pl.LazyFrame:
        return self.frame.lazy()

    def batches(self, columns: list[str], limit: int) -> Iterator[pl.DataFrame]:
        self.read.append(columns)
        yield from self.frame.select(columns).head(limit).iter_slices(self.batch_rows)


def params(kind: Kind, output: str = "out/comments", **options: Any) -> EnrichParams:
    return EnrichParams(
        input="in",
        id_column="id",
        text_column="text",
        output=output,
        kind=kind,
        options=KindOptions(**options),
    )


def insight_of(kind: Kind, frame: pl.DataFrame, **options: Any) -> list[Insight]:
    return kinds.get(kind).insight(FrameRows(frame), params(kind, **options))


def rows_of(table: pl.DataFrame) -> dict[str, int]:
    return dict(zip(table["value"], table["rows"], strict=True))


def test_value_counts_list_the_most_common_values_then_the_rest_together() -> None:
    values = [f"v{i:02d}" for i in range(TOP_VALUES + 5) for _ in range(30 - i)] + [None]
    counts = value_counts(pl.DataFrame({"x": values}).lazy(), "x")
    assert counts.columns == ["value", "rows", "share"]
    assert counts["value"].to_list()[:2] == ["v00", "v01"]  # most common first
    assert counts["value"][-1] == "(other 6 values)"  # 5 rarer values and the null
    assert counts["rows"].sum() == len(values)
    assert counts["share"][0] == round(100 * 30 / len(values), 1)


def test_classification_counts_rows_per_label_including_labels_never_answered() -> None:
    frame = pl.DataFrame({"id": range(5), "label": ["yes", "yes", "no", "yes", None]})
    [found] = insight_of(Kind.classification, frame, labels=["yes", "no", "maybe"])
    assert found.title == "Rows per label"
    assert rows_of(found.table) == {"yes": 3, "no": 1, NULL_VALUE: 1, "maybe": 0}
    assert found.table["share"].to_list() == [60.0, 20.0, 20.0, 0.0]
    assert found.chart is not None and found.chart.labels == (
        "yes",
        "(null)",
        "no",
        "maybe",
    )  # ties by value
    assert found.chart.counts == (3, 1, 1, 0)


def test_classifier_counts_labels_per_target_and_ignores_input_columns_named_like_one() -> None:
    frame = pl.DataFrame(
        {
            "id": range(4),
            "topic_label": ["a", "b", "a", "a"],
            "topic_score_a": [0.9, 0.2, 0.8, 0.7],
            "topic_score_b": [0.1, 0.8, 0.2, 0.3],
            "tone_label": ["calm", "calm", "angry", "calm"],
            "tone_score_calm": [0.6, 0.7, 0.1, 0.9],
            "shelf_label": ["x", "y", "z", "w"],  # an input column, not a target
        }
    )
    found = insight_of(Kind.classifier, frame, classifier_model="ft:classifier:x")
    assert [f.title for f in found] == [
        "Rows per label of target topic",
        "Rows per label of target tone",
    ]
    assert rows_of(found[0].table) == {"a": 3, "b": 1}
    assert rows_of(found[1].table) == {"calm": 3, "angry": 1}
    assert all(f.chart is not None for f in found)


def test_extract_counts_values_per_field_with_list_items_and_enum_values_never_seen() -> None:
    schema = {
        "type": "object",
        "properties": {
            "channel": {"enum": ["email", "phone", "chat"]},
            "size": {"enum": [1, 2.5]},  # a number enum: the column holds 1.0
            "urgent": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    frame = pl.DataFrame(
        {
            "id": range(3),
            "channel": ["email", "email", "phone"],
            "size": [1.0, 1.0, None],
            "urgent": [True, False, True],
            "tags": [["a", "b"], ["a"], []],
        }
    )
    found = {f.title: f for f in insight_of(Kind.extract, frame, json_schema=schema)}
    assert list(found) == [
        "Values of channel",
        "Values of size",
        "Values of urgent",
        "Values of tags",
    ]
    assert rows_of(found["Values of channel"].table) == {"email": 2, "phone": 1, "chat": 0}
    assert rows_of(found["Values of size"].table) == {"1.0": 2, NULL_VALUE: 1, "2.5": 0}
    assert rows_of(found["Values of urgent"].table) == {"true": 2, "false": 1}
    tags = found["Values of tags"]
    assert rows_of(tags.table) == {"a": 2, "b": 1} and "each item" in tags.note
    # Enums are charted; free values and booleans are tables only.
    assert [t for t, f in found.items() if f.chart] == ["Values of channel", "Values of size"]


def test_moderation_gives_flagged_rate_and_score_quantiles_per_category() -> None:
    frame = pl.DataFrame(
        {
            "id": range(4),
            "score_note": [0.1, 0.2, 0.3, 0.4],  # an input column: no category_note beside it
            "flagged": [True, False, False, True],
            "category_hate": [True, False, False, False],
            "category_violence": [False, False, False, True],
            "score_hate": [0.9, 0.1, 0.0, 0.2],
            "score_violence": [0.0, 0.3, 0.1, 0.7],
        }
    )
    for kind in (Kind.moderation, Kind.chat_moderation):
        [found] = insight_of(kind, frame)
        table = {row["category"]: row for row in found.table.iter_rows(named=True)}
        assert list(table) == ["(any category)", "hate", "violence"]
        assert table["(any category)"]["flagged rows"] == 2
        assert table["(any category)"]["flagged %"] == 50.0
        assert table["(any category)"]["score max"] == 0.9
        assert table["hate"]["flagged %"] == 25.0 and table["hate"]["score max"] == 0.9
        assert table["violence"]["score p50"] in (0.1, 0.3)  # the nearest of the middle two
        assert set(found.table.columns) >= {"score p50", "score p90", "score p99"}
        chart = found.chart
        assert chart is not None and len(chart.edges) == len(chart.counts) + 1
        assert sum(chart.counts) == 4  # each row's highest score: 0.9, 0.3, 0.1, 0.7
        assert chart.counts[18] == 1 and chart.counts[14] == 1


def unit(*values: float) -> list[float]:
    vector = np.array(values, dtype=np.float64)
    return (vector / np.linalg.norm(vector)).tolist()


def test_embeddings_give_dimension_norms_and_each_sample_rows_nearest_neighbours() -> None:
    vectors = [
        unit(1, 0, 0),
        unit(0, 1, 0),
        unit(0.95, 0.05, 0),  # nearest to row 0
        unit(0, 0, 1),
        unit(0.1, 0.9, 0.1),  # nearest to row 1, in another batch
        unit(0, 0.1, 1),
        unit(0.9, 0, 0.2),
    ]
    long_text = "word " * 40
    frame = pl.DataFrame(
        {
            "id": [f"c{i}" for i in range(len(vectors))],
            "text": [f"text {i}\nsecond line" for i in range(6)] + [long_text],
            "embedding": pl.Series(vectors, dtype=pl.List(pl.Float32)),
        }
    )
    rows = FrameRows(frame, batch_rows=3)  # samples: rows 0, 1 and 2 of the first batch
    summary, neighbours = kinds.get(Kind.embeddings).insight(rows, params(Kind.embeddings))
    assert rows.read == [["id", "text", "embedding"]]  # the columns it needs, in batches
    assert summary.table["dimension"][0] == 3 and summary.table["rows read"][0] == 7
    assert summary.table["norm min"][0] == pytest.approx(1, abs=1e-6)
    assert summary.note == "over all 7 rows"
    assert summary.chart is not None and sum(summary.chart.counts) == 7

    table = neighbours.table.with_columns(pl.col("sample id").forward_fill())
    assert neighbours.table["sample id"].to_list()[:3] == ["c0", None, None]
    assert table.height == 9 and table["rank"].to_list() == [1, 2, 3] * 3
    first = table.filter(pl.col("sample id") == "c0")
    assert first["neighbour id"].to_list() == ["c2", "c6", "c4"]
    assert "c0" not in first["neighbour id"].to_list()  # a row is not its own neighbour
    assert first["sample text"][0] == "text 0 second line"  # one line
    second = table.filter(pl.col("sample id") == "c1")
    assert second["neighbour id"][0] == "c4" and second["cosine"][0] > 0.98
    shown = table.filter(pl.col("neighbour id") == "c6")["neighbour text"][0]
    assert len(shown) == 80 and shown.endswith("…")
    assert (table["cosine"].diff().drop_nulls().filter(table["rank"][1:] > 1) <= 0).all()


def test_embeddings_read_at_most_the_capped_rows_and_say_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kinds import embeddings

    monkeypatch.setattr(embeddings, "SCANNED_ROWS", 4)
    frame = pl.DataFrame(
        {
            "id": range(10),
            "text": [f"t{i}" for i in range(10)],
            "embedding": pl.Series(
                [unit(1, i, 0) for i in range(10)], dtype=pl.Array(pl.Float32, 3)
            ),
        }
    )
    summary, _ = kinds.get(Kind.embeddings).insight(FrameRows(frame), params(Kind.embeddings))
    assert summary.table["rows read"][0] == 4
    assert summary.note == "over the first 4 rows of the partition"


def test_the_png_is_one_deterministic_picture_of_at_most_four_charts() -> None:
    bar = Chart("Rows per label", "value", (3, 1), labels=("yes", "no"))
    steps = Chart("Scores", "score", (1, 2, 0), edges=(0.0, 0.1, 0.2, 0.3))
    png = render_png([bar, steps])
    assert png is not None and png.startswith(PNG_SIGNATURE)
    assert render_png([bar, steps]) == png
    assert render_png([]) is None
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (640, 720)
    many = [Insight(str(i), pl.DataFrame(), chart=bar) for i in range(MAX_CHARTS + 2)]
    assert len(charts(many)) == MAX_CHARTS


def test_markdown_shows_every_table_escaped_and_the_png_inline() -> None:
    table = pl.DataFrame({"value": ["a|b", "<x>\nnext"], "rows": [1234, 5], "share": [0.5, None]})
    found = [Insight("Values of *x*", table, note="a sample", chart=Chart("c", "v", (1,), ("a",)))]
    assert markdown_table(table) == [
        "| value | rows | share |",
        "|---|---|---|",
        "| a\\|b | 1,234 | 0.5 |",
        "| \\<x\\> next | 5 |  |",
    ]
    markdown = to_markdown("Results", found, b"PNG", "/w/_insight.png")
    assert "## Values of \\*x\\*" in markdown and "_a sample_" in markdown
    assert f"(data:image/png;base64,{base64.b64encode(b'PNG').decode()})" in markdown
    assert "`/w/_insight.png`" in markdown
    assert "no published rows" in to_markdown("Results", [])


def test_the_png_is_written_beside_the_manifest_never_in_the_table(tmp_path: Path) -> None:
    run = params(Kind.classification, output=str(tmp_path / "out"), labels=["yes", "no"])
    layout = Layout.of(run)
    data = Path(layout.data_file("p1"))
    data.parent.mkdir(parents=True)
    pl.DataFrame(
        {"id": range(3), "text": ["a", "b", "c"], "label": ["yes", "no", "yes"]}
    ).write_parquet(data)

    markdown, image = describe_results(run, "p1", str(data))
    assert image is not None and Path(image).parent == Path(layout.manifest_file("p1")).parent
    assert Path(image).read_bytes().startswith(PNG_SIGNATURE)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.suffix == ".png"]
    assert "| yes | 2 | 66.7 |" in markdown and "data:image/png;base64," in markdown

    markdown, image = describe_results(run, "p1", None)  # everything rejected: nothing to chart
    assert image is None and not Path(layout.insight_image("p1")).exists()
    assert "no published rows" in markdown


def test_a_published_file_is_read_in_batches_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "part-0.parquet"
    pl.DataFrame({"id": range(10_000), "text": ["x"] * 10_000}).write_parquet(
        path, row_group_size=3_000
    )
    published = PublishedFile(str(path))
    read = list(published.batches(["id"], 9_000))
    assert [b.columns for b in read] == [["id"]] * len(read)
    assert max(b.height for b in read) <= 4_096 and sum(b.height for b in read) == 9_000
    assert pl.concat(read)["id"].to_list() == list(range(9_000))
    assert published.scan().select(pl.len()).collect().item() == 10_000
