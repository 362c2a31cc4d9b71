"""The token-length histogram of a data report, with ``max_seq_len`` drawn where it cuts.

Drawn from the report's bins alone (counts per length range), never from a sample: the
chart says how long the samples are, not what they hold. Bins whose every length
instructlab-training drops (at or over ``max_seq_len``, or under its 20-token minimum) are
drawn in another colour, so the cost of a ``max_seq_len`` reads at a glance. The x axis
reaches past ``max_seq_len`` when no sample does: the line is always on the chart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from airflow_provider_sft.core.training.data_report import DataReport

KEPT_COLOUR = "#1f77b4"
DROPPED_COLOUR = "#e07b39"
LIMIT_COLOUR = "#c53030"


def build_data_figure(report: DataReport, *, title: str = "Samples by length") -> go.Figure:
    import plotly.graph_objects as go

    edges, counts = report.histogram.edges, report.histogram.counts
    bins = [(edges[i], edges[i + 1], count) for i, count in enumerate(counts)]
    dropped = [(lo, hi, n) for lo, hi, n in bins if lo >= report.max_seq_len or hi <= report.min_seq_len]
    kept = [b for b in bins if b not in dropped]
    figure = go.Figure()
    for name, chosen, colour in (("kept", kept, KEPT_COLOUR), ("dropped", dropped, DROPPED_COLOUR)):
        if name == "kept" or any(n for _, _, n in chosen):  # no "dropped" legend over empty bins
            figure.add_trace(
                go.Bar(
                    x=[(lo + hi) / 2 for lo, hi, _ in chosen],
                    width=[hi - lo for lo, hi, _ in chosen],
                    y=[n for _, _, n in chosen],
                    customdata=[[lo, hi - 1] for lo, hi, _ in chosen],
                    name=name,
                    marker={"color": colour, "line": {"width": 0}},
                    hovertemplate="%{customdata[0]} to %{customdata[1]} tokens: %{y} samples<extra>"
                    + name
                    + "</extra>",
                )
            )
    figure.add_vline(x=report.max_seq_len, line={"color": LIMIT_COLOUR, "dash": "dash", "width": 2})
    figure.add_annotation(  # above the plot, where no bar can hide it
        x=report.max_seq_len,
        y=1,
        yref="paper",
        yanchor="bottom",
        xanchor="right",
        showarrow=False,
        text=f"max_seq_len {report.max_seq_len}",
        font={"color": LIMIT_COLOUR},
    )
    right = max(edges[-1] if edges else 0, report.max_seq_len) * 1.05
    figure.update_layout(
        title=title,
        template="plotly_white",
        height=360,
        margin={"t": 60, "b": 60, "l": 60, "r": 20},
        bargap=0,
        barmode="overlay",
        legend={"orientation": "h", "y": -0.2, "yanchor": "top", "x": 1, "xanchor": "right"},
        xaxis={"title": "tokens per sample", "range": [0, right]},
        yaxis={"title": "samples", "rangemode": "tozero"},
    )
    return figure
