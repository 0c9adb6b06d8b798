"""Training curves from a run's `metrics.jsonl` rows: the Train tab's live panels, the strongest head of
each type over training, and the static loss-curve PNG of a Hub model card."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from PIL import Image
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from gpt.errors import UserInputError
from gpt.figures.attention import HEAD_SCORE_LABELS, strongest_head
from gpt.inspection import HEAD_SCORES, INDUCTION_THRESHOLD, first_induction_step

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


def metric_series(rows: Sequence[Mapping], kind: str, key: str) -> list[tuple[float, float]]:
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


def plot_mode(points: Sequence, always_markers: bool = False) -> str:
    """Lines, with markers where a series is short (so one point shows) or `always_markers`."""
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
            points = metric_series(rows, kind, key)
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
                    mode=plot_mode(points, always_markers=dashed),
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


HEAD_SCORE_COLOURS = {"previous_token": "#1f77b4", "duplicate_token": "#2ca02c", "induction": "#d62728",
                      "first_token": "#7f7f7f"}


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
            name=HEAD_SCORE_LABELS[name], mode=plot_mode(points), line={"color": HEAD_SCORE_COLOURS[name], "width": 2},
            marker={"size": 6}, hovertemplate=f"{HEAD_SCORE_LABELS[name]}<br>%{{text}}<br>%{{y:.3f}}<extra></extra>",
        ), row=1, col=1)
    icl = thin([(row.get("step", 0), row["icl_score"]) for row in heads if row.get("icl_score") is not None])
    if icl:
        figure.add_trace(go.Scatter(
            x=[p[0] for p in icl], y=[p[1] for p in icl], text=[step_label(p[0]) for p in icl],
            name="in-context learning", mode=plot_mode(icl), line={"color": "#9467bd", "width": 2}, marker={"size": 6},
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
        "train loss": metric_series(rows, "train", "train_loss"),
        "validation loss, in-training estimate (first eval batches)":
            metric_series([row for row in evals if row.get("scope") != "full"], "eval", "val_loss"),
    }
    final = metric_series(full[-1:], "eval", "val_loss")
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
