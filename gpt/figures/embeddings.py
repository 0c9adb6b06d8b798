"""Embeddings: the PCA map of the most frequent tokens and the position-embedding similarity."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from gpt.errors import UserInputError
from gpt.figures.common import message_figure
from gpt.inspection import TOKEN_CLASSES, embedding_projection, position_similarity
from gpt.model import GPT
from gpt.tokenizer import Tokenizer

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


def position_similarity_figure(model: GPT, max_positions: int = 512) -> go.Figure:
    """Heatmap of `gpt.inspection.position_similarity`; long contexts are shown every k-th position. RoPE
    runs get a note instead."""
    sims = position_similarity(model)
    if sims is None:
        return message_figure("This run uses RoPE: positions are rotations of queries and keys inside attention,<br>"
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
