"""Per-token views: each token coloured by its loss, and the logit lens (position x layer)."""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from gpt.figures.common import percent, surprisal_colors, tick_font_size
from gpt.inspection import LogitLens, TokenLosses
from gpt.tokenizer import Tokenizer

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


def token_loss_html(result: TokenLosses, tokenizer: Tokenizer) -> str:
    """The text as coloured tokens (colour = surprisal, -log2 of the probability the model gave the token)
    with a hover card: log-probability, probability and rank of the actual token and the model's top-k
    predictions. Style: `TOKEN_LOSS_CSS`."""
    bits = [loss / math.log(2) for loss in result.losses]
    k = result.top_ids.shape[1]
    parts = []
    for t, (label, colors) in enumerate(zip(result.labels, surprisal_colors(bits), strict=True)):
        names = result.top_labels[t] if result.top_labels else [tokenizer.token_display(int(i))
                                                                 for i in result.top_ids[t]]
        top = "\n".join(f"  {p:6.1%}  {name}" for name, p in zip(names, result.top_probs[t], strict=True))
        rank = f", rank {int(result.ranks[t]):,} of {tokenizer.vocab_size:,}" if result.ranks is not None else ""
        tip = (
            f"token {t}: {label} (id {result.ids[t]})\n"
            f"log p = {-result.losses[t]:.3f} (p = {percent(math.exp(-result.losses[t]))}{rank})\n"
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
        for b, (bg, fg) in zip(legend_bits, surprisal_colors(legend_bits), strict=True)
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
              f"({percent(lens.top_probs[layer, t])})<br>{labels[t]}: p = {percent(lens.true_probs[layer, t])}, "
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
                     tickfont={"size": tick_font_size(T)}, title="the token to predict (the model has seen the ones "
                     "before it)")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        height=max(260, 46 * L + 200), margin={"l": 10, "r": 10, "t": 60, "b": 10}, plot_bgcolor="white",
        title={"text": "Logit lens: the final norm and unembedding applied after each layer<br><sup>colour = "
                       "probability of the actual next token; hover for the top prediction and the rank</sup>",
               "x": 0},
    )
    return fig
