"""Every plotly figure and HTML view of the product, callable from a notebook as from the app.

The tabs never build plotly themselves: they call these functions with numbers from `gpt.inspection`,
`gpt.sampling` or a run's metrics, and show what comes back. Sections: training curves, attention and
heads, embeddings, per-token views, sampling.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import hex_to_rgb, qualitative, sample_colorscale, unlabel_rgb
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from gpt.errors import UserInputError
from gpt.inspection import (
    HEAD_SCORES,
    INDUCTION_THRESHOLD,
    TOKEN_CLASSES,
    AttentionMaps,
    LogitLens,
    TokenLosses,
    attention_matrix,
    check_index,
    embedding_projection,
    first_induction_step,
    position_similarity,
)
from gpt.model import GPT
from gpt.sampling import GenerationStep, Stage
from gpt.tokenizer import Tokenizer

# -- training curves -------------------------------------------------------------------------------------
# Curves are drawn from `metrics.jsonl` rows as the trainer writes them (`kind` = train / eval / heads ...);
# long runs are thinned to a few hundred points per series so the browser stays quick.
MAX_POINTS = 400
FEW_POINTS = 30  # a series with at most this many points gets markers, so a curve of one point is visible
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


def step_label(step: float) -> str:
    """How a step reads on hover: step 0 is the evaluation before any training."""
    return "step 0 (before training)" if step == 0 else f"step {step:g}"


def _mode(points: Sequence, always_markers: bool = False) -> str:
    return "lines+markers" if always_markers or len(points) <= FEW_POINTS else "lines"


def training_figure(runs: Mapping[str, Sequence[Mapping]], height: int = 520) -> go.Figure:
    """Six panels of training curves; one colour per run, validation dashed with markers. Short series
    have markers too, so the first logged point shows at once."""
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
                    text=[step_label(p[0]) for p in points],
                    name=name,
                    legendgroup=f"{run_name}-{label}",
                    showlegend=panel in (0, 2, 3, 4) or len(runs) > 1 and panel == 0,
                    mode=_mode(points, always_markers=dashed),
                    line={"color": colour, "dash": "dash" if dashed else "solid", "width": 2},
                    marker={"size": 5},
                    hovertemplate=f"{name}<br>%{{text}}<br>%{{y:.4g}}<extra></extra>",
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


HEAD_SCORE_LABELS = {"previous_token": "previous-token", "duplicate_token": "duplicate-token",
                     "induction": "induction", "first_token": "first-token (sink)"}
HEAD_SCORE_COLOURS = {"previous_token": "#1f77b4", "duplicate_token": "#2ca02c", "induction": "#d62728",
                      "first_token": "#7f7f7f"}


def strongest_head(row: Mapping, name: str) -> tuple[int, int, float]:
    """(layer, head, score) of the strongest head of score `name` in a `heads` row."""
    grid = np.asarray(row[name], dtype=np.float64)
    layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(layer), int(head), float(grid[layer, head])


def head_scores_over_steps(rows: Sequence[Mapping], threshold: float = INDUCTION_THRESHOLD,
                           height: int = 380) -> go.Figure:
    """The `heads` rows of a run over training: the strongest head of each type (left, with the induction
    threshold dotted and the first step an induction head reaches it marked) and the in-context learning
    score (right: late minus early loss, falling below zero as the model learns to use its context)."""
    heads = [row for row in rows if row.get("kind") == "heads" and row.get("induction")]
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                           subplot_titles=["Strongest head of each type (score 0..1)",
                                           "In-context learning score (nats; below 0 = the context helps)"])
    for name in HEAD_SCORES:
        points = thin([(row.get("step", 0), strongest_head(row, name)) for row in heads])
        figure.add_trace(go.Scatter(
            x=[step for step, _ in points], y=[score for _, (_, _, score) in points],
            text=[f"{step_label(step)} · layer {layer}, head {head}" for step, (layer, head, _) in points],
            name=HEAD_SCORE_LABELS[name], mode=_mode(points), line={"color": HEAD_SCORE_COLOURS[name], "width": 2},
            marker={"size": 6}, hovertemplate=f"{HEAD_SCORE_LABELS[name]}<br>%{{text}}<br>%{{y:.3f}}<extra></extra>",
        ), row=1, col=1)
    icl = thin([(row.get("step", 0), row["icl_score"]) for row in heads if row.get("icl_score") is not None])
    if icl:
        figure.add_trace(go.Scatter(
            x=[p[0] for p in icl], y=[p[1] for p in icl], text=[step_label(p[0]) for p in icl],
            name="in-context learning", mode=_mode(icl), line={"color": "#9467bd", "width": 2}, marker={"size": 6},
            hovertemplate="in-context learning score<br>%{text}<br>%{y:.3f} nats<extra></extra>",
        ), row=1, col=2)
    figure.add_hline(y=threshold, line={"dash": "dot", "color": "#d62728", "width": 1}, row=1, col=1,
                     annotation_text=f"induction threshold {threshold:g}", annotation_position="bottom right")
    first = first_induction_step(heads, threshold)
    if first is not None:
        formed = next(row for row in heads if row.get("step") == first)
        layer, head, score = strongest_head(formed, "induction")
        figure.add_trace(go.Scatter(
            x=[first], y=[score], mode="markers", name=f"induction head forms (step {first})",
            marker={"symbol": "star", "size": 15, "color": "#d62728", "line": {"color": "#000000", "width": 1}},
            hovertemplate=(f"first induction head: layer {layer}, head {head}<br>{step_label(first)}"
                           f"<br>score %{{y:.3f}}<extra></extra>"),
        ), row=1, col=1)
        figure.add_vline(x=first, line={"dash": "dash", "color": "#d62728", "width": 1}, row=1, col=1)
    if not heads:
        figure.add_annotation(text="no head scores yet: the trainer scores its probe at each evaluation",
                              showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    figure.update_yaxes(range=[0, 1.02], row=1, col=1)
    figure.update_xaxes(title_text="step", title_standoff=2)
    figure.update_layout(height=height, margin={"l": 50, "r": 20, "t": 40, "b": 40}, template="plotly_white",
                         legend={"orientation": "h", "y": -0.18}, uirevision="keep")
    return figure


# -- attention and heads ---------------------------------------------------------------------------------
ATTENTION_COLORSCALE = [[0.0, "#ffffff"], [0.15, "#c6dbef"], [0.5, "#4292c6"], [1.0, "#08306b"]]
MASKED_COLOR = "#eeeeee"  # background behind future positions, which causal attention cannot see
ATTENTION_LEVELS = 255  # the small maps of the grid are images with this many weight levels (1/254 apart)
ATTENTION_GRID_CSS = """
.ag-grid { display: grid; gap: 4px; align-items: center; font-size: 12px; }
.ag-col, .ag-row { color: #555; text-align: center; white-space: nowrap; }
.ag-cell { padding: 0; border: 2px solid transparent; border-radius: 3px; background: none; cursor: pointer;
  line-height: 0; }
.ag-cell:hover { border-color: #888; }
.ag-cell.selected { border-color: #d62728; }
.ag-cell img { width: 100%; aspect-ratio: 1; image-rendering: pixelated; background: #eeeeee; }
"""
HEAD_SCORES_CSS = """
.hs-grids { display: flex; flex-wrap: wrap; gap: 18px; font-size: 12px; }
.hs-grid { margin: 0; }
.hs-grid figcaption { font-weight: 600; margin-bottom: 4px; }
.hs-grid table { border-collapse: collapse; }
.hs-grid th { font-weight: normal; color: #555; padding: 1px 4px; }
.hs-cell { min-width: 2.6em; height: 1.9em; text-align: center; cursor: pointer; border: 2px solid #fff;
  font-variant-numeric: tabular-nums; }
.hs-cell:hover { border-color: #888; }
.hs-cell.selected { border-color: #d62728; }
.hs-note { font-size: 13px; margin: 8px 0 0 0; }
"""


def describe_selection(layer: int | None, head: int | None) -> str:
    layer_text = "mean over layers" if layer is None else f"layer {layer}"
    head_text = "mean over heads" if head is None else f"head {head}"
    return f"{layer_text}, {head_text}"


def _causal(matrix: np.ndarray) -> np.ndarray:
    """The matrix with future positions (which causal attention cannot see) set to NaN, drawn as blank."""
    T = matrix.shape[-1]
    return np.where(np.tri(T, dtype=bool), matrix, np.nan).astype(np.float32)


def attention_grid_figure(maps: AttentionMaps) -> go.Figure:
    """Every layer (rows) x head (columns) as a small heatmap sharing one 0..1 colour scale, at full precision
    (for a notebook; the app sends `attention_grid_html`, a few times smaller and clickable)."""
    L, H, T = maps.n_layer, maps.n_head, maps.length
    fig = make_subplots(
        rows=L,
        cols=H,
        horizontal_spacing=0.012,
        vertical_spacing=0.012 * max(1.0, H / L),
        column_titles=[f"head {h}" for h in range(H)],
        row_titles=[f"layer {layer}" for layer in range(L)],
    )
    traces, rows, cols, anchors = [], [], [], {}
    for layer in range(L):
        for head in range(H):
            traces.append(
                go.Heatmap(
                    z=_causal(maps.probs[layer, head]),
                    coloraxis="coloraxis",
                    hovertemplate=(
                        f"layer {layer}, head {head}<br>query %{{y}} → key %{{x}}<br>weight %{{z:.4f}}<extra></extra>"
                    ),
                )
            )
            rows.append(layer + 1)
            cols.append(head + 1)
            k = layer * H + head + 1
            anchors[f"yaxis{k if k > 1 else ''}"] = {"scaleanchor": f"x{k if k > 1 else ''}"}
    fig.add_traces(traces, rows=rows, cols=cols)
    fig.update_layout(anchors)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed", constrain="domain")
    cell = max(70, min(140, 1000 // H))
    fig.update_layout(
        coloraxis={"colorscale": ATTENTION_COLORSCALE, "cmin": 0.0, "cmax": 1.0, "colorbar": {"title": "weight"}},
        height=L * cell + 90,
        margin={"l": 20, "r": 40, "t": 70, "b": 20},
        plot_bgcolor=MASKED_COLOR,
        title={"text": f"Attention of every head ({T} tokens; row = query, column = key; blank = future)", "x": 0},
        font={"size": 11},
    )
    fig.for_each_annotation(lambda a: a.update(font={"size": 11}))
    return fig


@functools.lru_cache(maxsize=1)
def _attention_palette() -> list[int]:
    """Flat RGB palette: indexes 0..254 are weights 0..1 on `ATTENTION_COLORSCALE`, 255 the masked colour."""
    colours = sample_colorscale(ATTENTION_COLORSCALE, list(np.linspace(0.0, 1.0, ATTENTION_LEVELS)))
    rgb = [round(channel) for colour in colours for channel in unlabel_rgb(colour)]
    return rgb + list(hex_to_rgb(MASKED_COLOR))


def attention_levels(matrix: np.ndarray) -> np.ndarray:
    """(T, T) uint8 image indexes of an attention map: weight w -> round(w * 254), future positions 255."""
    levels = np.rint(np.clip(matrix, 0.0, 1.0) * (ATTENTION_LEVELS - 1)).astype(np.uint8)
    levels[~np.tri(matrix.shape[-1], dtype=bool)] = ATTENTION_LEVELS
    return levels


def attention_png(matrix: np.ndarray) -> bytes:
    """One attention map as a palette PNG, one pixel per (query, key): see `attention_levels`."""
    levels = attention_levels(matrix)
    image = Image.frombytes("P", (levels.shape[1], levels.shape[0]), levels.tobytes())
    image.putpalette(_attention_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def attention_grid_html(maps: AttentionMaps, selected: tuple[int, int] | None = None) -> str:
    """Every layer (rows) x head (columns) as a small image of its attention (row = query, column = key,
    grey = future; 255 levels of weight), each a button carrying `data-layer`/`data-head` so a page can
    select the head on click. `selected` (layer, head) is outlined. Style: `ATTENTION_GRID_CSS`."""
    L, H = maps.n_layer, maps.n_head
    cells = ['<div></div>'] + [f'<div class="ag-col">head {h}</div>' for h in range(H)]
    for layer in range(L):
        cells.append(f'<div class="ag-row">layer {layer}</div>')
        for head in range(H):
            image = base64.b64encode(attention_png(maps.probs[layer, head])).decode("ascii")
            chosen = " selected" if selected == (layer, head) else ""
            cells.append(
                f'<button type="button" class="ag-cell{chosen}" data-layer="{layer}" data-head="{head}" '
                f'title="layer {layer}, head {head}: click to show it large">'
                f'<img src="data:image/png;base64,{image}" alt="attention of layer {layer}, head {head}"></button>'
            )
    width = max(56, min(128, 900 // H))
    return (f'<div class="ag-grid" style="grid-template-columns: 5em repeat({H}, {width}px)">{"".join(cells)}</div>'
            f'<p class="ag-note">{maps.length} tokens; row = query, column = key, grey = future. Click a head to '
            f'show it large below.</p>')


def _tick_font_size(T: int) -> int:
    return 12 if T <= 32 else 10 if T <= 64 else 8


def _attention_heatmap(matrix: np.ndarray, labels: Sequence[str]) -> go.Heatmap:
    """A (T, T) attention map with both tokens and the exact weight on hover (future cells carry no text)."""
    T = len(labels)
    hover = [[f"query {i} {labels[i]} → key {j} {labels[j]}" if j <= i else "" for j in range(T)] for i in range(T)]
    return go.Heatmap(
        z=matrix,
        text=np.array(hover, dtype=object),  # an object array is taken as it is (a list is checked cell by cell)
        hovertemplate="%{text}<br>weight %{z:.4f}<extra></extra>",
        colorscale=ATTENTION_COLORSCALE,
        zmin=0.0,
        zmax=1.0,
        colorbar={"title": "weight"},
    )


def attention_head_figure(maps: AttentionMaps, layer: int | None, head: int | None) -> go.Figure:
    """One head (or a mean) large: tokens on both axes, the exact weight and both tokens on hover."""
    matrix = _causal(attention_matrix(maps, layer, head))
    T = maps.length
    labels = maps.labels
    fig = go.Figure(_attention_heatmap(matrix, labels))
    ticks = {"tickmode": "array", "tickvals": list(range(T)), "ticktext": labels, "showgrid": False}
    ticks["tickfont"] = {"size": _tick_font_size(T)}
    fig.update_xaxes(title="key: the token attended to", tickangle=-90, side="bottom", constrain="domain", **ticks)
    fig.update_yaxes(
        title="query: the token attending", autorange="reversed", scaleanchor="x", constrain="domain", **ticks
    )
    side = min(1100, max(460, 14 * T + 200))
    fig.update_layout(
        height=side,
        plot_bgcolor=MASKED_COLOR,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        title={"text": f"Attention: {describe_selection(layer, head)}", "x": 0},
    )
    return fig


def head_view_figure(
    maps: AttentionMaps, layer: int | None, head: int | None, selected: int | None = None, min_weight: float = 0.03
) -> go.Figure:
    """bertviz-style head view: each token on the left is joined to the tokens it attends to on the right,
    line width and opacity growing with the weight. `selected` (a query position) keeps only its lines,
    all of them, with the weights on hover at the right-hand ends. Without a selection, weights below
    `min_weight` are not drawn (a diffuse head over a long text would otherwise be a solid block)."""
    matrix = attention_matrix(maps, layer, head)
    T = maps.length
    check_index("token position", selected, T)
    labels = maps.labels
    fig = go.Figure()
    allowed = np.tri(T, dtype=bool)
    if selected is None:
        allowed &= matrix >= min_weight
    else:
        allowed &= np.arange(T)[:, None] == selected
    level = np.minimum((matrix * 10).astype(int), 9)  # ten width/opacity levels of 0.1 each
    for bucket in range(10):
        queries, keys = np.nonzero(allowed & (level == bucket))
        if len(queries) == 0:
            continue
        xs = np.tile([0.0, 1.0, np.nan], len(queries))
        ys = np.stack([-queries, -keys, np.full(len(queries), np.nan)], axis=1).ravel()
        mid = (bucket + 0.5) / 10
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"width": 0.5 + 6 * mid, "color": f"rgba(33, 102, 172, {0.1 + 0.9 * mid:.2f})"},
                hoverinfo="skip",
                showlegend=False,
            )
        )
    left_colors = ["#d62728" if i == selected else "#222222" for i in range(T)]
    fig.add_trace(_token_column(0.0, labels, "middle left", [f"query {i}: {labels[i]}" for i in range(T)],
                                left_colors))
    if selected is None:
        right_hover = [f"key {j}: {labels[j]}" for j in range(T)]
    else:
        right_hover = [
            f"{labels[selected]} ({selected}) → {labels[j]} ({j}): {matrix[selected, j]:.4f}" if j <= selected
            else f"{labels[j]} ({j}): in the future of {labels[selected]}"
            for j in range(T)
        ]
    fig.add_trace(_token_column(1.0, labels, "middle right", right_hover, ["#222222"] * T))
    fig.update_xaxes(visible=False, range=[-0.6, 1.6])
    fig.update_yaxes(visible=False, range=[-T + 0.3, 0.7])
    title = f"Head view: {describe_selection(layer, head)}"
    if selected is None:
        title += f"<br><sup>weights below {min_weight:g} not drawn; pick a token to see all of its lines</sup>"
    else:
        title += f"<br><sup>lines of token {selected} {labels[selected]}</sup>"
    fig.update_layout(
        height=max(300, 18 * T + 80),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        plot_bgcolor="white",
        title={"text": title, "x": 0},
        hoverlabel={"font": {"size": 13}},
    )
    return fig


def _token_column(x: float, labels: Sequence[str], position: str, hover: Sequence[str],
                  colours: Sequence[str]) -> go.Scatter:
    """One side of the head view: the tokens top to bottom at `x`, with their hover text."""
    return go.Scatter(x=[x] * len(labels), y=[-i for i in range(len(labels))], mode="text", text=list(labels),
                      textposition=position, textfont={"color": list(colours), "size": 12}, hovertext=list(hover),
                      hoverinfo="text", showlegend=False)


def _step_slider(steps: Sequence[int]) -> dict:
    """Layout entries for a step slider and a play button over frames named by step."""
    return {
        "sliders": [{
            "active": len(steps) - 1,
            "currentvalue": {"prefix": "step "},
            "pad": {"t": 60},
            "steps": [{"label": str(step), "method": "animate",
                       "args": [[str(step)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True}}]}
                      for step in steps],
        }],
        "updatemenus": [{
            "type": "buttons", "showactive": False, "x": 0.0, "y": -0.02, "xanchor": "right", "yanchor": "top",
            "pad": {"t": 60, "r": 10},
            "buttons": [{"label": "▶ play", "method": "animate",
                         "args": [None, {"frame": {"duration": 700, "redraw": True}, "fromcurrent": False}]}],
        }],
    }


def training_replay_figure(
    snapshots: Sequence[tuple[int, AttentionMaps]], layer: int | None, head: int | None
) -> go.Figure:
    """One head's map at every snapshot step, as plotly frames with a step slider and a play button."""
    if not snapshots:
        raise UserInputError("this run has no snapshot checkpoints; train with snapshots enabled to replay training")
    steps = [step for step, _ in snapshots]
    labels = snapshots[-1][1].labels
    T = len(labels)
    matrices = [_causal(attention_matrix(maps, layer, head)) for _, maps in snapshots]
    fig = go.Figure(_attention_heatmap(matrices[-1], labels), frames=[
        go.Frame(data=[_attention_heatmap(m, labels)], name=str(step),
                 layout={"title": {"text": _replay_title(step, layer, head)}})
        for step, m in zip(steps, matrices, strict=True)
    ])
    ticks = {"tickmode": "array", "tickvals": list(range(T)), "ticktext": labels, "showgrid": False,
             "tickfont": {"size": _tick_font_size(T)}}
    fig.update_xaxes(title="key", tickangle=-90, constrain="domain", **ticks)
    fig.update_yaxes(title="query", autorange="reversed", scaleanchor="x", constrain="domain", **ticks)
    fig.update_layout(
        height=min(1100, max(520, 14 * T + 280)),
        plot_bgcolor=MASKED_COLOR,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        title={"text": _replay_title(steps[-1], layer, head), "x": 0},
        **_step_slider(steps),
    )
    return fig


def _replay_title(step: int, layer: int | None, head: int | None) -> str:
    return f"Across training: {describe_selection(layer, head)} at step {step}"


def _score_colours(value: float) -> tuple[str, str]:
    """(background, text colour) of a 0..1 score on the attention colour scale."""
    value = min(1.0, max(0.0, value))
    return sample_colorscale(ATTENTION_COLORSCALE, [value])[0], "#ffffff" if value > 0.55 else "#111111"


def icl_text(row: Mapping) -> str:
    """The in-context learning score of a `heads` row in words."""
    if row.get("icl_score") is None:
        return "In-context learning score: not available (no validation text for this run on this machine)."
    positions = row["icl_positions"]
    return (f"In-context learning score: {row['icl_score']:+.3f} nats (mean loss at context positions "
            f"{positions['late'][0]}-{positions['late'][1]}: {row['icl_late_loss']:.3f}, minus at "
            f"{positions['early'][0]}-{positions['early'][1]}: {row['icl_early_loss']:.3f}; below 0 = later "
            f"tokens are predicted better because the model uses its context).")


def head_scores_html(row: Mapping, selected: tuple[int, int] | None = None,
                     threshold: float = INDUCTION_THRESHOLD) -> str:
    """One small layer x head table per head type of a `heads` row (`gpt.inspection.score_probe`), each cell
    coloured by its score with the value in it and carrying `data-layer`/`data-head` so a page can select
    the head on click; then the in-context learning score. Style: `HEAD_SCORES_CSS`."""
    grids = []
    for name in HEAD_SCORES:
        scores = row[name]
        layer, head, best = strongest_head(row, name)
        formed = " ≥ threshold: an induction head" if name == "induction" and best >= threshold else ""
        lines = ["<tr><th></th>" + "".join(f"<th>h{h}</th>" for h in range(len(scores[0]))) + "</tr>"]
        for l_index, layer_scores in enumerate(scores):
            cells = []
            for h_index, score in enumerate(layer_scores):
                background, colour = _score_colours(score)
                chosen = " selected" if selected == (l_index, h_index) else ""
                cells.append(
                    f'<td class="hs-cell{chosen}" data-layer="{l_index}" data-head="{h_index}" '
                    f'style="background:{background};color:{colour}" '
                    f'title="layer {l_index}, head {h_index}: {HEAD_SCORE_LABELS[name]} {score:.3f}">{score:.2f}</td>')
            lines.append(f"<tr><th>L{l_index}</th>{''.join(cells)}</tr>")
        grids.append(f'<figure class="hs-grid"><figcaption>{HEAD_SCORE_LABELS[name]} · max {best:.2f} '
                     f'(layer {layer}, head {head}){formed}</figcaption><table>{"".join(lines)}</table></figure>')
    return (f'<div class="hs-grids">{"".join(grids)}</div><p class="hs-note">{html.escape(icl_text(row))}</p>')


def head_scores_replay_figure(snapshots: Sequence[tuple[int, Mapping]]) -> go.Figure:
    """The four layer x head score grids at every snapshot step (frames with a step slider and play)."""
    if not snapshots:
        raise UserInputError("this run has no snapshot checkpoints; train with snapshots enabled to replay training")
    names = list(HEAD_SCORES)

    def traces(row: Mapping) -> list[go.Heatmap]:
        return [go.Heatmap(z=np.asarray(row[name], dtype=np.float32), coloraxis="coloraxis", xgap=1, ygap=1,
                           hovertemplate=f"layer %{{y}}, head %{{x}}<br>{HEAD_SCORE_LABELS[name]} "
                                         "%{z:.3f}<extra></extra>")
                for name in names]

    def title(step: int, row: Mapping) -> str:
        icl = row.get("icl_score")
        return f"Head-type scores at step {step}" + (f" · in-context learning score {icl:+.3f} nats" if icl is not None
                                                      else "")

    steps = [step for step, _ in snapshots]
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=[HEAD_SCORE_LABELS[n] for n in names],
                           horizontal_spacing=0.04)
    for col, trace in enumerate(traces(snapshots[-1][1]), start=1):
        figure.add_trace(trace, row=1, col=col)
    figure.frames = [go.Frame(data=traces(row), traces=list(range(len(names))), name=str(step),
                              layout={"title": {"text": title(step, row)}}) for step, row in snapshots]
    figure.update_xaxes(title_text="head", dtick=1)
    figure.update_yaxes(autorange="reversed", dtick=1)
    figure.update_yaxes(title_text="layer", col=1)
    figure.update_layout(
        coloraxis={"colorscale": ATTENTION_COLORSCALE, "cmin": 0.0, "cmax": 1.0, "colorbar": {"title": "score"}},
        height=420, margin={"l": 10, "r": 10, "t": 70, "b": 10}, plot_bgcolor=MASKED_COLOR,
        title={"text": title(steps[-1], snapshots[-1][1]), "x": 0}, **_step_slider(steps),
    )
    return figure


# -- embeddings ------------------------------------------------------------------------------------------
CLASS_COLORS = {"word start": "#1f77b4", "punctuation": "#d62728", "digit": "#2ca02c", "other": "#7f7f7f"}


def embedding_figure(
    model: GPT,
    tokenizer: Tokenizer,
    counts: np.ndarray | None,
    n: int = 300,
    dims: int = 2,
    color_by: str = "frequency",
    labelled: int = 80,
) -> go.Figure:
    """PCA of the token embeddings of the `n` most frequent tokens (`gpt.inspection.embedding_projection`),
    coloured by log frequency or by token class; the `labelled` most frequent carry their text, every point
    shows token, id and count on hover."""
    if color_by not in ("frequency", "class"):
        raise UserInputError(f"colour by 'frequency' or 'class', got {color_by!r}")
    projection = embedding_projection(model, tokenizer, counts, n=n, dims=dims)
    ids, coords = projection.ids, projection.coords
    hover = [
        f"{d} (id {i})<br>{c}" + (f"<br>{f:,} times in training data" if f is not None else "")
        for d, i, c, f in zip(projection.labels, ids, projection.classes, projection.counts, strict=True)
    ]
    text = [d if rank < labelled else "" for rank, d in enumerate(projection.labels)]
    scatter = go.Scatter3d if dims == 3 else go.Scatter

    def trace(mask: list[bool], name: str, marker: dict) -> go.Scatter | go.Scatter3d:
        pick = [k for k, keep in enumerate(mask) if keep]
        axes = {axis: coords[pick, a] for a, axis in enumerate("xyz"[:dims])}
        return scatter(
            **axes,
            mode="markers+text",
            text=[text[k] for k in pick],
            textposition="top center",
            textfont={"size": 10},
            hovertext=[hover[k] for k in pick],
            hoverinfo="text",
            customdata=[ids[k] for k in pick],
            marker=marker,
            name=name,
        )

    fig = go.Figure()
    size = 4 if dims == 3 else 7
    if color_by == "class":
        for name in TOKEN_CLASSES:
            mask = [c == name for c in projection.classes]
            if any(mask):
                fig.add_trace(trace(mask, name, {"size": size, "color": CLASS_COLORS[name]}))
    else:
        marker = {"size": size}
        if projection.from_counts:
            values = np.log10(np.asarray(projection.counts, dtype=np.float64) + 1)
            marker.update(color=values, colorscale="Viridis", colorbar={"title": "log10 count"}, showscale=True)
        fig.add_trace(trace([True] * len(ids), "tokens", marker))
    source = "most frequent in the training data" if projection.from_counts else "first in GPT-2 merge order"
    title = (
        f"Token embeddings, PCA {dims}D: {len(ids)} tokens ({source}); "
        f"variance explained {', '.join(f'{s:.0%}' for s in projection.share)}"
    )
    axis_titles = {f"{a}axis": {"title": f"PC{k + 1}"} for k, a in enumerate("xyz"[:dims])}
    if dims == 3:
        fig.update_layout(scene=axis_titles)
    else:
        fig.update_layout(**axis_titles)
    fig.update_layout(
        height=680,
        title={"text": title, "x": 0, "font": {"size": 14}},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"title": "token class"},
        plot_bgcolor="white",
    )
    if dims == 2:
        fig.update_xaxes(showgrid=True, gridcolor="#eeeeee", zeroline=False)
        fig.update_yaxes(showgrid=True, gridcolor="#eeeeee", zeroline=False)
    return fig


def _message_figure(text: str, height: int = 200) -> go.Figure:
    """A figure that only says something (where a view has nothing to draw, and why)."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font={"size": 15}, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=height, plot_bgcolor="white", margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def position_similarity_figure(model: GPT, max_positions: int = 512) -> go.Figure:
    """Heatmap of `gpt.inspection.position_similarity`; long contexts are shown every k-th position. RoPE
    runs get a note instead."""
    sims = position_similarity(model)
    if sims is None:
        return _message_figure("This run uses RoPE: positions are rotations of queries and keys inside attention,<br>"
                               "so there is no position embedding table to compare.")
    fig = go.Figure()
    stride = math.ceil(len(sims) / max_positions)
    positions = np.arange(0, len(sims), stride)
    fig.add_trace(
        go.Heatmap(
            z=sims[np.ix_(positions, positions)].astype(np.float32),
            x=positions,
            y=positions,
            colorscale="RdBu",
            zmid=0.0,
            zmin=-1.0,
            zmax=1.0,
            colorbar={"title": "cosine"},
            hovertemplate="position %{y} vs %{x}<br>cosine %{z:.3f}<extra></extra>",
        )
    )
    every = "" if stride == 1 else f" (every {stride}th position)"
    fig.update_xaxes(title="position", constrain="domain")
    fig.update_yaxes(title="position", autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_layout(
        height=620,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        title={"text": f"Cosine similarity of learned position embeddings{every}", "x": 0},
    )
    return fig


# -- per-token views -------------------------------------------------------------------------------------
SURPRISAL_SCALE_BITS = 12.0  # surprisal at which a token's colour saturates
TOKEN_LOSS_CSS = """
.tl-text { line-height: 2.1; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 15px; }
.tl-tok { position: relative; padding: 2px 1px; margin: 0 1px; border-radius: 3px; white-space: pre;
  cursor: default; }
.tl-tok .tl-tip { display: none; position: absolute; left: 0; top: 1.9em; z-index: 20; min-width: 15em;
  background: #222; color: #fff; padding: 6px 8px; border-radius: 4px; font-size: 13px; line-height: 1.4;
  white-space: pre; box-shadow: 0 2px 6px rgba(0,0,0,.3); }
.tl-tok:hover .tl-tip { display: block; }
.tl-tok:hover { outline: 2px solid #222; }
.tl-legend { font-size: 13px; margin: 6px 0; }
.tl-legend span { padding: 2px 6px; margin-right: 2px; }
"""


def _surprisal_colors(bits: Sequence[float]) -> list[tuple[str, str]]:
    """(background, text colour) per surprisal in bits, on the YlOrRd scale saturating at 12 bits."""
    fractions = [min(1.0, max(0.0, b / SURPRISAL_SCALE_BITS)) for b in bits]
    backgrounds = sample_colorscale("YlOrRd", fractions) if fractions else []
    return [(bg, "#ffffff" if f > 0.6 else "#111111") for bg, f in zip(backgrounds, fractions, strict=True)]


def _percent(p: float) -> str:
    return f"{p:.2%}" if p >= 1e-4 else f"{p:.1e}"


def token_loss_html(result: TokenLosses, tokenizer: Tokenizer) -> str:
    """The text as coloured tokens (colour = surprisal, -log2 of the probability the model gave the token)
    with a hover card: log-probability, probability and rank of the actual token and the model's top-k
    predictions. Style: `TOKEN_LOSS_CSS`."""
    bits = [loss / math.log(2) for loss in result.losses]
    k = result.top_ids.shape[1]
    parts = []
    for t, (label, colors) in enumerate(zip(result.labels, _surprisal_colors(bits), strict=True)):
        names = result.top_labels[t] if result.top_labels else [tokenizer.token_display(int(i))
                                                                 for i in result.top_ids[t]]
        top = "\n".join(f"  {p:6.1%}  {name}" for name, p in zip(names, result.top_probs[t], strict=True))
        rank = f", rank {int(result.ranks[t]):,} of {tokenizer.vocab_size:,}" if result.ranks is not None else ""
        tip = (
            f"token {t}: {label} (id {result.ids[t]})\n"
            f"log p = {-result.losses[t]:.3f} (p = {_percent(math.exp(-result.losses[t]))}{rank})\n"
            f"surprisal {bits[t]:.2f} bits\n"
            f"top predictions:\n{top}"
        )
        newline = "<br>" if tokenizer.token_text(result.ids[t]).endswith("\n") else ""
        parts.append(
            f'<span class="tl-tok" style="background:{colors[0]};color:{colors[1]}">'
            f'{html.escape(label)}<span class="tl-tip">{html.escape(tip)}</span></span>{newline}'
        )
    legend_bits = [0, 2, 4, 6, 8, 10, 12]
    legend = "".join(
        f'<span style="background:{bg};color:{fg}">{b}{"+" if b == 12 else ""}</span>'
        for b, (bg, fg) in zip(legend_bits, _surprisal_colors(legend_bits), strict=True)
    )
    notes = "".join(f"<p>{html.escape(note)}</p>" for note in result.notes)
    return (
        f'<div class="tl-summary"><b>{html.escape(result.summary())}</b></div>'
        f'<div class="tl-legend">surprisal (bits, −log₂ p): {legend} — hover a token for its log-probability, '
        f"rank and the top-{k} predictions</div>"
        f"{notes}<div class=\"tl-text\">{''.join(parts)}</div>"
    )


LENS_FLOOR = 1e-5  # the logit lens colours log10 p of the true token from this probability up


def logit_lens_figure(lens: LogitLens) -> go.Figure:
    """Position (columns) x layer (rows) heatmap of the logit lens: colour = log10 probability of the actual
    next token after each layer; hover: the top prediction there, its probability, and the actual token's
    probability and rank. Short texts also print the top prediction in each cell."""
    L, T = lens.true_probs.shape
    labels, tops = lens.labels, lens.top_labels
    hover = [[f"position {t} → {labels[t]}<br>after layer {layer + 1}: top {tops[layer][t]} "
              f"({_percent(lens.top_probs[layer, t])})<br>{labels[t]}: p = {_percent(lens.true_probs[layer, t])}, "
              f"rank {int(lens.true_ranks[layer, t]):,}" for t in range(T)] for layer in range(L)]
    z = np.log10(np.clip(lens.true_probs, LENS_FLOOR, 1.0)).astype(np.float32)
    heatmap = go.Heatmap(
        z=z, x=list(range(T)), y=[f"layer {layer + 1}" for layer in range(L)], customdata=np.array(hover, dtype=object),
        hovertemplate="%{customdata}<extra></extra>", colorscale="Viridis", zmin=math.log10(LENS_FLOOR), zmax=0.0,
        colorbar={"title": "p(actual)", "tickvals": [-5, -4, -3, -2, -1, 0],
                  "ticktext": ["≤1e-5", "1e-4", "0.001", "0.01", "0.1", "1"]},
    )
    if T <= 40:
        heatmap.update(text=np.array(tops, dtype=object), texttemplate="%{text}", textfont={"size": 10})
    fig = go.Figure(heatmap)
    fig.update_xaxes(tickmode="array", tickvals=list(range(T)), ticktext=labels, tickangle=-90,
                     tickfont={"size": _tick_font_size(T)}, title="the token to predict (the model has seen the ones "
                     "before it)")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        height=max(260, 46 * L + 200), margin={"l": 10, "r": 10, "t": 60, "b": 10}, plot_bgcolor="white",
        title={"text": "Logit lens: the final norm and unembedding applied after each layer<br><sup>colour = "
                       "probability of the actual next token; hover for the top prediction and the rank</sup>",
               "x": 0},
    )
    return fig


def report_html(title: str, views: Mapping[str, go.Figure | str]) -> str:
    """One self-contained HTML page holding several views (plotly figures and HTML views, under their
    names as headings), with plotly.js embedded once: what the Inspect tab's download gives."""
    parts = []
    for name, view in views.items():
        body = view.to_html(full_html=False, include_plotlyjs=False) if isinstance(view, go.Figure) else view
        parts.append(f"<section><h2>{html.escape(name)}</h2>{body}</section>")
    style = ATTENTION_GRID_CSS + HEAD_SCORES_CSS + TOKEN_LOSS_CSS
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<script type="text/javascript">{get_plotlyjs()}</script>'
            f"<style>body {{ font-family: sans-serif; margin: 20px; }} {style}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")


# -- sampling ----------------------------------------------------------------------------------------------
# The Generate tab's views of `gpt.sampling`: the chain with its settings, the distribution after each stage
# for one token (`Stage`s), and the answer (or several branches of it) as tokens coloured by the probability
# the model gave them, each clickable (`data-branch` / `data-step`) and with a hover card.
SAMPLING_CSS = """
.smp-chain { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; font-size: 13px; }
.smp-chain .smp-stage { border: 1px solid #cbd5e1; border-radius: 4px; padding: 2px 6px; color: #64748b; }
.smp-chain .smp-on { border-color: #2563eb; color: #111; background: #eff6ff; }
.smp-chain .smp-error { color: #b91c1c; }
.smp-branches { display: grid; gap: 10px; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); }
.smp-branch { border: 1px solid #e2e8f0; border-radius: 6px; padding: 6px 8px; min-width: 0; }
.smp-branch h4 { margin: 0 0 4px 0; font-size: 13px; }
.smp-text { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px; line-height: 1.9;
  white-space: pre-wrap; word-break: break-word; }
.smp-tok { border-radius: 3px; padding: 1px 0; cursor: pointer; }
.smp-tok:hover { outline: 2px solid #111; }
.smp-tok.smp-selected { outline: 2px solid #2563eb; }
.smp-tok.smp-forced { text-decoration: underline wavy #2563eb; }
.smp-empty { display: inline-block; min-width: 4px; }
.smp-legend { font-size: 12px; margin: 4px 0; }
.smp-legend span { padding: 1px 5px; }
.smp-table { border-collapse: collapse; font-size: 13px; }
.smp-table td, .smp-table th { border-bottom: 1px solid #e2e8f0; padding: 2px 8px; text-align: right; }
.smp-table td:first-child, .smp-table th:first-child, .smp-table td:nth-child(2) { text-align: left; }
"""
STAGE_COLUMNS = 3  # panels per row of the stage figure
CHOSEN_COLOUR, OTHER_COLOUR = "#f97316", "#3b82f6"


def chain_html(settings: Sequence[tuple[str, str | None]], error: str | None = None) -> str:
    """The sampler chain in its order, each stage with its setting (highlighted) or "off"; `error` (a
    setting that is not valid) is shown instead of the chain's end."""
    parts = []
    for index, (name, setting) in enumerate(settings, start=1):
        text = f"{index}. {name}: {setting}" if setting is not None else f"{index}. {name}: off"
        parts.append(f'<span class="smp-stage{" smp-on" if setting is not None else ""}">{html.escape(text)}</span>')
    tail = (f'<span class="smp-error">⚠ {html.escape(error)}</span>' if error
            else '<span class="smp-stage smp-on">draw the token</span>')
    return f'<div class="smp-chain" id="smp-chain">{" → ".join(parts)} → {tail}</div>'


def _stage_title(stage: Stage) -> str:
    rank = f"chosen #{stage.chosen_rank}" if stage.chosen_rank is not None else "chosen token removed"
    return (f"<b>{html.escape(stage.name)}</b> ({html.escape(stage.setting)})<br>"
            f"{stage.survivors:,} left · {stage.entropy:.2f} bits · {rank}")


def stages_figure(stages: Sequence[Stage], tokenizer: Tokenizer, chosen: int, title: str) -> go.Figure:
    """One bar chart per stage of the chain (raw model first, the distribution drawn from last): its most
    likely tokens and their probabilities, the `chosen` token in orange; each panel's title says how many
    candidates survive, the entropy and the chosen token's rank there."""
    if not stages:
        return _message_figure("Generate something: the stages of each token show here.")
    rows = math.ceil(len(stages) / STAGE_COLUMNS)
    columns = min(len(stages), STAGE_COLUMNS)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[_stage_title(s) for s in stages],
                           horizontal_spacing=0.16, vertical_spacing=0.5 / rows)
    for index, stage in enumerate(stages):
        row, col = index // STAGE_COLUMNS + 1, index % STAGE_COLUMNS + 1
        pairs = list(stage.top)
        labels = [f"{tokenizer.token_display(t)} ({t})" for t, _ in pairs]
        if stage.chosen_rank is not None and all(t != chosen for t, _ in pairs):  # drawn from below the top
            pairs.append((chosen, stage.chosen_probability))
            labels.append(f"#{stage.chosen_rank:,} {tokenizer.token_display(chosen)} ({chosen})")
        pairs.reverse()  # the most likely on top
        labels.reverse()
        colours = [CHOSEN_COLOUR if t == chosen else OTHER_COLOUR for t, _ in pairs]
        figure.add_bar(
            x=[p for _, p in pairs], y=labels, orientation="h", marker_color=colours, showlegend=False,
            hovertemplate="%{y}: %{x:.2%}<extra>" + html.escape(stage.name) + "</extra>", row=row, col=col)
        figure.update_xaxes(range=[0, max([p for _, p in pairs] + [1e-9]) * 1.1], tickformat=".2~p", nticks=4,
                            row=row, col=col)
        figure.update_yaxes(tickfont={"family": "monospace", "size": 11}, row=row, col=col)
    height = rows * (22 * (max(len(s.top) for s in stages) + 1) + 90) + 60
    figure.update_layout(title={"text": title, "x": 0}, height=height, template="plotly_white",
                         margin={"l": 10, "r": 10, "t": 90, "b": 20})
    figure.update_annotations(font_size=11)
    return figure


def stage_table_html(stages: Sequence[Stage]) -> str:
    """A table of the stages: setting, candidates left, entropy, and the chosen token's rank and probability."""
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{html.escape(s.setting)}</td><td>{s.survivors:,}</td>"
        f"<td>{s.entropy:.2f}</td><td>{'removed' if s.chosen_rank is None else s.chosen_rank}</td>"
        f"<td>{_percent(s.chosen_probability)}</td></tr>" for s in stages)
    return ('<table class="smp-table" id="smp-stages"><tr><th>stage</th><th>setting</th><th>candidates left</th>'
            f"<th>entropy (bits)</th><th>chosen: rank</th><th>chosen: p</th></tr>{rows}</table>")


def _token_card(index: int, step: GenerationStep, tokenizer: Tokenizer) -> str:
    model, drawn = step.stages[0], step.stages[-1]
    rank = f"rank {model.chosen_rank:,}" if model.chosen_rank is not None else "removed"
    alternatives = ", ".join(f"{tokenizer.token_display(t)} {_percent(p)}" for t, p in model.top[:5])
    forced = " (picked by you)" if step.forced else ""
    return (f"token {index}: {tokenizer.token_display(step.token_id)}{forced}\n"
            f"model: p {_percent(model.chosen_probability)}, {rank} of {model.survivors:,}\n"
            f"drawn from: p {_percent(drawn.chosen_probability)}\n"
            f"model's top: {alternatives}")


def answer_html(branches: Sequence[tuple[str, Sequence[GenerationStep]]], tokenizer: Tokenizer,
                selected: tuple[int, int] | None = None) -> str:
    """Each branch (label, steps) as a column of tokens coloured by the probability the model gave each
    (steps need their stage view); hover: rank, probabilities and the model's top alternatives; every token
    carries `data-branch` and `data-step` (1-based) for a click handler. `selected`: (branch, step) outlined."""
    legend_bits = [0, 1, 2, 4, 6, 8, 10, 12]
    legend = "".join(
        f'<span style="background:{bg};color:{fg}">{_percent(2.0 ** -b) if b < 12 else "≤0.02%"}</span>'
        for b, (bg, fg) in zip(legend_bits, _surprisal_colors(legend_bits), strict=True))
    columns = []
    for b, (label, steps) in enumerate(branches):
        bits = [-math.log2(max(s.stages[0].chosen_probability, 1e-30)) for s in steps]
        tokens = []
        for i, (step, colours) in enumerate(zip(steps, _surprisal_colors(bits), strict=True), start=1):
            classes = ["smp-tok"] + (["smp-selected"] if selected == (b, i) else []) + (
                ["smp-forced"] if step.forced else [])
            text = step.text if step.text else ""
            tokens.append(
                f'<span class="{" ".join(classes)}{" smp-empty" if not text else ""}" data-branch="{b}" '
                f'data-step="{i}" title="{html.escape(_token_card(i, step, tokenizer))}" '
                f'style="background:{colours[0]};color:{colours[1]}">{html.escape(text)}</span>')
        columns.append(f'<div class="smp-branch" data-branch="{b}"><h4>{html.escape(label)} · {len(steps)} tokens'
                       f'</h4><div class="smp-text">{"".join(tokens)}</div></div>')
    return (f'<div class="smp-legend">probability the model gave each token: {legend} — hover for its rank and '
            f"the model's top alternatives, click to see its stages</div>"
            f'<div class="smp-branches" id="smp-answer">{"".join(columns)}</div>')


# -- loss-curve image (the Hub model card) ---------------------------------------------------------------
# A static PNG of a run's loss for pages that run no plotly (a model card on the Hub). Drawn with Pillow, which
# the app already uses: plotly's image export needs kaleido plus a Chrome binary that a Space does not have.
LOSS_PNG_SIZE = (1000, 560)
_PNG_SCALE = 2  # drawn at twice the size, then downsampled: Pillow draws lines without anti-aliasing
_PNG_MARGINS = (80, 50, 30, 120)  # left, top, right, bottom (the legend sits below the axes)


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    span = high - low if high > low else abs(high) or 1.0
    step = 10.0 ** math.floor(math.log10(span / count))
    step *= next(m for m in (1, 2, 5, 10) if span / (step * m) <= count)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def loss_curve_series(rows: Sequence[Mapping]) -> dict[str, list[tuple[float, float]]]:
    """(step, loss) points of a run's metrics, labelled as they are: training loss, in-training validation
    estimates (the first `eval_batches` batches) and the final whole-split evaluation."""
    evals = [row for row in rows if row.get("kind") == "eval"]
    full = [row for row in evals if row.get("scope") == "full"]
    series = {
        "train loss": _series(rows, "train", "train_loss"),
        "validation loss, in-training estimate (first eval batches)":
            _series([row for row in evals if row.get("scope") != "full"], "eval", "val_loss"),
    }
    final = _series(full[-1:], "eval", "val_loss")
    if final:
        series[f"validation loss, whole split: {final[0][1]:.4f} at step {final[0][0]:g}"] = final
    return {label: points for label, points in series.items() if points}


def loss_curve_png(rows: Sequence[Mapping], title: str) -> bytes:
    """A PNG of the loss curves of `loss_curve_series` (nats/token against step), with a legend."""
    from PIL import ImageDraw, ImageFont

    series = loss_curve_series(rows)
    if not series:
        raise UserInputError(f"{title}: no loss has been logged yet, so there is no curve to draw")
    s = _PNG_SCALE
    width, height = LOSS_PNG_SIZE[0] * s, LOSS_PNG_SIZE[1] * s
    left, top, right, bottom = (margin * s for margin in _PNG_MARGINS)
    points = [p for values in series.values() for p in values]
    x_low, x_high = 0.0, max(max(p[0] for p in points), 1.0) * 1.02  # room for the final evaluation's dot
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y_high - y_low) * 0.05 or 0.5
    y_low, y_high = max(0.0, y_low - pad), y_high + pad

    def xy(step: float, loss: float) -> tuple[float, float]:
        return (left + (step - x_low) / (x_high - x_low) * (width - left - right),
                height - bottom - (loss - y_low) / (y_high - y_low) * (height - top - bottom))

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15 * s), ImageFont.load_default(size=13 * s)
    for tick in _nice_ticks(y_low, y_high):
        y = xy(0, tick)[1]
        draw.line([(left, y), (width - right, y)], fill="#e5e5e5", width=s)
        draw.text((left - 8 * s, y), f"{tick:g}", fill="#444444", font=small, anchor="rm")
    for tick in _nice_ticks(x_low, x_high):
        x = xy(tick, y_low)[0]
        draw.line([(x, top), (x, height - bottom)], fill="#f0f0f0", width=s)
        draw.text((x, height - bottom + 8 * s), f"{tick:g}", fill="#444444", font=small, anchor="ma")
    draw.rectangle([left, top, width - right, height - bottom], outline="#888888", width=s)
    draw.text((left, top - 12 * s), f"{title}: loss (nats/token)", fill="black", font=font, anchor="ls")
    draw.text(((left + width - right) / 2, height - bottom + 30 * s), "step", fill="#444444", font=small,
              anchor="ma")
    legend_y = height - bottom + 62 * s
    for index, (label, values) in enumerate(series.items()):
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        pixels = [xy(*p) for p in values]
        is_train = label == "train loss"
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=(2 if is_train else 1) * s, joint="curve")
        radius = (3 if len(pixels) > 1 else 6) * s  # the final evaluation is one larger dot
        for x, y in [] if is_train and len(pixels) > 1 else pixels:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        row_y = legend_y + index * 20 * s
        draw.line([(left, row_y), (left + 30 * s, row_y)], fill=colour, width=3 * s)
        draw.text((left + 40 * s, row_y), label, fill="black", font=small, anchor="lm")
    image = image.resize(LOSS_PNG_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
