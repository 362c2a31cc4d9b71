"""Interactive loss chart: one self-contained HTML file that works offline.

plotly.js is inlined (no ``<script src=http...>``), so the file opens from a
PVC, an artifact store or an air-gapped laptop. Long runs are downsampled with
min/max buckets: every bucket keeps its first, lowest, highest and last point,
so spikes and the overall shape survive while 100k steps stay a few thousand
points. The raw loss is drawn faintly under its smoothed line (the EMA of
:func:`metrics.smooth`), as TensorBoard and W&B do: a single step's loss is noisy.
A run without a single loss value gets a small page that says so instead: an empty
chart (and 4.7 MB of inlined plotly.js) would only look like a broken one.
A run that resumed (after a preemption or a task retry) is still one curve; each resume is a
dashed vertical line after the last step before it, labelled with the state it resumed from.
A run with a validation split draws its validation loss on the same axis as the training loss
(points every ``validation_frequency`` steps, joined), its lowest point marked with a star: the
step whose checkpoint generalised best, which the last step need not be.
The run's efficiency figures (:mod:`efficiency`: tokens/s, MFU, GPU-hours, cost, time to the
first step) are a plain HTML table above the chart, ``n/a`` with its reason where a figure has
no meaning: text a reader can copy, and a test can read, outside plotly's JSON.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_provider_sft.core.files import atomic_write_bytes
from airflow_provider_sft.core.results.efficiency import Efficiency, efficiency_rows
from airflow_provider_sft.core.results.metrics import (
    SMOOTHING_WEIGHT,
    MetricsSummary,
    StepRecord,
    ValidationRecord,
    best_validation,
    smooth,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

DEFAULT_MAX_POINTS = 4000
VALIDATION_COLOR = "#ff7f0e"
NO_DATA_MESSAGE = "No data: the run recorded no training step with a loss, so there is no loss curve to draw."


def has_loss_data(records: Sequence[StepRecord]) -> bool:
    """Whether there is anything to draw: at least one step with a finite loss."""
    return any(r.loss is not None and np.isfinite(r.loss) for r in records)


def downsample(
    x: Sequence[float], y: Sequence[float], max_points: int = DEFAULT_MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Min/max bucket decimation keeping at most about ``max_points`` points; NaNs stay as gaps."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) <= max_points:
        return xs, ys
    buckets = max(1, max_points // 4)
    keep: list[int] = []
    for chunk in np.array_split(np.arange(len(xs)), buckets):
        values = ys[chunk]
        finite = np.isfinite(values)
        picks = {int(chunk[0]), int(chunk[-1])}
        if finite.any():
            picks.add(int(chunk[np.nanargmin(np.where(finite, values, np.nan))]))
            picks.add(int(chunk[np.nanargmax(np.where(finite, values, np.nan))]))
        keep.extend(sorted(picks))
    index = np.asarray(keep)
    return xs[index], ys[index]


def resume_label(mark: Mapping[str, Any]) -> str:
    """``resumed after step 40 from epoch_1 (samples 160, attempt 3f2a)``: what the line says."""
    details = [
        f"{name} {mark[key]}"
        for name, key in (("samples", "samples_seen"), ("attempt", "attempt"))
        if mark.get(key) not in (None, "")
    ]
    source = f" from {mark['state']}" if mark.get("state") else ""
    return f"resumed after step {mark['step']}{source}" + (f" ({', '.join(details)})" if details else "")


def build_figure(
    records: Sequence[StepRecord],
    *,
    title: str = "Training loss",
    max_points: int = DEFAULT_MAX_POINTS,
    resumes: Sequence[Mapping[str, Any]] = (),
    validation: Sequence[ValidationRecord] = (),
) -> go.Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    steps = [r.step for r in records]
    losses = [np.nan if r.loss is None else r.loss for r in records]
    lrs = [np.nan if r.lr is None else r.lr for r in records]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    loss_x, loss_y = downsample(steps, losses, max_points)
    figure.add_trace(
        go.Scatter(
            x=loss_x,
            y=loss_y,
            name="loss",
            mode="lines",
            opacity=0.35,
            line={"color": "#1f77b4"},
            hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>",
        ),
        secondary_y=False,
    )
    smoothed = [np.nan if value is None else value for value in smooth([r.loss for r in records])]
    smooth_x, smooth_y = downsample(steps, smoothed, max_points)
    figure.add_trace(
        go.Scatter(
            x=smooth_x,
            y=smooth_y,
            name=f"loss (smoothed, EMA {SMOOTHING_WEIGHT:g})",
            mode="lines",
            line={"color": "#1f77b4", "width": 2.5},
            hovertemplate="step %{x}<br>smoothed loss %{y:.4f}<extra></extra>",
        ),
        secondary_y=False,
    )
    lr_x, lr_y = downsample(steps, lrs, max_points)
    figure.add_trace(
        go.Scatter(
            x=lr_x,
            y=lr_y,
            name="learning rate",
            mode="lines",
            line={"dash": "dot"},
            hovertemplate="step %{x}<br>lr %{y:.3g}<extra></extra>",
        ),
        secondary_y=True,
    )
    _add_validation(figure, validation)
    for mark in resumes:
        figure.add_vline(
            x=mark["step"],
            line={"dash": "dash", "color": "#7f7f7f", "width": 1},
            annotation={"text": html.escape(resume_label(mark)), "textangle": -90, "font": {"size": 10}},
            annotation_position="top left",
        )
    figure.update_layout(
        title=title,
        hovermode="x unified",
        template="plotly_white",
        margin={"t": 110},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
    )
    figure.update_xaxes(title_text="step", rangeslider={"visible": len(steps) > 50})
    figure.update_yaxes(title_text="loss", secondary_y=False)
    figure.update_yaxes(title_text="learning rate", secondary_y=True, tickformat=".1e", showgrid=False)
    return figure


def _add_validation(figure: go.Figure, validation: Sequence[ValidationRecord]) -> None:
    """The validation loss beside the training loss, and a star on its lowest point."""
    import plotly.graph_objects as go

    if not validation:
        return
    figure.add_trace(
        go.Scatter(
            x=[record.step for record in validation],
            y=[np.nan if record.val_loss is None else record.val_loss for record in validation],
            name="validation loss",
            mode="lines+markers",
            line={"color": VALIDATION_COLOR, "width": 2},
            marker={"size": 6},
            hovertemplate="step %{x}<br>validation loss %{y:.4f}<extra></extra>",
        ),
        secondary_y=False,
    )
    best = best_validation(validation)
    if best is not None:
        figure.add_trace(
            go.Scatter(
                x=[best.step],
                y=[best.val_loss],
                name=f"best validation loss {best.val_loss:.4f} (step {best.step})",
                mode="markers",
                marker={"symbol": "star", "size": 16, "color": VALIDATION_COLOR, "line": {"width": 1}},
                hovertemplate="best validation loss %{y:.4f}<br>at step %{x}<extra></extra>",
            ),
            secondary_y=False,
        )


def _subtitle(summary: MetricsSummary | None) -> str:
    if summary is None:
        return ""

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    resumed = len(summary.resumes)
    return (
        f"final loss {fmt(summary.final_loss_smoothed, '.4f')} smoothed, {fmt(summary.final_loss, '.4f')} last step · min loss {fmt(summary.min_loss, '.4f')} · "
        f"perplexity {fmt(summary.perplexity, '.2f')} · {summary.steps} steps · {summary.total_tokens} tokens"
        + (f" · resumed {resumed}x" if resumed else "")
        + (
            f" · validation loss {fmt(summary.validation_loss, '.4f')} "
            f"(best {fmt(summary.best_validation_loss, '.4f')} at step {summary.best_validation_step})"
            if summary.validation
            else ""
        )
    )


def write_loss_chart(
    records: Sequence[StepRecord],
    path: str | Path,
    *,
    summary: MetricsSummary | None = None,
    title: str = "Training loss",
    max_points: int = DEFAULT_MAX_POINTS,
    efficiency: Efficiency | None = None,
) -> Path:
    """Write the chart (or, for a run without loss values, a "no data" page) to ``path`` atomically,
    with the efficiency table when ``efficiency`` is given."""
    subtitle = _subtitle(summary)
    table = efficiency_table(efficiency) if efficiency is not None else ""
    if not has_loss_data(records):
        page = _no_data_page(title, subtitle, table)
    else:
        full_title = (
            f"{html.escape(title)}<br><sup>{html.escape(subtitle)}</sup>" if subtitle else html.escape(title)
        )
        resumes = summary.resumes if summary is not None else ()
        validation = (
            [ValidationRecord(**record) for record in summary.validation] if summary is not None else []
        )
        figure = build_figure(
            records, title=full_title, max_points=max_points, resumes=resumes, validation=validation
        )
        page = figure.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
        page = page.replace("<body>", "<body>" + table, 1)
    return atomic_write_bytes(path, page.encode("utf-8"))


def efficiency_table(efficiency: Efficiency) -> str:
    """``<table id="sft-efficiency">``: one row per figure, and why it is n/a where it is."""
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td><td>{html.escape(note)}</td></tr>"
        for label, value, note in efficiency_rows(efficiency)
    )
    return (
        '<table id="sft-efficiency" style="font-family:sans-serif;font-size:13px;margin:8px 16px;'
        'border-collapse:collapse"><caption style="text-align:left;font-weight:bold">Efficiency</caption>'
        f"{rows}</table>"
    )


def _no_data_page(title: str, subtitle: str, table: str = "") -> str:
    details = f"<p>{html.escape(subtitle)}</p>" if subtitle else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f'<body><h1>{html.escape(title)}</h1><p id="sft-no-data"><strong>{html.escape(NO_DATA_MESSAGE)}'
        f"</strong></p>{details}{table}</body></html>\n"
    )
