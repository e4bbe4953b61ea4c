"""Each expectation catches its fault (plain functions: GX in-process, no Prefect)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

import kinds
from schemas.params import EnrichParams, Kind, KindOptions
from tasks.core import checks
from tasks.core.checks import derive, rows_frame, validate


def params(kind: Kind, **options: Any) -> EnrichParams:
    return EnrichParams(
        input="x",
        id_column="doc",
        text_column="t",
        output="y",
        kind=kind,
        options=KindOptions(**options),
    )


def unit_vectors(n: int, dim: int = 1024) -> np.ndarray:
    v = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def check(kind: Kind, published: pl.DataFrame, **options: Any) -> list[str]:
    run = params(kind, **options)
    derived = derive(run, published)
    plugin = kinds.get(kind)
    result = validate(
        derived, plugin.suite, plugin.suite_parameters(run, published.columns, derived)
    )
    return [f"{f.expectation}:{f.column}:{f.example_ids}" for f in result.failures]


def embeddings_frame(vectors: list[Any], as_array: bool = True) -> pl.DataFrame:
    frame = pl.DataFrame({"doc": [f"d{i}" for i in range(len(vectors))], "embedding": vectors})
    if as_array:
        return frame.with_columns(pl.col("embedding").cast(pl.Array(pl.Float32, 1024)))
    return frame.with_columns(pl.col("embedding").cast(pl.List(pl.Float32)))


def test_good_embeddings_pass() -> None:
    assert check(Kind.embeddings, embeddings_frame(list(unit_vectors(50)))) == []


def test_wrong_length_vectors_fail_with_their_ids() -> None:
    vectors: list[Any] = [list(v) for v in unit_vectors(20)]
    vectors[3] = vectors[3][:1000]
    failures = check(Kind.embeddings, embeddings_frame(vectors, as_array=False))
    assert any(
        f.startswith("expect_column_values_to_be_between:embedding_length:['d3']") for f in failures
    )


def test_non_finite_values_fail() -> None:
    vectors = unit_vectors(20)
    vectors[5, 7] = np.nan
    failures = check(Kind.embeddings, embeddings_frame(list(vectors)))
    assert "expect_column_values_to_be_between:embedding_nonfinite:['d5']" in failures


def test_norm_out_of_tolerance_fails() -> None:
    vectors = unit_vectors(20)
    vectors[2] *= 1.5
    failures = check(Kind.embeddings, embeddings_frame(list(vectors)))
    assert failures == ["expect_column_values_to_be_between:embedding_norm:['d2']"]


def test_codestral_dimension_follows_the_option() -> None:
    frame = pl.DataFrame({"doc": ["a"], "embedding": [list(unit_vectors(1, 256)[0])]})
    assert check(Kind.embeddings, frame, model="codestral-embed", output_dimension=256) == []
    assert check(Kind.embeddings, frame, model="codestral-embed") != []  # 1536 expected by default


def moderation_frame(**overrides: list[Any]) -> pl.DataFrame:
    base = {
        "doc": ["a", "b", "c"],
        "flagged": [True, False, False],
        "category_violence": [True, False, False],
        "category_hate": [False, False, False],
        "score_violence": [0.9, 0.1, 0.2],
        "score_hate": [0.1, 0.0, 0.3],
    }
    return pl.DataFrame(base | overrides)


def test_moderation_checks() -> None:
    assert check(Kind.moderation, moderation_frame()) == []
    assert check(Kind.moderation, moderation_frame(score_hate=[0.1, 1.7, 0.3])) == [
        "expect_column_values_to_be_between:score_max:['b']"
    ]
    assert check(Kind.moderation, moderation_frame(score_hate=[0.1, -0.1, 0.3])) == [
        "expect_column_values_to_be_between:score_min:['b']"
    ]
    assert check(Kind.chat_moderation, moderation_frame(flagged=[False, False, True])) == [
        "expect_column_values_to_be_in_set:flagged_consistent:['a', 'c']"
    ]


def test_classification_labels_must_be_in_the_set() -> None:
    frame = pl.DataFrame({"doc": ["a", "b", "c"], "label": ["spam", "ham", "eggs"]})
    assert check(Kind.classification, frame, labels=["spam", "ham"]) == [
        "expect_column_values_to_be_in_set:label:['c']"
    ]
    assert check(Kind.classification, frame, labels=["spam", "ham", "eggs"]) == []


def test_classifier_scores_in_range() -> None:
    frame = pl.DataFrame(
        {
            "doc": ["a", "b"],
            "sentiment_label": ["pos", "neg"],
            "sentiment_score_pos": [0.9, 0.2],
            "sentiment_score_neg": [0.1, 1.8],
        }
    )
    assert check(Kind.classifier, frame, classifier_model="ft:classifier:x") == [
        "expect_column_values_to_be_between:score_max:['b']"
    ]


@pytest.mark.parametrize(
    ("published", "rejected", "input_rows", "expected"),
    [
        (["a", "b", "c"], [], 3, []),
        (["a", "b"], [], 3, ["expect_table_row_count_to_equal"]),  # a row vanished
        (["a", "b", "b"], [], 3, ["expect_column_values_to_be_unique"]),
        (["a", None, "c"], [], 3, ["expect_column_values_to_not_be_null"]),
        (["a", "b"], ["c"], 3, ["expect_column_mean_to_be_between"]),  # a third rejected
    ],
)
def test_rows_suite(
    published: list[Any], rejected: list[Any], input_rows: int, expected: list[str]
) -> None:
    frame = rows_frame(pl.Series(published, dtype=pl.String), pl.Series(rejected, dtype=pl.String))
    result = validate(frame, "rows", {"input_rows": input_rows, "max_rejected_fraction": 0.01})
    assert [f.expectation for f in result.failures] == expected
    assert result.success is (not expected)


def test_classifier_rows_need_every_target_label() -> None:
    frame = pl.DataFrame(
        {
            "doc": ["a", "b"],
            "sentiment_label": ["pos", None],
            "sentiment_score_pos": [0.9, 0.2],
            "toxicity_label": ["clean", "clean"],
            "toxicity_score_clean": [0.7, 0.6],
        }
    )
    assert check(Kind.classifier, frame, classifier_model="ft:classifier:x") == [
        "expect_column_values_to_be_between:labels_present:['b']"
    ]


@pytest.mark.parametrize(
    ("expectation", "kwargs", "unexpected", "observed", "said"),
    [
        (
            "expect_column_mean_to_be_between",
            {"column": "_rejected", "min_value": 0, "max_value": "max_rejected_fraction = 0"},
            None,
            0.002,
            "0.2 % of rows rejected, more than max_rejected_fraction = 0",
        ),
        (
            "expect_column_values_to_be_between",
            {
                "column": "embedding_length",
                "min_value": "dimension = 8",
                "max_value": "dimension = 8",
            },
            3,
            None,
            "3 row(s) whose embedding_length is not dimension = 8",
        ),
        (
            "expect_column_values_to_be_between",
            {"column": "score_max", "min_value": 0, "max_value": 1},
            1200,
            None,
            "1,200 row(s) whose score_max is outside [0, 1]",
        ),
        (
            "expect_table_row_count_to_equal",
            {"value": "input_rows = 3"},
            None,
            2,
            "2 rows accounted for where the input has input_rows = 3",
        ),
        ("expect_something_new", {"column": "x"}, 1, None, "expect_something_new on x"),
    ],
)
def test_failed_checks_are_said_in_plain_words(
    expectation: str, kwargs: dict[str, object], unexpected: int | None, observed: object, said: str
) -> None:
    assert checks.in_plain_words(expectation, kwargs, unexpected, observed) == said


def test_a_failed_rows_check_names_the_limit_it_broke() -> None:
    frame = checks.rows_frame(pl.Series(["a", "b"]), pl.Series(["c"]))
    result = checks.validate(frame, "rows", {"input_rows": 3, "max_rejected_fraction": 0.25})
    [failure] = result.failures
    assert failure.plain == "33.3 % of rows rejected, more than max_rejected_fraction = 0.25"
    assert failure.describe().startswith("33.3 % of rows rejected")
