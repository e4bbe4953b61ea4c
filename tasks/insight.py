"""The results artifact: what a published partition's results look like, so a person can judge
them at a glance. The kind says what to compute (``Kind.insight``); this renders whatever it
returns, stores the charts as a PNG beside the manifest and shows everything in Prefect."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pyarrow.parquet as pq
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

import kinds
from schemas.params import EnrichParams
from schemas.refs import PublishRef
from tasks.core.insight import charts, render_png, to_markdown
from tasks.core.keys import artifact_key, table_name
from tasks.core.layout import Layout
from tasks.edges import storage

BATCH_ROWS = 4_096  # vectors read at a time: 16 MB of 1024-dimension float32


class PublishedFile:
    """A published data file as a kind's insight reads it (``kinds.insight.PublishedRows``):
    lazily, or a few thousand rows at a time, never whole."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def scan(self) -> pl.LazyFrame:
        return storage.scan_parquet(self.uri)

    def batches(self, columns: list[str], limit: int) -> Iterator[pl.DataFrame]:
        """Row group by row group: one reader over the whole file buffers several row groups
        (527 MB against 131 MB for 20,000-row groups of 1024-dimension vectors)."""
        fs, path = storage.arrow_filesystem(self.uri)
        left = limit
        with pq.ParquetFile(path, filesystem=fs) as file:
            for group in range(file.num_row_groups):
                for batch in file.iter_batches(BATCH_ROWS, [group], columns):
                    if left <= 0:
                        return
                    frame = pl.from_arrow(batch.slice(0, left))
                    assert isinstance(frame, pl.DataFrame)
                    left -= frame.height
                    yield frame


def describe_results(
    params: EnrichParams, partition: str, data_uri: str | None
) -> tuple[str, str | None]:
    """The results artifact's markdown, and where the PNG of its charts now is (beside the
    partition's manifest; None, and any older PNG removed, when there is no chart)."""
    found = kinds.kind_of(params).insight(PublishedFile(data_uri), params) if data_uri else []
    png = render_png(charts(found))
    image_uri = Layout.of(params).insight_image(partition)
    if png is None:
        storage.remove(image_uri)  # a chart of an earlier publish would describe other rows
    else:
        storage.write_bytes(image_uri, png)
    stored = image_uri if png is not None else None
    heading = f"{params.kind.value} results of {table_name(params.output)}, partition {partition}"
    return to_markdown(heading, found, png, stored), stored


@task(name="insight")
def insight(params: EnrichParams, partition: str, published: PublishRef) -> str | None:
    """Publish the results artifact of the partition; returns its PNG's URI (None: no chart)."""
    markdown, image_uri = describe_results(params, partition, published.data_uri)
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(params, "results"),
        description=f"What the {params.kind.value} results of {params.output} partition "
        f"{partition} look like: counts, rates and samples of the published rows",
    )
    get_run_logger().info("Results artifact of partition %s; charts: %s", partition, image_uri)
    return image_uri
