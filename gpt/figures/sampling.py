"""The Generate tab's views of `gpt.sampling`: the chain with its settings, the distribution after each stage
for one token (`Stage`s), and the answer (or several branches of it) as tokens coloured by the probability the
model gave them, each clickable (`data-branch` / `data-step`) and with a hover card."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpt.figures.common import message_figure, percent, surprisal_colors
from gpt.sampling import GenerationStep, Stage
from gpt.tokenizer import Tokenizer

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
        return message_figure("Generate something: the stages of each token show here.")
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
        f"<td>{percent(s.chosen_probability)}</td></tr>" for s in stages)
    return ('<table class="smp-table" id="smp-stages"><tr><th>stage</th><th>setting</th><th>candidates left</th>'
            f"<th>entropy (bits)</th><th>chosen: rank</th><th>chosen: p</th></tr>{rows}</table>")


def _token_card(index: int, step: GenerationStep, tokenizer: Tokenizer) -> str:
    model, drawn = step.stages[0], step.stages[-1]
    rank = f"rank {model.chosen_rank:,}" if model.chosen_rank is not None else "removed"
    alternatives = ", ".join(f"{tokenizer.token_display(t)} {percent(p)}" for t, p in model.top[:5])
    forced = " (picked by you)" if step.forced else ""
    return (f"token {index}: {tokenizer.token_display(step.token_id)}{forced}\n"
            f"model: p {percent(model.chosen_probability)}, {rank} of {model.survivors:,}\n"
            f"drawn from: p {percent(drawn.chosen_probability)}\n"
            f"model's top: {alternatives}")


def answer_html(branches: Sequence[tuple[str, Sequence[GenerationStep]]], tokenizer: Tokenizer,
                selected: tuple[int, int] | None = None) -> str:
    """Each branch (label, steps) as a column of tokens coloured by the probability the model gave each
    (steps need their stage view); hover: rank, probabilities and the model's top alternatives; every token
    carries `data-branch` and `data-step` (1-based) for a click handler. `selected`: (branch, step) outlined."""
    legend_bits = [0, 1, 2, 4, 6, 8, 10, 12]
    legend = "".join(
        f'<span style="background:{bg};color:{fg}">{percent(2.0 ** -b) if b < 12 else "≤0.02%"}</span>'
        for b, (bg, fg) in zip(legend_bits, surprisal_colors(legend_bits), strict=True))
    columns = []
    for b, (label, steps) in enumerate(branches):
        bits = [-math.log2(max(s.stages[0].chosen_probability, 1e-30)) for s in steps]
        tokens = []
        for i, (step, colours) in enumerate(zip(steps, surprisal_colors(bits), strict=True), start=1):
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
