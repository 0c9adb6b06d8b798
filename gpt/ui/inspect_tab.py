"""The Inspect tab: attention maps, embeddings and per-token loss of any run's checkpoint.

Only wiring: every number and figure comes from `gpt.inspection`. The handlers are plain functions
(`inspect_text`, `head_figures`, `replay_training`, `embedding_views`, `neighbours_table`) so tests can
call them without a browser. Checkpoints are loaded through the app's shared cache (`gpt.ui.models`).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from gpt import inspection
from gpt.checkpoint import CHECKPOINTS_DIR, LoadedRun, list_checkpoints
from gpt.ui.common import DEFAULT_DATA_DIR, AppDirs, error_text
from gpt.ui.models import checkpoint_choices, get_run
from gpt.ui.runs import default_run_value, run_choices

DEFAULT_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?"
)
MEAN = -1  # dropdown value for "mean over layers / heads" and for "all tokens" in the head view
ALL_TOKENS = -1
HEAD_VIEW_HELP = (
    "Head view: each token on the left is joined to the tokens it attends to on the right; thicker, darker "
    "lines carry more weight. Pick a token to keep only its lines and see each weight on hover."
)


def _fail(error: Exception) -> gr.Error:
    return gr.Error(error_text(error))


def _load(run_dir: str | None, checkpoint: str | None) -> LoadedRun:
    if not run_dir:
        raise gr.Error("Choose a run first (train one in the Train tab, or use the shipped model).")
    try:
        return get_run(run_dir, checkpoint or "last")
    except Exception as error:  # a missing or unreadable run: say so in the page
        raise _fail(error) from error


def _selection(value: int | None) -> int | None:
    return None if value is None or int(value) == MEAN else int(value)


def _index_choices(kind: str, count: int) -> list[tuple[str, int]]:
    return [(f"mean over {kind}s", MEAN)] + [(f"{kind} {i}", i) for i in range(count)]


def _valid_index(value: int | None, count: int) -> int:
    """The dropdown value kept when it exists in a model with `count` layers/heads, else 0."""
    return int(value) if value is not None and MEAN <= int(value) < count else 0


def _token_choices(maps: inspection.AttentionMaps) -> list[tuple[str, int]]:
    return [("all tokens", ALL_TOKENS)] + [(f"{i}: {label}", i) for i, label in enumerate(maps.labels)]


def head_figures(maps: inspection.AttentionMaps | None, layer: int | None, head: int | None, token: int | None):
    """The large heatmap and the head view for the chosen layer/head (or means) and token."""
    if maps is None:
        return None, None
    try:
        layer, head = _selection(layer), _selection(head)
        selected = None if token is None or int(token) == ALL_TOKENS or int(token) >= maps.length else int(token)
        return (
            inspection.attention_head_figure(maps, layer, head),
            inspection.head_view_figure(maps, layer, head, selected=selected),
        )
    except Exception as error:
        raise _fail(error) from error


def inspect_text(run_dir: str | None, checkpoint: str | None, text: str, layer: int | None, head: int | None):
    """Attention and per-token loss of `text`: (summary, grid, head map, head view, statistics, maps,
    token choices, layer choices, head choices, per-token loss HTML)."""
    loaded = _load(run_dir, checkpoint)
    try:
        maps = inspection.compute_attention(loaded.model, loaded.tokenizer, text)
        losses = inspection.token_losses(loaded.model, loaded.tokenizer, text)
        stats = inspection.head_statistics(maps) if maps.length > 1 else pd.DataFrame()
    except Exception as error:
        raise _fail(error) from error
    layer, head = _valid_index(layer, maps.n_layer), _valid_index(head, maps.n_head)
    head_map, view = head_figures(maps, layer, head, ALL_TOKENS)
    config = loaded.model.config
    summary = (
        f"**{loaded.run_dir.name}** · {loaded.checkpoint} (step {loaded.step}) · {config.n_layer} layers × "
        f"{config.n_head} heads · {maps.length} tokens (at most {inspection.token_cap(loaded.model)} are inspected)"
    )
    summary += "".join(f"\n\n⚠ {note}" for note in maps.notes)
    return (
        summary,
        inspection.attention_grid_figure(maps),
        head_map,
        view,
        stats,
        maps,
        gr.update(choices=_token_choices(maps), value=ALL_TOKENS),
        gr.update(choices=_index_choices("layer", maps.n_layer), value=layer),
        gr.update(choices=_index_choices("head", maps.n_head), value=head),
        inspection.token_loss_html(losses, loaded.tokenizer),
    )


def replay_training(run_dir: str | None, text: str, layer: int | None, head: int | None):
    """The chosen head's attention at every snapshot checkpoint of the run (and the last one)."""
    if not run_dir:
        raise gr.Error("Choose a run first.")
    try:
        infos = list_checkpoints(run_dir)
    except Exception as error:
        raise _fail(error) from error
    snapshots = [info for info in infos if info.name.startswith("snapshot:")]
    last = [info for info in infos if info.name == "last"]
    if last and (not snapshots or last[0].step > snapshots[-1].step):
        snapshots += last
    if len(snapshots) < 2:
        raise gr.Error(
            f"{Path(run_dir).name} has {len(snapshots)} checkpoint(s) to replay; a run keeps snapshots while it "
            "trains (the trainer's snapshot setting), so train a new run to watch a head form."
        )
    try:
        frames = [
            (info.step, inspection.compute_attention(run.model, run.tokenizer, text))
            for info in snapshots
            for run in [get_run(run_dir, info.name)]
        ]
        return inspection.training_replay_figure(frames, _selection(layer), _selection(head))
    except Exception as error:
        raise _fail(error) from error


def embedding_views(run_dir: str | None, checkpoint: str | None, n: int, dims: str, color_by: str):
    """(embedding scatter, note on where frequencies come from, position-similarity heatmap)."""
    loaded = _load(run_dir, checkpoint)
    try:
        counts, note = inspection.token_counts(loaded.config, loaded.tokenizer)
        if counts is None:
            note += " Showing the first tokens in GPT-2's merge order instead (roughly GPT-2's own frequencies)."
        scatter = inspection.embedding_figure(
            loaded.model, loaded.tokenizer, counts, n=int(n), dims=3 if dims == "3D" else 2, color_by=color_by
        )
        return scatter, note, inspection.position_similarity_figure(loaded.model)
    except Exception as error:
        raise _fail(error) from error


def neighbours_table(run_dir: str | None, checkpoint: str | None, token: str, seen_only: bool) -> pd.DataFrame:
    """Nearest tokens to `token` by cosine similarity of their embeddings."""
    loaded = _load(run_dir, checkpoint)
    try:
        counts = inspection.token_counts(loaded.config, loaded.tokenizer)[0] if seen_only else None
        return inspection.nearest_neighbours(loaded.model, loaded.tokenizer, token, k=15, counts=counts)
    except Exception as error:
        raise _fail(error) from error


def _checkpoints_update(run_dir: str | None):
    try:
        names = checkpoint_choices(run_dir) if run_dir else []
    except Exception as error:
        raise _fail(error) from error
    return gr.update(choices=names, value="last" if "last" in names else (names[0] if names else None))


def build_inspect_tab(dirs: AppDirs | None = None) -> None:
    """The Inspect tab's components and events (called inside `gr.Tab("Inspect")`). `dirs` says where the
    app keeps its runs (default: `checkpoints/`)."""
    dirs = dirs or AppDirs(data=DEFAULT_DATA_DIR, runs=CHECKPOINTS_DIR)
    default_run = default_run_value(dirs)
    with gr.Row():
        run = gr.Dropdown(run_choices(dirs), value=default_run, label="Run", elem_id="insp-run", scale=3)
        checkpoint = gr.Dropdown(checkpoint_choices(default_run) if default_run else [],
                                 value="last" if default_run else None, label="Checkpoint",
                                 elem_id="insp-checkpoint", scale=2)
        refresh = gr.Button("↻ Runs", elem_id="insp-refresh", scale=0, min_width=80)
    text = gr.Textbox(DEFAULT_TEXT, lines=4, max_lines=12, elem_id="insp-text",
                      label=f"Text to inspect (the first {inspection.MAX_TOKENS} tokens are used, "
                            "fewer when the model's context is shorter)")
    go_button = gr.Button("Inspect", variant="primary", elem_id="insp-go")
    summary = gr.Markdown("Choose a run and a checkpoint, edit the text if you like, and press **Inspect**.",
                          elem_id="insp-summary")
    maps = gr.State(None)
    with gr.Tabs():
        with gr.Tab("Attention", id="insp-attention"):
            grid = gr.Plot(label="Every layer × head", elem_id="insp-grid")
            with gr.Row():
                layer = gr.Dropdown(_index_choices("layer", 1), value=0, label="Layer", elem_id="insp-layer")
                head = gr.Dropdown(_index_choices("head", 1), value=0, label="Head", elem_id="insp-head")
                token = gr.Dropdown([("all tokens", ALL_TOKENS)], value=ALL_TOKENS, label="Head view: token",
                                    elem_id="insp-token")
            with gr.Row():
                with gr.Column(scale=3):
                    head_map = gr.Plot(label="One head", elem_id="insp-head-map")
                with gr.Column(scale=2):
                    gr.Markdown(HEAD_VIEW_HELP)
                    head_view = gr.Plot(label="Head view", elem_id="insp-head-view")
            gr.Markdown(
                "**Per-head statistics** over query positions 1..T-1: mean entropy of the attention row (bits), "
                "mean weight on the previous token, on the first token and on the token itself. Click a column "
                "header to sort, e.g. by `previous_token` to find previous-token heads."
            )
            stats = gr.Dataframe(elem_id="insp-stats", interactive=False, wrap=True)
        with gr.Tab("Across training", id="insp-training"):
            gr.Markdown(
                "The head chosen under **Attention** (layer, head or means), recomputed at each snapshot the "
                "trainer kept while the run trained. Drag the step slider under the map, or press play."
            )
            replay_button = gr.Button("Replay training for this head", elem_id="insp-replay-go")
            replay = gr.Plot(label="Across training", elem_id="insp-replay")
        with gr.Tab("Embeddings", id="insp-embeddings"):
            with gr.Row():
                count = gr.Slider(20, 1000, value=300, step=10, label="Most frequent tokens", elem_id="insp-emb-n")
                dims = gr.Radio(["2D", "3D"], value="2D", label="PCA projection", elem_id="insp-emb-dims")
                color = gr.Radio([("frequency", "frequency"), ("token class", "class")], value="class",
                                 label="Colour by", elem_id="insp-emb-color")
            emb_note = gr.Markdown(elem_id="insp-emb-note")
            scatter = gr.Plot(label="Token embeddings", elem_id="insp-emb")
            with gr.Row():
                query = gr.Textbox("␣king", label="Nearest neighbours of token (␣ or a space for a leading space, "
                                   "or #id)", elem_id="insp-nn-token", scale=3)
                seen_only = gr.Checkbox(True, label="only tokens seen in training", elem_id="insp-nn-seen", scale=1)
                nn_button = gr.Button("Find neighbours", elem_id="insp-nn-go", scale=1)
            neighbours = gr.Dataframe(elem_id="insp-nn", interactive=False)
            positions = gr.Plot(label="Position embeddings", elem_id="insp-pos")
        with gr.Tab("Per-token loss", id="insp-loss-tab"):
            gr.Markdown(
                "The text scored as in training, after an `<|endoftext|>` token: each token coloured by its "
                "surprisal (−log₂ of the probability the model gave it). Hover a token for the model's top-5 "
                "predictions at that position."
            )
            loss_html = gr.HTML(elem_id="insp-loss", css_template=inspection.TOKEN_LOSS_CSS)

    embed_inputs = [run, checkpoint, count, dims, color]
    embed_outputs = [scatter, emb_note, positions]
    gr.on(
        [go_button.click, text.submit],
        inspect_text,
        [run, checkpoint, text, layer, head],
        [summary, grid, head_map, head_view, stats, maps, token, layer, head, loss_html],
        api_name="inspect",
        concurrency_id="inspect",
    ).then(embedding_views, embed_inputs, embed_outputs, api_name="embeddings", concurrency_id="inspect")
    gr.on([layer.input, head.input, token.input], head_figures, [maps, layer, head, token],
          [head_map, head_view], api_name="head", concurrency_id="inspect")
    gr.on([count.release, dims.input, color.input], embedding_views, embed_inputs, embed_outputs,
          api_visibility="private", concurrency_id="inspect")
    replay_button.click(replay_training, [run, text, layer, head], replay, api_name="replay",
                        concurrency_id="inspect")
    gr.on([nn_button.click, query.submit], neighbours_table, [run, checkpoint, query, seen_only], neighbours,
          api_name="neighbours", concurrency_id="inspect")
    run.change(_checkpoints_update, run, checkpoint, api_visibility="private")
    refresh.click(lambda current: gr.update(choices=run_choices(dirs), value=current), run, run,
                  api_visibility="private")
