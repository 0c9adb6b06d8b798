"""Looking inside a trained GPT: attention maps, embeddings and per-token loss, as numbers and plotly figures.

Attention
    `compute_attention(model, tokenizer, text)` runs the model's explicit attention path
    (`GPT.forward_with_attention`) on at most `MAX_TOKENS` tokens of the text and keeps every layer's
    probabilities as one array `probs` (n_layer, n_head, T, T). The figures draw those numbers unchanged:
    `attention_grid_figure` (every layer x head, small), `attention_head_figure` (one head, or the mean over
    heads and/or layers, large with token labels), `head_view_figure` (bertviz-style lines from each token to
    the tokens it attends to) and `training_replay_figure` (one head across the run's snapshot checkpoints,
    with a step slider). `head_statistics` gives entropy and the share of weight on the previous token, on
    the first token and on the token itself, per head, as a table.

Embeddings
    `token_counts` counts the tokens of the run's training split (the data folder recorded in the run's
    config.json); `embedding_figure` projects the token embeddings of the most frequent tokens to 2D or 3D by
    PCA; `nearest_neighbours` ranks tokens by cosine similarity; `position_similarity_figure` draws the
    cosine similarity of learned position embeddings (RoPE runs have none, and the figure says so).

Per-token loss
    `token_losses` scores a text the way training does, after an `<|endoftext|>` token (so the first token of
    the text is predicted too, as at the start of a training document): surprisal of every token, the top-5
    predictions at each position, mean loss and bits per byte. `token_loss_html` colours each token by its
    surprisal with the predictions on hover.

Text always goes through the run's `Tokenizer` (a run may use a compact vocabulary); labels use
`Tokenizer.token_display` (␣ for a leading space, ↵ for a newline).
"""

from __future__ import annotations

import html
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from gpt.data import split_token_counts
from gpt.errors import UserInputError
from gpt.model import GPT
from gpt.tokenizer import Tokenizer

MAX_TOKENS = 128  # longest text (in tokens) the attention and loss views take; longer text is cut
REPO_ROOT = Path(__file__).resolve().parent.parent
ATTENTION_COLORSCALE = [[0.0, "#ffffff"], [0.15, "#c6dbef"], [0.5, "#4292c6"], [1.0, "#08306b"]]
MASKED_COLOR = "#eeeeee"  # background behind future positions, which causal attention cannot see
SURPRISAL_SCALE_BITS = 12.0  # surprisal at which a token's colour saturates
TOKEN_CLASSES = ("word start", "punctuation", "digit", "other")
CLASS_COLORS = {"word start": "#1f77b4", "punctuation": "#d62728", "digit": "#2ca02c", "other": "#7f7f7f"}


# -- text -> model input -----------------------------------------------------------------------------
@dataclass
class EncodedText:
    """Model ids of a text cut to the cap, their display labels, and notes for the person."""

    ids: list[int]
    labels: list[str]
    truncated: bool
    notes: list[str] = field(default_factory=list)


def encode_text(tokenizer: Tokenizer, text: str, max_tokens: int) -> EncodedText:
    """Encode `text` with the run's tokenizer, keeping the first `max_tokens` tokens.

    Pieces outside a compact vocabulary are spelled with shorter tokens (or, in a vocabulary without the
    byte tokens, shown as `<|endoftext|>`) and listed in `notes`."""
    if not text or not text.strip():
        raise UserInputError("the text is empty: type or paste some text to inspect")
    notes = []
    try:
        ids, how = tokenizer.encode(text), "are spelled with smaller tokens"
    except UserInputError:
        ids, how = tokenizer.encode(text, unknown="eot"), "are shown as <|endoftext|>"
    unknown = tokenizer.unknown_tokens(text)
    if unknown:
        shown = ", ".join(repr(piece) for piece in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        notes.append(f"{len(unknown)} piece(s) are not in this run's vocabulary of {tokenizer.vocab_size} tokens "
                     f"and {how}: {shown}")
    truncated = len(ids) > max_tokens
    if truncated:
        notes.append(f"the text has {len(ids)} tokens; only the first {max_tokens} are inspected")
        ids = ids[:max_tokens]
    return EncodedText(ids, [tokenizer.token_display(i) for i in ids], truncated, notes)


def token_cap(model: GPT, max_tokens: int = MAX_TOKENS, reserved: int = 0) -> int:
    """The number of text tokens a view takes: `max_tokens`, or less when the context is shorter."""
    return max(1, min(max_tokens, model.config.context_length - reserved))


def _device(model: GPT) -> torch.device:
    return next(model.parameters()).device


# -- attention --------------------------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """Attention probabilities of one text: `probs[layer, head, query, key]` (float32, rows sum to 1)."""

    ids: list[int]
    labels: list[str]
    probs: np.ndarray
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_layer(self) -> int:
        return self.probs.shape[0]

    @property
    def n_head(self) -> int:
        return self.probs.shape[1]

    @property
    def length(self) -> int:
        return self.probs.shape[2]


@torch.inference_mode()
def compute_attention(model: GPT, tokenizer: Tokenizer, text: str, max_tokens: int = MAX_TOKENS) -> AttentionMaps:
    """Every layer's attention probabilities for `text` (at most `max_tokens` tokens, and the context length)."""
    encoded = encode_text(tokenizer, text, token_cap(model, max_tokens))
    idx = torch.tensor([encoded.ids], dtype=torch.long, device=_device(model))
    _, attentions = model.forward_with_attention(idx)
    probs = torch.stack([a[0] for a in attentions]).float().cpu().numpy()  # (L, H, T, T)
    return AttentionMaps(encoded.ids, encoded.labels, probs, encoded.truncated, encoded.notes)


def _check_index(name: str, value: int | None, size: int) -> None:
    if value is not None and not 0 <= value < size:
        raise UserInputError(f"{name} {value} does not exist: this model has {name}s 0..{size - 1}")


def attention_matrix(maps: AttentionMaps, layer: int | None, head: int | None) -> np.ndarray:
    """One (T, T) map: a head of a layer, or the mean over heads (`head=None`) and/or layers (`layer=None`)."""
    _check_index("layer", layer, maps.n_layer)
    _check_index("head", head, maps.n_head)
    probs = maps.probs if layer is None else maps.probs[layer : layer + 1]
    probs = probs if head is None else probs[:, head : head + 1]
    return probs.mean(axis=(0, 1))


def describe_selection(layer: int | None, head: int | None) -> str:
    layer_text = "mean over layers" if layer is None else f"layer {layer}"
    head_text = "mean over heads" if head is None else f"head {head}"
    return f"{layer_text}, {head_text}"


def _causal(matrix: np.ndarray) -> np.ndarray:
    """The matrix with future positions (which causal attention cannot see) set to NaN, drawn as blank."""
    T = matrix.shape[-1]
    return np.where(np.tri(T, dtype=bool), matrix, np.nan).astype(np.float32)


def attention_grid_figure(maps: AttentionMaps) -> go.Figure:
    """Every layer (rows) x head (columns) as a small heatmap sharing one 0..1 colour scale."""
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


def _tick_font_size(T: int) -> int:
    return 12 if T <= 32 else 10 if T <= 64 else 8


def _numbered(labels: Sequence[str]) -> list[str]:
    return [f"{i}:{label}" for i, label in enumerate(labels)]


def _attention_heatmap(matrix: np.ndarray, labels: Sequence[str]) -> go.Heatmap:
    """A (T, T) attention map with both tokens and the exact weight on hover."""
    T = len(labels)
    hover = [[f"query {i} {labels[i]} → key {j} {labels[j]}" for j in range(T)] for i in range(T)]
    return go.Heatmap(
        z=matrix,
        text=hover,
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
    _check_index("token position", selected, T)
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
    highlight = [selected] if selected is not None else []
    left_colors = ["#d62728" if i in highlight else "#222222" for i in range(T)]
    fig.add_trace(
        go.Scatter(
            x=[0.0] * T,
            y=[-i for i in range(T)],
            mode="text",
            text=labels,
            textposition="middle left",
            textfont={"color": left_colors, "size": 12},
            hovertext=[f"query {i}: {labels[i]}" for i in range(T)],
            hoverinfo="text",
            showlegend=False,
        )
    )
    if selected is None:
        right_hover = [f"key {j}: {labels[j]}" for j in range(T)]
    else:
        right_hover = [
            f"{labels[selected]} ({selected}) → {labels[j]} ({j}): {matrix[selected, j]:.4f}" if j <= selected
            else f"{labels[j]} ({j}): in the future of {labels[selected]}"
            for j in range(T)
        ]
    fig.add_trace(
        go.Scatter(
            x=[1.0] * T,
            y=[-j for j in range(T)],
            mode="text",
            text=labels,
            textposition="middle right",
            textfont={"size": 12},
            hovertext=right_hover,
            hoverinfo="text",
            showlegend=False,
        )
    )
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


def head_statistics(maps: AttentionMaps) -> pd.DataFrame:
    """Per head: mean entropy of its attention rows (bits) and the mean share of weight on the previous
    token, the first token and the token itself, over query positions 1..T-1 (position 0 can only attend
    to itself). `pattern` names the dominant behaviour when one share is above one half."""
    if maps.length < 2:
        raise UserInputError("head statistics need a text of at least 2 tokens")
    probs = maps.probs.astype(np.float64)[:, :, 1:, :]  # (L, H, T-1, T): query rows 1..T-1
    rows = np.arange(1, maps.length)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log2(probs), 0.0)
    entropy = -plogp.sum(axis=-1).mean(axis=-1)
    previous = probs[:, :, rows - 1, rows - 1].mean(axis=-1)
    first = probs[:, :, :, 0].mean(axis=-1)
    itself = probs[:, :, rows - 1, rows].mean(axis=-1)
    records = []
    for layer in range(maps.n_layer):
        for head in range(maps.n_head):
            shares = {"previous token": previous[layer, head], "first token": first[layer, head],
                      "self": itself[layer, head]}
            name, best = max(shares.items(), key=lambda item: item[1])
            records.append(
                {
                    "layer": layer,
                    "head": head,
                    "entropy_bits": round(float(entropy[layer, head]), 3),
                    "previous_token": round(float(previous[layer, head]), 3),
                    "first_token": round(float(first[layer, head]), 3),
                    "self": round(float(itself[layer, head]), 3),
                    "pattern": name if best > 0.5 else "mixed",
                }
            )
    return pd.DataFrame.from_records(records)


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
        sliders=[
            {
                "active": len(steps) - 1,
                "currentvalue": {"prefix": "step "},
                "pad": {"t": 60},
                "steps": [
                    {"label": str(step), "method": "animate",
                     "args": [[str(step)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True}}]}
                    for step in steps
                ],
            }
        ],
        updatemenus=[
            {
                "type": "buttons",
                "showactive": False,
                "x": 0.0,
                "y": -0.02,
                "xanchor": "right",
                "yanchor": "top",
                "pad": {"t": 60, "r": 10},
                "buttons": [
                    {"label": "▶ play", "method": "animate",
                     "args": [None, {"frame": {"duration": 700, "redraw": True}, "fromcurrent": False}]}
                ],
            }
        ],
    )
    return fig


def _replay_title(step: int, layer: int | None, head: int | None) -> str:
    return f"Across training: {describe_selection(layer, head)} at step {step}"


# -- embeddings -------------------------------------------------------------------------------------------
def resolve_data_dir(run_config: dict) -> Path | None:
    """The run's training data folder from its config.json (as written, or relative to the repository)."""
    recorded = (run_config.get("data") or {}).get("dir")
    if not recorded:
        return None
    for candidate in (Path(recorded), REPO_ROOT / recorded):
        if (candidate / "train.bin").is_file():
            return candidate
    return None


def token_counts(run_config: dict, tokenizer: Tokenizer) -> tuple[np.ndarray | None, str]:
    """How often each model id occurs in the run's training split, and where the counts come from.

    Returns `(None, reason)` when the data folder recorded in the run's config is not on this machine."""
    data_dir = resolve_data_dir(run_config)
    if data_dir is None:
        recorded = (run_config.get("data") or {}).get("dir")
        where = f"its data folder {recorded!r} is not on this machine" if recorded else "it records no data folder"
        return None, f"Token frequencies of this run's training data are unavailable ({where})."
    train_file = data_dir / "train.bin"
    gpt2_counts = split_token_counts(data_dir, "train")
    if tokenizer.kept_gpt2_ids is None:
        counts = gpt2_counts[: tokenizer.vocab_size]
    else:
        counts = gpt2_counts[np.asarray(tokenizer.kept_gpt2_ids)]
    return counts.astype(np.int64), f"Token frequencies from {train_file} ({int(gpt2_counts.sum()):,} tokens)."


def most_frequent_tokens(counts: np.ndarray | None, tokenizer: Tokenizer, n: int) -> list[int]:
    """The `n` most frequent model ids that occur at least once; without counts, the first `n` tokens in
    GPT-2's merge order (roughly frequency in GPT-2's own training text), skipping single bytes."""
    if counts is not None:
        order = np.argsort(-counts, kind="stable")
        return [int(i) for i in order[:n] if counts[i] > 0]
    gpt2_ids = tokenizer.to_gpt2(range(tokenizer.vocab_size))
    ranked = sorted((g, model_id) for model_id, g in enumerate(gpt2_ids) if g >= 256 or tokenizer.is_compact)
    return [model_id for _, model_id in ranked[:n]]


def token_class(text: str) -> str:
    """"word start" (a space then a letter), "punctuation", "digit" or "other" for a token's raw text."""
    stripped = text.strip()
    if not stripped:
        return "other"
    if stripped.isdigit():
        return "digit"
    if all(unicodedata.category(ch).startswith(("P", "S")) for ch in stripped):
        return "punctuation"
    if text[0] == " " and stripped[0].isalpha():
        return "word start"
    return "other"


def pca(vectors: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first `dims` principal components (SVD of the centred matrix).

    Returns the coordinates (N, dims) and each component's share of the variance. Signs are fixed so that
    each component's largest loading is positive, which keeps the picture stable across calls."""
    if dims not in (2, 3):
        raise UserInputError(f"projection dimensions must be 2 or 3, got {dims}")
    if len(vectors) <= dims:
        raise UserInputError(f"need more than {dims} tokens to project to {dims}D, got {len(vectors)}")
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, singular, components = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    components = components[:dims]
    signs = np.sign(components[np.arange(dims), np.abs(components).argmax(axis=1)])
    components *= signs[:, None]
    variance = singular**2
    return centred @ components.T, variance[:dims] / variance.sum()


def token_embeddings(model: GPT) -> np.ndarray:
    """The token embedding matrix (vocab_size, n_embd) as float32 numpy (also the tied output layer)."""
    return model.token_embedding.weight.detach().float().cpu().numpy()


def embedding_figure(
    model: GPT,
    tokenizer: Tokenizer,
    counts: np.ndarray | None,
    n: int = 300,
    dims: int = 2,
    color_by: str = "frequency",
    labelled: int = 80,
) -> go.Figure:
    """PCA of the token embeddings of the `n` most frequent tokens, coloured by log frequency or by token
    class; the `labelled` most frequent carry their text, every point shows token, id and count on hover."""
    if color_by not in ("frequency", "class"):
        raise UserInputError(f"colour by 'frequency' or 'class', got {color_by!r}")
    if n < 4:
        raise UserInputError(f"show at least 4 tokens, got {n}")
    ids = most_frequent_tokens(counts, tokenizer, n)
    coords, share = pca(token_embeddings(model)[ids], dims)
    display = [tokenizer.token_display(i) for i in ids]
    classes = [token_class(tokenizer.token_text(i)) for i in ids]
    freq = [int(counts[i]) if counts is not None else None for i in ids]
    hover = [
        f"{d} (id {i})<br>{c}" + (f"<br>{f:,} times in training data" if f is not None else "")
        for d, i, c, f in zip(display, ids, classes, freq, strict=True)
    ]
    text = [d if rank < labelled else "" for rank, d in enumerate(display)]
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
            mask = [c == name for c in classes]
            if any(mask):
                fig.add_trace(trace(mask, name, {"size": size, "color": CLASS_COLORS[name]}))
    else:
        values = np.log10(np.asarray([f or 0 for f in freq], dtype=np.float64) + 1) if counts is not None else None
        marker = {"size": size}
        if values is not None:
            marker.update(color=values, colorscale="Viridis", colorbar={"title": "log10 count"}, showscale=True)
        fig.add_trace(trace([True] * len(ids), "tokens", marker))
    source = "most frequent in the training data" if counts is not None else "first in GPT-2 merge order"
    title = (
        f"Token embeddings, PCA {dims}D: {len(ids)} tokens ({source}); "
        f"variance explained {', '.join(f'{s:.0%}' for s in share)}"
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


def parse_token(tokenizer: Tokenizer, token: str) -> int:
    """A model id from what a person typed: the token's text (␣ may stand for a leading space) or `#id`."""
    token = token.replace("␣", " ").replace("↵", "\n")
    if not token:
        raise UserInputError("type a token, e.g. ' the' or '␣the' (a leading space is part of the token), or #id")
    if token.startswith("#") and token[1:].isdigit():
        model_id = int(token[1:])
        if model_id >= tokenizer.vocab_size:
            raise UserInputError(f"token id {model_id} is outside this vocabulary (0..{tokenizer.vocab_size - 1})")
        return model_id
    ids = tokenizer.encode(token, unknown="eot")
    if tokenizer.unknown_tokens(token):
        raise UserInputError(f"{token!r} is not in this run's vocabulary of {tokenizer.vocab_size} tokens")
    if len(ids) != 1:
        pieces = " | ".join(tokenizer.token_display(i) for i in ids)
        raise UserInputError(f"{token!r} is {len(ids)} tokens ({pieces}); type a single token")
    return ids[0]


def nearest_neighbours(
    model: GPT, tokenizer: Tokenizer, token: str, k: int = 10, counts: np.ndarray | None = None
) -> pd.DataFrame:
    """The `k` tokens whose embeddings have the highest cosine similarity with the typed token's.

    With `counts`, only tokens that occur in the training data are candidates (the others were never
    trained as inputs and mostly keep their random initial vectors)."""
    query = parse_token(tokenizer, token)
    weights = torch.from_numpy(token_embeddings(model))
    sims = torch.nn.functional.cosine_similarity(weights, weights[query : query + 1], dim=-1).numpy()
    sims[query] = -np.inf
    if counts is not None:
        sims[counts == 0] = -np.inf
    order = [int(i) for i in np.argsort(-sims, kind="stable")[:k] if np.isfinite(sims[i])]
    return pd.DataFrame(
        {
            "rank": range(1, len(order) + 1),
            "token": [tokenizer.token_display(i) for i in order],
            "id": order,
            "cosine": [round(float(sims[i]), 4) for i in order],
            "count": [int(counts[i]) if counts is not None else None for i in order],
        }
    )


def position_similarity(model: GPT) -> np.ndarray | None:
    """Cosine similarity (P, P) between learned position embeddings; None for a RoPE model."""
    if model.position_embedding is None:
        return None
    weights = model.position_embedding.weight.detach().float()
    normed = torch.nn.functional.normalize(weights, dim=-1)
    return (normed @ normed.T).cpu().numpy()


def position_similarity_figure(model: GPT, max_positions: int = 512) -> go.Figure:
    """Heatmap of `position_similarity`; long contexts are shown every k-th position. RoPE runs get a note."""
    sims = position_similarity(model)
    fig = go.Figure()
    if sims is None:
        fig.add_annotation(
            text="This run uses RoPE: positions are rotations of queries and keys inside attention,<br>"
            "so there is no position embedding table to compare.",
            showarrow=False,
            font={"size": 15},
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_layout(height=200, plot_bgcolor="white", margin={"l": 10, "r": 10, "t": 10, "b": 10})
        return fig
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


# -- per-token loss ---------------------------------------------------------------------------------------
@dataclass
class TokenLosses:
    """How surprised the model is by each token of a text (scored after an <|endoftext|> token).

    `losses[t]` = -ln p(token t | <|endoftext|>, tokens before t) in nats; `top_ids`/`top_probs` (T, k) are the
    model's k most likely tokens at that position."""

    ids: list[int]
    labels: list[str]
    losses: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    num_bytes: int
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean())

    @property
    def bits_per_byte(self) -> float:
        return float(self.losses.sum() / (self.num_bytes * math.log(2)))

    def summary(self) -> str:
        return (
            f"{len(self.ids)} tokens, {self.num_bytes} bytes: loss {self.mean_loss:.3f} nats/token "
            f"(perplexity {math.exp(self.mean_loss):.1f}), {self.bits_per_byte:.3f} bits per byte"
        )


@torch.inference_mode()
def token_losses(
    model: GPT, tokenizer: Tokenizer, text: str, max_tokens: int = MAX_TOKENS, top_k: int = 5
) -> TokenLosses:
    """Surprisal of every token of `text` (at most `max_tokens`) and the model's top-k guesses before it."""
    encoded = encode_text(tokenizer, text, token_cap(model, max_tokens, reserved=1))
    inputs = [tokenizer.eot_id] + encoded.ids[:-1]
    idx = torch.tensor([inputs], dtype=torch.long, device=_device(model))
    logits, _ = model(idx)
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)  # (T, V)
    targets = torch.tensor(encoded.ids, device=log_probs.device)
    losses = -log_probs.gather(1, targets[:, None])[:, 0]
    top = log_probs.topk(min(top_k, log_probs.size(-1)), dim=-1)
    return TokenLosses(
        ids=encoded.ids,
        labels=encoded.labels,
        losses=losses.cpu().numpy().astype(np.float64),
        top_ids=top.indices.cpu().numpy(),
        top_probs=top.values.exp().cpu().numpy().astype(np.float64),
        num_bytes=len(tokenizer.decode_bytes(encoded.ids)),
        truncated=encoded.truncated,
        notes=encoded.notes,
    )


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
    """The text as coloured tokens (colour = surprisal in bits) with a hover card: surprisal, probability
    of the actual token and the model's top predictions. Style: `TOKEN_LOSS_CSS`."""
    bits = [loss / math.log(2) for loss in result.losses]
    parts = []
    for t, (label, colors) in enumerate(zip(result.labels, _surprisal_colors(bits), strict=True)):
        top = "\n".join(
            f"  {p:6.1%}  {tokenizer.token_display(int(i))}"
            for i, p in zip(result.top_ids[t], result.top_probs[t], strict=True)
        )
        tip = (
            f"token {t}: {label} (id {result.ids[t]})\n"
            f"surprisal {bits[t]:.2f} bits, p = {_percent(math.exp(-result.losses[t]))}\n"
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
        f'<div class="tl-legend">surprisal (bits): {legend} — hover a token for the top-5 predictions</div>'
        f"{notes}<div class=\"tl-text\">{''.join(parts)}</div>"
    )
