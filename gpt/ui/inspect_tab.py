"""The Inspect tab: head types, attention, the logit lens, per-token loss and embeddings of any run's checkpoint.

Layout in `build(dirs)`, events in `wire(dirs, tab, demo)`. The handlers are module-level functions of
values (`inspect_text`, `logit_lens_view`, `select_head`, `head_figures`, `replay_training`, `embedding_views`,
`neighbours_table`, `download_views`), the app's folders first, so tests call them without a browser. Every
number comes from `gpt.inspection` and every figure from `gpt.figures`; the run and checkpoint are resolved
only through the app's own list of runs (`gpt.ui.picker`), never passed from a dropdown to a loader.

What goes to the browser is kept small: the every-head attention grid is one palette PNG per head (255
weight levels, clickable), the head-type grids are small HTML tables; only the one head shown large has
full precision. Head-type scores are computed once per checkpoint file (the run's fixed probe, the same
the trainer scores at each evaluation) and kept in a small cache. Every view can be downloaded as one
self-contained HTML page.
"""

from __future__ import annotations

import functools
import html
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from gpt import figures, inspection
from gpt.errors import UserInputError
from gpt.run import LoadedRun, Run
from gpt.ui.common import AppDirs, handle_errors, safe_name
from gpt.ui.models import get_run
from gpt.ui.picker import Picker, build_picker, load_picked, wire_picker
from gpt.ui.runs import known_run

DEFAULT_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?"
)
MEAN = -1  # dropdown value for "mean over layers / heads" and for "all tokens" in the head view
ALL_TOKENS = -1
TOP_K = 10  # alternatives shown on hover in the per-token view
HEAD_VIEW_HELP = (
    "Head view: each token on the left is joined to the tokens it attends to on the right; thicker, darker "
    "lines carry more weight. Pick a token to keep only its lines and see each weight on hover."
)
STATS_COLUMNS = ["layer", "head", "entropy_bits", "previous_token", "first_token", "self", "pattern",
                 "previous_token_score", "duplicate_token_score", "induction_score"]
# Clicking a cell of a grid (an element with data-layer / data-head) selects that head.
SELECT_HEAD_JS = """
element.addEventListener('click', (event) => {
  const cell = event.target.closest('[data-head]');
  if (cell) trigger('click', {layer: Number(cell.dataset.layer), head: Number(cell.dataset.head)});
});
"""


class _Memo:
    """A small least-recently-used store of results computed per checkpoint file, shared by all sessions
    (a second user, or the same text again, gets them at once)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[tuple, object] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple, compute: Callable[[], object]) -> object:
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        value = compute()
        with self.lock:
            self.entries[key] = value
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return value


_scores = _Memo(16)  # head-type scores of checkpoint files
_embeddings = _Memo(8)  # embedding figures of checkpoint files and settings


# -- numbers of a checkpoint ------------------------------------------------------------------------------
def _file_stamp(loaded: LoadedRun) -> tuple:
    """(run folder, checkpoint, file modification time): what a cached view of a checkpoint depends on."""
    path = Run.open(loaded.run_dir).checkpoint_path(loaded.checkpoint)[1]
    return str(loaded.run_dir.resolve()), loaded.checkpoint, path.stat().st_mtime_ns


def checkpoint_scores(loaded: LoadedRun) -> tuple[dict | None, list[str]]:
    """The `heads` row of a loaded checkpoint on its run's probe, and notes for the page (what the probe
    lacks, or why it cannot run), computed once per checkpoint file."""

    def compute() -> tuple[dict | None, list[str]]:
        try:
            probe = inspection.probe_for_run(loaded.config)
            return inspection.score_probe(loaded.model, probe), probe.notes
        except UserInputError as error:  # a context or validation text too short for the probe: say so
            return None, [f"head-type scores are not available: {error}"]

    return _scores.get(_file_stamp(loaded), compute)


def statistics_table(maps: inspection.AttentionMaps, row: dict | None) -> pd.DataFrame:
    """Per-head statistics of the text, with the checkpoint's three head-type scores on the probe."""
    if maps.length < 2:
        return pd.DataFrame(columns=STATS_COLUMNS)
    table = inspection.head_statistics(maps)
    heads = list(zip(table["layer"], table["head"], strict=True))
    for name in ("previous_token", "duplicate_token", "induction"):
        table[f"{name}_score"] = [round(row[name][layer][head], 3) if row else None for layer, head in heads]
    return table


def _scores_view(row: dict | None, notes: list[str]) -> str:
    notes_html = "".join(f'<p class="hs-note">⚠ {html.escape(note)}</p>' for note in notes)
    if row is None:
        return notes_html
    return figures.head_scores_html(row) + notes_html


def selection_style(layer: int | None, head: int | None) -> str:
    """A style rule outlining the selected head in every grid of the tab (one small output, so the grids
    themselves are not sent again when the selection changes); nothing for a mean."""
    if layer is None or head is None or MEAN in (int(layer), int(head)):
        return ""
    cell = f'[data-layer="{int(layer)}"][data-head="{int(head)}"]'
    return (f"<style>#insp-grid .ag-cell{cell}, #insp-scores .hs-cell{cell} "
            "{ border-color: #d62728 !important; }</style>")


# -- handlers ------------------------------------------------------------------------------------------------
def _selection(value: int | None) -> int | None:
    return None if value is None or int(value) == MEAN else int(value)


def _index_choices(kind: str, count: int) -> list[tuple[str, int]]:
    return [(f"mean over {kind}s", MEAN)] + [(f"{kind} {i}", i) for i in range(count)]


def _valid_index(value: int | None, count: int) -> int:
    """The dropdown value kept when it exists in a model with `count` layers/heads, else 0."""
    return int(value) if value is not None and MEAN <= int(value) < count else 0


def _token_choices(maps: inspection.AttentionMaps) -> list[tuple[str, int]]:
    return [("all tokens", ALL_TOKENS)] + [(f"{i}: {label}", i) for i, label in enumerate(maps.labels)]


def head_figures(maps: inspection.AttentionMaps | None, layer: int | None, head: int | None, token: int | None,
                 views: dict | None = None):
    """The large heatmap and the head view for the chosen layer/head (or means) and token, the views kept
    for download, and the selection outline."""
    if maps is None:
        return None, None, views, ""
    layer, head = _selection(layer), _selection(head)
    selected = None if token is None or int(token) == ALL_TOKENS or int(token) >= maps.length else int(token)
    head_map = figures.attention_head_figure(maps, layer, head)
    view = figures.head_view_figure(maps, layer, head, selected=selected)
    return (head_map, view, {**(views or {}), "Attention of one head": head_map, "Head view": view},
            selection_style(layer, head))


def select_head(maps: inspection.AttentionMaps | None, layer: int, head: int, token: int | None,
                views: dict | None = None):
    """A head picked in a grid: the layer and head dropdowns set to it, and its figures."""
    if maps is None:
        raise UserInputError("press Inspect first")
    inspection.check_index("layer", layer, maps.n_layer)
    inspection.check_index("head", head, maps.n_head)
    return gr.update(value=layer), gr.update(value=head), *head_figures(maps, layer, head, token, views)


def inspect_text(dirs: AppDirs, run: str | None, checkpoint: str | None, text: str, layer: int | None = 0,
                 head: int | None = 0):
    """Every view of `text` through the picked checkpoint but the logit lens (`logit_lens_view`, chained
    after it): (summary, attention grid, one head, head view, statistics, maps, token choices, layer
    choices, head choices, per-token view, head-type grids, views kept for download, selection outline)."""
    if not run:
        raise UserInputError("choose a run first (train one in the Train tab, or use the shipped model)")
    loaded = load_picked(dirs, run, checkpoint)
    maps = inspection.compute_attention(loaded.model, loaded.tokenizer, text)
    losses = inspection.token_losses(loaded.model, loaded.tokenizer, text, top_k=TOP_K)
    row, notes = checkpoint_scores(loaded)
    layer, head = _valid_index(layer, maps.n_layer), _valid_index(head, maps.n_head)
    head_map, view, _, selection = head_figures(maps, layer, head, ALL_TOKENS)
    config = loaded.model.config
    summary = (
        f"**{loaded.run_dir.name}** · {loaded.checkpoint} (step {loaded.step}) · {config.n_layer} layers × "
        f"{config.n_head} heads · {maps.length} tokens (at most {inspection.token_cap(loaded.model)} are inspected)"
    )
    if maps.length < 2:
        maps.notes.append("the per-head statistics need a text of at least 2 tokens")
    if config.n_head == 1:
        maps.notes.append("this model has one head per layer: each grid is one column and the mean over heads is "
                          "that head")
    summary += "".join(f"\n\n⚠ {note}" for note in maps.notes)
    grid = figures.attention_grid_html(maps)
    loss_view = figures.token_loss_html(losses, loaded.tokenizer)
    scores = _scores_view(row, notes)
    views = {"Head-type scores": scores, "Attention of every head": grid, "Attention of one head": head_map,
             "Head view": view, "Per-token loss": loss_view}
    return (
        summary,
        grid,
        head_map,
        view,
        statistics_table(maps, row),
        maps,
        gr.update(choices=_token_choices(maps), value=ALL_TOKENS),
        gr.update(choices=_index_choices("layer", maps.n_layer), value=layer),
        gr.update(choices=_index_choices("head", maps.n_head), value=head),
        loss_view,
        scores,
        views,
        selection,
    )


def logit_lens_view(dirs: AppDirs, run: str | None, checkpoint: str | None, text: str,
                    views: dict | None = None):
    """The logit lens of `text` (one unembedding per layer: the costliest view, so it arrives right after
    the others) and the views kept for download."""
    loaded = load_picked(dirs, run, checkpoint)
    figure = figures.logit_lens_figure(inspection.logit_lens(loaded.model, loaded.tokenizer, text))
    return figure, {**(views or {}), "Logit lens": figure}


def replay_training(dirs: AppDirs, run: str | None, text: str, layer: int | None, head: int | None,
                    views: dict | None = None):
    """The chosen head's attention and the head-type grids at every snapshot the run kept (and its last
    checkpoint): (attention replay, head-type replay, views)."""
    run_dir = known_run(dirs, run)
    infos = Run.open(run_dir).checkpoints()
    snapshots = [info for info in infos if info.name.startswith("snapshot:")]
    last = [info for info in infos if info.name == "last"]
    if last and (not snapshots or last[0].step > snapshots[-1].step):
        snapshots += last
    if len(snapshots) < 2:
        raise UserInputError(
            f"{run_dir.name} has {len(snapshots)} checkpoint(s) to replay; a run keeps snapshots while it "
            "trains (the trainer's snapshot setting), so train a new run to watch a head form."
        )
    attention, scores, notes = [], [], []
    for info in snapshots:
        loaded = get_run(run_dir, info.name)
        attention.append((info.step, inspection.compute_attention(loaded.model, loaded.tokenizer, text)))
        row, notes = checkpoint_scores(loaded)
        if row is not None:
            scores.append((info.step, row))
    attention_replay = figures.training_replay_figure(attention, _selection(layer), _selection(head))
    scores_replay = figures.head_scores_replay_figure(scores) if scores else None
    if scores_replay is None:
        gr.Warning(" ".join(notes))
    updated = {**(views or {}), "Attention across training": attention_replay}
    if scores_replay is not None:
        updated["Head-type scores across training"] = scores_replay
    return attention_replay, scores_replay, updated


def _frequency_note(loaded: LoadedRun, counts_note: str, found: bool) -> str:
    """Where the embedding view's frequencies come from, naming the run and data folder (never a path)."""
    if found:
        return f"**{loaded.run_dir.name}**: {counts_note}"
    recorded = loaded.config.data.dir
    folder = f"its data folder {Path(recorded).name!r} is not on this machine" if recorded else "it records no data"
    return (f"**{loaded.run_dir.name}**: token frequencies of the training data are unavailable ({folder}). Showing "
            "the first tokens in GPT-2's merge order instead (roughly GPT-2's own frequencies).")


def embedding_views(dirs: AppDirs, run: str | None, checkpoint: str | None, n: int = 300, dims: str = "2D",
                    color_by: str = "class", views: dict | None = None):
    """(embedding scatter, note on where frequencies come from, position-similarity heatmap, views). They do
    not depend on the text, so they are kept per checkpoint file and settings."""
    loaded = load_picked(dirs, run, checkpoint)

    def compute() -> tuple:
        counts, counts_note = inspection.token_counts(loaded.config.data.dir, loaded.tokenizer)
        scatter = figures.embedding_figure(loaded.model, loaded.tokenizer, counts, n=int(n),
                                           dims=3 if dims == "3D" else 2, color_by=color_by)
        note = _frequency_note(loaded, counts_note, counts is not None)
        return scatter, note, figures.position_similarity_figure(loaded.model)

    scatter, note, positions = _embeddings.get((*_file_stamp(loaded), int(n), dims, color_by), compute)
    return scatter, note, positions, {**(views or {}), "Token embeddings": scatter, "Position embeddings": positions}


def neighbours_table(dirs: AppDirs, run: str | None, checkpoint: str | None, token: str,
                     seen_only: bool = True) -> pd.DataFrame:
    """Nearest tokens to `token` by cosine similarity of their embeddings."""
    loaded = load_picked(dirs, run, checkpoint)
    counts = inspection.token_counts(loaded.config.data.dir, loaded.tokenizer)[0] if seen_only else None
    return inspection.nearest_neighbours(loaded.model, loaded.tokenizer, token, k=15, counts=counts)


def download_views(run: str | None, checkpoint: str | None, views: dict | None) -> str:
    """Every view shown so far as one self-contained HTML file (the path the browser downloads)."""
    if not views:
        raise UserInputError("press Inspect first: there is nothing to download yet")
    title = f"GPT Playground · {run} · {checkpoint}"
    name = safe_name(f"inspect-{run}-{(checkpoint or 'last').replace(':', '-')}", default="inspect")
    path = Path(tempfile.mkdtemp(prefix="gpt-inspect-")) / f"{name}.html"
    path.write_text(figures.report_html(title, views), encoding="utf-8")
    return str(path)


# -- layout -------------------------------------------------------------------------------------------------
@dataclass
class InspectTab:
    picker: Picker
    text: gr.Textbox
    go_button: gr.Button
    summary: gr.Markdown
    download: gr.Button
    report: gr.File
    maps: gr.State
    views: gr.State
    selection: gr.HTML
    scores: gr.HTML
    grid: gr.HTML
    layer: gr.Dropdown
    head: gr.Dropdown
    token: gr.Dropdown
    head_map: gr.Plot
    head_view: gr.Plot
    stats: gr.Dataframe
    replay_button: gr.Button
    replay: gr.Plot
    scores_replay: gr.Plot
    lens: gr.Plot
    loss_html: gr.HTML
    count: gr.Slider
    dims: gr.Radio
    color: gr.Radio
    emb_note: gr.Markdown
    scatter: gr.Plot
    query: gr.Textbox
    seen_only: gr.Checkbox
    nn_button: gr.Button
    neighbours: gr.Dataframe
    positions: gr.Plot


def build(dirs: AppDirs) -> InspectTab:
    """The Inspect tab's components (call inside `gr.Tab("Inspect")`)."""
    with gr.Row():
        picker = build_picker(dirs, "insp")
    text = gr.Textbox(DEFAULT_TEXT, lines=4, max_lines=12, elem_id="insp-text",
                      label=f"Text to inspect (the first {inspection.MAX_TOKENS} tokens are used, "
                            "fewer when the model's context is shorter)")
    with gr.Row():
        go_button = gr.Button("Inspect", variant="primary", elem_id="insp-go", scale=3)
        download = gr.Button("Download these views (HTML)", elem_id="insp-download", scale=1)
    summary = gr.Markdown("Choose a run and a checkpoint, edit the text if you like, and press **Inspect**.",
                          elem_id="insp-summary")
    report = gr.File(label="Views as one HTML page", elem_id="insp-report", visible=False)
    maps = gr.State(None)
    views = gr.State({})
    selection = gr.HTML(elem_id="insp-selection", js_on_load=None)
    with gr.Tabs():
        with gr.Tab("Heads and attention", id="insp-attention"):
            gr.Markdown(
                "**Head types** of this checkpoint on the run's fixed probe (random tokens repeated twice, and "
                "windows of its validation text), as in TransformerLens' head detector: the share of each "
                "head's attention that goes where its type says (1 = a perfect head). An induction score of "
                f"{inspection.INDUCTION_THRESHOLD:g} or more is an induction head. **Click a head** in any grid "
                "to show it large below."
            )
            scores = gr.HTML(elem_id="insp-scores", css_template=figures.HEAD_SCORES_CSS, js_on_load=SELECT_HEAD_JS)
            gr.Markdown("**Attention of every head** on your text:")
            grid = gr.HTML(elem_id="insp-grid", css_template=figures.ATTENTION_GRID_CSS, js_on_load=SELECT_HEAD_JS)
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
                "**Per-head statistics** of this text over query positions 1..T-1: mean entropy of the attention "
                "row (bits), mean weight on the previous token, on the first token and on the token itself; the "
                "`_score` columns are the head-type scores on the probe (see Heads). Click a column header to sort."
            )
            stats = gr.Dataframe(pd.DataFrame(columns=STATS_COLUMNS), elem_id="insp-stats", interactive=False,
                                 wrap=True)
        with gr.Tab("Across training", id="insp-training"):
            gr.Markdown(
                "The head chosen under **Heads and attention** (layer, head or means) and the head-type grids, "
                "recomputed at each snapshot the trainer kept while the run trained. Drag the step slider under a "
                "figure, or press play."
            )
            replay_button = gr.Button("Replay training", elem_id="insp-replay-go")
            replay = gr.Plot(label="The chosen head across training", elem_id="insp-replay")
            scores_replay = gr.Plot(label="Head types across training", elem_id="insp-scores-replay")
        with gr.Tab("Logit lens", id="insp-lens-tab"):
            gr.Markdown(
                "What the model would predict if it stopped after each layer: the final norm and the unembedding "
                "applied to the residual stream. Colour: the probability of the actual next token; hover a cell "
                "for the top prediction there and the actual token's rank."
            )
            lens = gr.Plot(label="Logit lens", elem_id="insp-lens")
        with gr.Tab("Per-token loss", id="insp-loss-tab"):
            gr.Markdown(
                "The text scored as in training, after an `<|endoftext|>` token: each token coloured by its "
                "log-probability (as surprisal, −log₂ p). Hover a token for its log-probability, its rank among "
                f"the model's predictions and the top-{TOP_K} alternatives."
            )
            loss_html = gr.HTML(elem_id="insp-loss", css_template=figures.TOKEN_LOSS_CSS)
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
            neighbours = gr.Dataframe(pd.DataFrame(columns=["rank", "token", "id", "cosine", "count"]),
                                      elem_id="insp-nn", interactive=False)
            positions = gr.Plot(label="Position embeddings", elem_id="insp-pos")
    return InspectTab(picker, text, go_button, summary, download, report, maps, views, selection, scores, grid, layer,
                      head,
                      token, head_map, head_view, stats, replay_button, replay, scores_replay, lens, loss_html, count,
                      dims, color, emb_note, scatter, query, seen_only, nn_button, neighbours, positions)


# -- events -------------------------------------------------------------------------------------------------
def wire(dirs: AppDirs, tab: InspectTab, demo: gr.Blocks) -> None:
    """The tab's events; everything that runs a model shares one queue slot (`concurrency_id="inspect"`)."""
    wire_picker(dirs, tab.picker, demo, "inspect")
    run, checkpoint = tab.picker.run, tab.picker.checkpoint

    def bound(handler):
        return functools.partial(handle_errors(handler), dirs)

    @handle_errors
    def clicked(maps, token, views, event: gr.EventData):
        return select_head(maps, int(event.layer), int(event.head), token, views)

    embed_inputs = [run, checkpoint, tab.count, tab.dims, tab.color, tab.views]
    embed_outputs = [tab.scatter, tab.emb_note, tab.positions, tab.views]
    gr.on(
        [tab.go_button.click, tab.text.submit],
        bound(inspect_text),
        [run, checkpoint, tab.text, tab.layer, tab.head],
        [tab.summary, tab.grid, tab.head_map, tab.head_view, tab.stats, tab.maps, tab.token, tab.layer, tab.head,
         tab.loss_html, tab.scores, tab.views, tab.selection],
        api_name="inspect",
        concurrency_id="inspect",
    ).success(
        bound(logit_lens_view), [run, checkpoint, tab.text, tab.views], [tab.lens, tab.views], api_name="logit_lens",
        concurrency_id="inspect",
    ).success(bound(embedding_views), embed_inputs, embed_outputs, api_name="embeddings", concurrency_id="inspect")
    figure_outputs = [tab.head_map, tab.head_view, tab.views, tab.selection]
    gr.on([tab.layer.input, tab.head.input, tab.token.input], handle_errors(head_figures),
          [tab.maps, tab.layer, tab.head, tab.token, tab.views], figure_outputs, api_name="head",
          concurrency_id="inspect")
    head_outputs = [tab.layer, tab.head, *figure_outputs]
    for grid in (tab.grid, tab.scores):
        grid.click(clicked, [tab.maps, tab.token, tab.views], head_outputs, api_visibility="private",
                   concurrency_id="inspect")
    gr.on([tab.count.release, tab.dims.input, tab.color.input], bound(embedding_views), embed_inputs, embed_outputs,
          api_visibility="private", concurrency_id="inspect")
    tab.replay_button.click(bound(replay_training), [run, tab.text, tab.layer, tab.head, tab.views],
                            [tab.replay, tab.scores_replay, tab.views], api_name="replay", concurrency_id="inspect")
    gr.on([tab.nn_button.click, tab.query.submit], bound(neighbours_table),
          [run, checkpoint, tab.query, tab.seen_only], tab.neighbours, api_name="neighbours", concurrency_id="inspect")
    @handle_errors
    def download(run_name, checkpoint_name, views):
        return gr.update(value=download_views(run_name, checkpoint_name, views), visible=True)

    tab.download.click(download, [run, checkpoint, tab.views], tab.report, api_name="inspect_download")
