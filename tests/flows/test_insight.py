"""The results artifact through the real flow: read back from the Prefect API by its key, with
the kind's tables, the chart inline, and the PNG beside the partition's manifest."""

from __future__ import annotations

import asyncio
from pathlib import Path

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tasks.core.keys import artifact_key
from tasks.core.layout import Layout
from tests.flows.conftest import flow_params as params
from tests.flows.conftest import write_dataset

TEXTS = [
    "I love this product, excellent",
    "terrible service, the worst",
    "the meeting is on Tuesday",
    "you idiots, I will kill you",
]


async def latest_artifact(key: str) -> tuple[str, str | None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key}"
    return str(found[0].data), found[0].description


def test_the_results_artifact_shows_the_kinds_tables_and_chart(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    source = write_dataset(tmp_path / "in.parquet", [f"{TEXTS[i % 4]} #{i}" for i in range(40)])
    run = params(source, tmp_path / "comments")
    summary = enrich(run)
    assert summary.enriched_rows == 40 and "insight" in summary.step_seconds

    markdown, description = asyncio.run(latest_artifact(artifact_key(run, "results")))
    assert artifact_key(run, "results") == "enrich-comments-embeddings-results"
    assert description is not None and "partition 2026-11-22" in description
    assert "## Vectors" in markdown and "| 40 | 1,024 |" in markdown  # rows read, dimension
    assert "## Nearest neighbours of 3 sample rows" in markdown
    sample = next(line for line in markdown.splitlines() if line.startswith("| ") and "#" in line)
    assert any(text in sample for text in TEXTS)  # ids and texts of the published rows
    assert "![L2 norm of each vector](data:image/png;base64," in markdown

    image = Path(Layout.of(run).insight_image("2026-11-22"))
    assert image.parent == Path(Layout.of(run).manifest_file("2026-11-22")).parent
    assert image.read_bytes().startswith(b"\x89PNG") and f"`{image}`" in markdown
