"""Small pieces several figure modules draw with: a figure that only says something, tick label sizes,
probabilities as text, and the surprisal colour scale of the per-token and sampling views."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.colors import sample_colorscale


def tick_font_size(T: int) -> int:
    """Tick label size for axes of `T` token labels."""
    return 12 if T <= 32 else 10 if T <= 64 else 8


def message_figure(text: str, height: int = 200) -> go.Figure:
    """A figure that only says something (where a view has nothing to draw, and why)."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font={"size": 15}, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=height, plot_bgcolor="white", margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


SURPRISAL_SCALE_BITS = 12.0  # surprisal at which a token's colour saturates


def surprisal_colors(bits: Sequence[float]) -> list[tuple[str, str]]:
    """(background, text colour) per surprisal in bits, on the YlOrRd scale saturating at 12 bits."""
    fractions = [min(1.0, max(0.0, b / SURPRISAL_SCALE_BITS)) for b in bits]
    backgrounds = sample_colorscale("YlOrRd", fractions) if fractions else []
    return [(bg, "#ffffff" if f > 0.6 else "#111111") for bg, f in zip(backgrounds, fractions, strict=True)]


def percent(p: float) -> str:
    """A probability as text: a percentage, or scientific notation below 0.01%."""
    return f"{p:.2%}" if p >= 1e-4 else f"{p:.1e}"
