"""Plotly figures of the Train and Generate tabs: training curves (one run live, or several overlaid)
and the "why this token" bar chart.

Curves are drawn from `metrics.jsonl` rows as the trainer writes them (`kind` = train / eval / ...);
long runs are thinned to a few hundred points per series so the browser stays quick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

MAX_POINTS = 400
# (row, col, title) of each panel, and which metric of which row kind goes there.
PANELS = [
    (1, 1, "Loss (nats/token)"),
    (1, 2, "Perplexity"),
    (1, 3, "Learning rate"),
    (2, 1, "Tokens / second"),
    (2, 2, "Gradient norm (before clipping)"),
    (2, 3, "Validation bits per byte"),
]
SERIES = [
    # (panel index, row kind, key, label, dashed)
    (0, "train", "train_loss", "train", False),
    (0, "eval", "val_loss", "val", True),
    (1, "train", "train_perplexity", "train", False),
    (1, "eval", "perplexity", "val", True),
    (2, "train", "lr", "lr", False),
    (3, "train", "tokens_per_second", "tokens/s", False),
    (4, "train", "grad_norm", "grad norm", False),
    (5, "eval", "bits_per_byte", "val bpb", True),
]


def thin(points: Sequence[tuple[float, float]], max_points: int = MAX_POINTS) -> list[tuple[float, float]]:
    """Every k-th point (always keeping the last) so at most about `max_points` remain."""
    if len(points) <= max_points:
        return list(points)
    stride = math.ceil(len(points) / max_points)
    kept = list(points[::stride])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _series(rows: Sequence[Mapping], kind: str, key: str) -> list[tuple[float, float]]:
    points = []
    for row in rows:
        if row.get("kind") != kind:
            continue
        value = row.get(key)
        if key == "train_perplexity" and row.get("train_loss") is not None:
            value = math.exp(min(float(row["train_loss"]), 50.0))
        if isinstance(value, int | float) and math.isfinite(value):
            points.append((row.get("step", 0), float(value)))
    return thin(points)


def training_figure(runs: Mapping[str, Sequence[Mapping]], height: int = 520) -> go.Figure:
    """Six panels of training curves; one colour per run, validation dashed with markers."""
    figure = make_subplots(rows=2, cols=3, subplot_titles=[title for _, _, title in PANELS],
                           horizontal_spacing=0.07, vertical_spacing=0.16)
    colours = qualitative.Plotly
    for index, (run_name, rows) in enumerate(runs.items()):
        colour = colours[index % len(colours)]
        for panel, kind, key, label, dashed in SERIES:
            points = _series(rows, kind, key)
            if not points:
                continue
            row, col, _ = PANELS[panel]
            name = f"{run_name} · {label}" if len(runs) > 1 else label
            figure.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    name=name,
                    legendgroup=f"{run_name}-{label}",
                    showlegend=panel in (0, 2, 3, 4) or len(runs) > 1 and panel == 0,
                    mode="lines+markers" if dashed else "lines",
                    line={"color": colour, "dash": "dash" if dashed else "solid", "width": 2},
                    marker={"size": 5},
                    hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
    for row, col, _ in PANELS:
        figure.update_xaxes(title_text="step", title_standoff=2, row=row, col=col)
    figure.update_yaxes(type="log", row=1, col=2)
    figure.update_layout(
        height=height,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.12},
        template="plotly_white",
        uirevision="keep",  # keep the user's zoom while the live plot updates
    )
    return figure


def candidates_figure(
    before: Sequence[tuple[str, float]],
    after: Sequence[tuple[str, float]],
    chosen: str,
    title: str,
) -> go.Figure:
    """Horizontal bars: each candidate token's probability from the raw model and after the controls."""
    labels = list(dict.fromkeys([label for label, _ in before] + [label for label, _ in after]))
    before_map, after_map = dict(before), dict(after)
    labels.reverse()  # the most likely candidate on top
    figure = go.Figure()
    figure.add_bar(y=labels, x=[before_map.get(label, 0.0) for label in labels], orientation="h",
                   name="model (temperature 1)", marker_color="#9aa5b1")
    figure.add_bar(y=[label for label in labels], x=[after_map.get(label, 0.0) for label in labels],
                   orientation="h", name="after your controls", marker_color="#3b82f6")
    figure.update_layout(
        barmode="group",
        title=title,
        height=max(260, 34 * len(labels) + 120),
        margin={"l": 110, "r": 20, "t": 50, "b": 40},
        xaxis={"title": "probability", "rangemode": "tozero"},
        yaxis={"tickfont": {"family": "monospace"}},
        legend={"orientation": "h", "y": -0.2},
        template="plotly_white",
    )
    if chosen in labels:
        figure.add_annotation(y=chosen, x=max(before_map.get(chosen, 0.0), after_map.get(chosen, 0.0)),
                              text="  ← chosen", showarrow=False, xanchor="left")
    return figure
