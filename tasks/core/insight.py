"""The results artifact as a person reads it: a kind's insights (``kinds.insight``) as markdown
tables, and their charts as one PNG. Whatever the kind returns is rendered the same way; the
bytes go back to the caller, which stores them."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl
    from matplotlib.axes import Axes

    from kinds.insight import Chart, Insight

MAX_CHARTS = 4  # one PNG of at most 4 charts, 640 x 360 pixels each
SHOWN_LABEL = 18  # characters of a bar's label
MARKDOWN_SPECIAL = "\\`*_[]<>|#"


def charts(insights: list[Insight]) -> list[Chart]:
    """The charts drawn: the first ``MAX_CHARTS`` of the insights'."""
    return [i.chart for i in insights if i.chart is not None][:MAX_CHARTS]


def render_png(drawn: list[Chart]) -> bytes | None:
    """One PNG (640 pixels wide, 360 high per chart) of ``drawn``; None without a chart. The same
    charts give the same bytes."""
    if not drawn:
        return None
    # The Agg canvas on a figure of its own, not pyplot's global figures: tasks run in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6 * len(drawn)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for axes, chart in zip(figure.subplots(len(drawn), 1, squeeze=False)[:, 0], drawn, strict=True):
        _draw(axes, chart)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp
    return buffer.getvalue()


def _draw(axes: Axes, chart: Chart) -> None:
    from matplotlib.ticker import MaxNLocator

    if chart.edges:
        axes.stairs(chart.counts, chart.edges, fill=True, color="#4c72b0")
        axes.ticklabel_format(axis="x", useOffset=False)  # 0.9999999, not "1e-7+1" offsets
    else:
        positions = range(len(chart.counts))
        axes.bar(positions, chart.counts, color="#4c72b0")
        labels = [_shortened(label, SHOWN_LABEL) for label in chart.labels]
        slanted = len(labels) > 4 or any(len(label) > 8 for label in labels)
        axes.set_xticks(
            positions, labels, rotation=30 if slanted else 0, ha="right" if slanted else "center"
        )
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(chart.title)
    axes.set_xlabel(chart.x_label)
    axes.set_ylabel("rows")


def to_markdown(
    heading: str, insights: list[Insight], png: bytes | None = None, png_uri: str | None = None
) -> str:
    """A section per insight (title, note, table), then the PNG inline (a data URI, which the
    Prefect UI shows) and where it is stored."""
    lines = [f"# {heading}", ""]
    if not insights:
        lines += ["Nothing to show: the partition has no published rows.", ""]
    for found in insights:
        lines += [f"## {_escaped(found.title)}", ""]
        if found.note:
            lines += [f"_{_escaped(found.note)}_", ""]
        lines += [*markdown_table(found.table), ""]
    if png is not None:
        drawn = charts(insights)
        titles = ", ".join(c.title for c in drawn)
        lines += [
            "## Charts",
            "",
            f"![{_escaped(titles)}](data:image/png;base64,{base64.b64encode(png).decode()})",
            "",
        ]
        if png_uri is not None:
            lines += [f"The PNG is stored at `{png_uri}`.", ""]
    return "\n".join(lines)


def markdown_table(table: pl.DataFrame) -> list[str]:
    """The lines of a markdown table of ``table``, every cell escaped."""
    header = "| " + " | ".join(_escaped(c) for c in table.columns) + " |"
    rule = "|" + "---|" * table.width
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.iter_rows()]
    return [header, rule, *body]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:,}"
    return _escaped(str(value))


def _escaped(text: str) -> str:
    """Text that stays text in a markdown table: one line, special characters escaped."""
    flat = " ".join(text.split())
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in flat)


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
