"""Every plotly figure and HTML view of the product, callable from a notebook as from the app.

The tabs never build plotly themselves: they call these functions with numbers from `gpt.inspection`,
`gpt.sampling` or a run's metrics, and show what comes back. One module per kind of view: `curves`
(training curves, the model card's loss PNG), `attention` (attention maps and head scores), `embeddings`,
`tokens` (per-token loss, logit lens), `sampling` (the Generate tab), `report` (the Inspect download), and
`common` (small pieces they share). The views and their CSS are importable from `gpt.figures` itself.
"""

from gpt.figures.attention import (
    ATTENTION_GRID_CSS,
    ATTENTION_LEVELS,
    HEAD_SCORES_CSS,
    attention_grid_figure,
    attention_grid_html,
    attention_head_figure,
    attention_levels,
    attention_png,
    head_scores_html,
    head_scores_replay_figure,
    head_view_figure,
    icl_text,
    training_replay_figure,
)
from gpt.figures.curves import head_scores_over_steps, loss_curve_png, loss_curve_series, thin, training_figure
from gpt.figures.embeddings import embedding_figure, position_similarity_figure
from gpt.figures.report import report_html
from gpt.figures.sampling import SAMPLING_CSS, answer_html, chain_html, stage_table_html, stages_figure
from gpt.figures.tokens import TOKEN_LOSS_CSS, logit_lens_figure, token_loss_html

__all__ = [
    "ATTENTION_GRID_CSS", "ATTENTION_LEVELS", "HEAD_SCORES_CSS", "SAMPLING_CSS", "TOKEN_LOSS_CSS",
    "answer_html", "attention_grid_figure", "attention_grid_html", "attention_head_figure", "attention_levels",
    "attention_png", "chain_html", "embedding_figure", "head_scores_html", "head_scores_over_steps",
    "head_scores_replay_figure", "head_view_figure", "icl_text", "logit_lens_figure", "loss_curve_png",
    "loss_curve_series", "position_similarity_figure", "report_html", "stage_table_html", "stages_figure",
    "thin", "token_loss_html", "training_figure", "training_replay_figure",
]
