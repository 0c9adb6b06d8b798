"""Attention and heads: the layer x head grid of small maps, one head large, the bertviz-style head view,
the head-type score grids and their replay across training snapshots."""

from __future__ import annotations

import base64
import functools
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import hex_to_rgb, sample_colorscale, unlabel_rgb
from plotly.subplots import make_subplots

from gpt.errors import UserInputError
from gpt.figures.common import tick_font_size
from gpt.inspection import HEAD_SCORES, INDUCTION_THRESHOLD, AttentionMaps, attention_matrix, check_index

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

HEAD_SCORE_LABELS = {"previous_token": "previous-token", "duplicate_token": "duplicate-token",
                     "induction": "induction", "first_token": "first-token (sink)"}


def strongest_head(row: Mapping, name: str) -> tuple[int, int, float]:
    """(layer, head, score) of the strongest head of score `name` in a `heads` row."""
    grid = np.asarray(row[name], dtype=np.float64)
    layer, head = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(layer), int(head), float(grid[layer, head])


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
    ticks["tickfont"] = {"size": tick_font_size(T)}
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
             "tickfont": {"size": tick_font_size(T)}}
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
