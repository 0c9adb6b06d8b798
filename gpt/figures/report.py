"""The Inspect tab's download: several views in one self-contained HTML page."""

from __future__ import annotations

import html
from collections.abc import Mapping

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from gpt.figures.attention import ATTENTION_GRID_CSS, HEAD_SCORES_CSS
from gpt.figures.tokens import TOKEN_LOSS_CSS


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
