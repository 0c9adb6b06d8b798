"""Tests of gpt/inspection.py and the Inspect tab: the figures draw the model's own numbers."""

from __future__ import annotations

import html
import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from gpt import figures, inspection
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import Tokenizer, gpt2_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    options = {"vocab_size": 50257, "context_length": 64, "n_layer": 2, "n_head": 3, "n_embd": 24, **overrides}
    return GPT(GPTConfig(**options)).eval()


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def maps(model, tokenizer) -> inspection.AttentionMaps:
    return inspection.compute_attention(model, tokenizer, TEXT)


def explicit_probs(model: GPT, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        _, attentions = model.forward_with_attention(torch.tensor([ids]))
    return torch.stack([a[0] for a in attentions]).numpy()  # (L, H, T, T)


def causal(matrix: np.ndarray) -> np.ndarray:
    return np.where(np.tri(matrix.shape[-1], dtype=bool), matrix, np.nan)


# -- attention --------------------------------------------------------------------------------------------
def test_attention_probabilities_are_the_models(model, tokenizer, maps):
    ids = tokenizer.encode(TEXT)
    assert maps.ids == ids
    assert maps.labels[0] == "First" and "↵" in maps.labels and "␣speak" in maps.labels
    expected = explicit_probs(model, ids)
    np.testing.assert_array_equal(maps.probs, expected)
    assert maps.probs.shape == (2, 3, len(ids), len(ids))
    np.testing.assert_allclose(maps.probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps.probs, k=1) == 0)


def test_grid_figure_draws_every_head_unchanged(maps):
    fig = figures.attention_grid_figure(maps)
    assert len(fig.data) == maps.n_layer * maps.n_head
    for k, trace in enumerate(fig.data):
        layer, head = divmod(k, maps.n_head)
        np.testing.assert_array_equal(np.asarray(trace.z), causal(maps.probs[layer, head]))
        assert f"layer {layer}, head {head}" in trace.hovertemplate
    titles = {a.text for a in fig.layout.annotations}
    assert {"head 0", "head 2", "layer 0", "layer 1"} <= titles


@pytest.mark.parametrize(
    ("layer", "head", "select"),
    [
        (1, 2, lambda p: p[1, 2]),
        (None, 0, lambda p: p[:, 0].mean(axis=0)),
        (0, None, lambda p: p[0].mean(axis=0)),
        (None, None, lambda p: p.mean(axis=(0, 1))),
    ],
)
def test_head_figure_is_the_head_or_its_mean(maps, layer, head, select):
    fig = figures.attention_head_figure(maps, layer, head)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), causal(select(maps.probs)), rtol=1e-6)
    assert list(fig.layout.xaxis.ticktext) == maps.labels
    assert fig.data[0].text[5][2] == f"query 5 {maps.labels[5]} → key 2 {maps.labels[2]}"


def test_head_figure_rejects_missing_heads(maps):
    with pytest.raises(UserInputError, match="heads 0..2"):
        figures.attention_head_figure(maps, 0, 3)


def _segments(fig: go.Figure) -> dict[tuple[int, int], float]:
    """(query, key) -> line width of every drawn line of a head view."""
    drawn = {}
    for trace in fig.data:
        if trace.mode != "lines":
            continue
        xs, ys = list(trace.x), list(trace.y)
        for start in range(0, len(xs), 3):
            drawn[(-int(ys[start]), -int(ys[start + 1]))] = trace.line.width
    return drawn


def test_head_view_draws_each_weight_as_a_line(maps):
    matrix = maps.probs[1, 0]
    fig = figures.head_view_figure(maps, 1, 0, min_weight=0.05)
    drawn = _segments(fig)
    expected = {(i, j) for i in range(maps.length) for j in range(i + 1) if matrix[i, j] >= 0.05}
    assert set(drawn) == expected
    by_weight = sorted(drawn, key=lambda pair: matrix[pair])
    widths = [drawn[pair] for pair in by_weight]
    assert widths == sorted(widths) and widths[-1] > widths[0]
    labels = [trace for trace in fig.data if trace.mode == "text"]
    assert [list(t.text) for t in labels] == [maps.labels, maps.labels]


def test_head_view_selection_keeps_one_tokens_lines(maps):
    fig = figures.head_view_figure(maps, 0, 1, selected=7, min_weight=0.5)
    assert {query for query, _ in _segments(fig)} == {7}
    assert len(_segments(fig)) == 8
    right = fig.data[-1]
    assert right.hovertext[3] == f"{maps.labels[7]} (7) → {maps.labels[3]} (3): {maps.probs[0, 1, 7, 3]:.4f}"
    assert "future" in right.hovertext[9]
    with pytest.raises(UserInputError):
        figures.head_view_figure(maps, 0, 1, selected=maps.length)


def test_text_is_capped_and_checked(model, tokenizer):
    long_text = "to be or not to be " * 60
    capped = inspection.compute_attention(model, tokenizer, long_text, max_tokens=inspection.MAX_TOKENS)
    assert capped.length == 64  # the model's context is shorter than MAX_TOKENS
    assert capped.truncated and "only the first 64" in capped.notes[0]
    assert inspection.compute_attention(model, tokenizer, long_text, max_tokens=10).length == 10
    with pytest.raises(UserInputError, match="empty"):
        inspection.compute_attention(model, tokenizer, "  \n")


def test_compact_vocabulary_goes_through_the_runs_tokenizer():
    full = gpt2_tokenizer()
    compact = Tokenizer(full.encode(" the cat sat on the mat."))
    model = tiny_model(vocab_size=compact.vocab_size)
    maps = inspection.compute_attention(model, compact, " the cat sat on the dog.")
    assert maps.labels == ["␣the", "␣cat", "␣sat", "␣on", "␣the", "<|endoftext|>", "."]
    assert "' dog'" in maps.notes[0] and "shown as <|endoftext|>" in maps.notes[0]
    np.testing.assert_array_equal(maps.probs, explicit_probs(model, maps.ids))


def test_compact_vocabulary_with_byte_tokens_spells_unknown_words():
    full = gpt2_tokenizer()
    compact = Tokenizer([*full.encode(" the cat sat on the mat."), *range(256)])
    model = tiny_model(vocab_size=compact.vocab_size)
    maps = inspection.compute_attention(model, compact, " the cat sat on the dog.")
    assert maps.labels == ["␣the", "␣cat", "␣sat", "␣on", "␣the", "␣", "d", "o", "g", "."]
    assert "' dog'" in maps.notes[0] and "spelled with smaller tokens" in maps.notes[0]


@pytest.mark.parametrize("options", [{"position": "rope"}, {"norm": "rmsnorm", "activation": "swiglu", "bias": False}])
def test_attention_of_other_architectures(tokenizer, options):
    model = tiny_model(**options)
    maps = inspection.compute_attention(model, tokenizer, TEXT)
    np.testing.assert_array_equal(maps.probs, explicit_probs(model, maps.ids))


def hand_made_maps() -> inspection.AttentionMaps:
    T = 5
    previous = np.eye(T, k=-1)
    previous[0, 0] = 1.0
    first = np.zeros((T, T))
    first[:, 0] = 1.0
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    probs = np.stack([previous, first, uniform])[None].astype(np.float32)  # (1 layer, 3 heads, T, T)
    return inspection.AttentionMaps(list(range(T)), [str(i) for i in range(T)], probs)


def test_head_statistics_on_hand_made_attention():
    stats = inspection.head_statistics(hand_made_maps())
    assert list(stats.columns) == ["layer", "head", "entropy_bits", "previous_token", "first_token", "self", "pattern"]
    prev, first, uniform = (stats.iloc[h] for h in range(3))
    assert (prev.entropy_bits, prev.previous_token, prev.first_token, prev["self"]) == (0.0, 1.0, 0.25, 0.0)
    assert prev.pattern == "previous token"
    assert (first.entropy_bits, first.previous_token, first.first_token) == (0.0, 0.25, 1.0)
    assert first.pattern == "first token"
    # rows 1..4 of the uniform head attend to 2..5 tokens: entropy log2(n), 1/n on each of them
    assert uniform.entropy_bits == pytest.approx(np.mean(np.log2([2, 3, 4, 5])), abs=1e-3)
    assert uniform.previous_token == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 4, 1 / 5]), abs=1e-3)
    assert uniform.first_token == uniform.previous_token == uniform["self"]
    assert uniform.pattern == "mixed"


def test_head_statistics_need_two_tokens():
    one = inspection.AttentionMaps([0], ["a"], np.ones((1, 1, 1, 1), dtype=np.float32))
    with pytest.raises(UserInputError, match="at least 2 tokens"):
        inspection.head_statistics(one)


def test_training_replay_has_one_frame_per_snapshot(model, tokenizer, maps):
    later = tiny_model(seed=1)
    later_maps = inspection.compute_attention(later, tokenizer, TEXT)
    fig = figures.training_replay_figure([(0, maps), (50, later_maps)], 1, 2)
    assert [frame.name for frame in fig.frames] == ["0", "50"]
    np.testing.assert_array_equal(np.asarray(fig.frames[0].data[0].z), causal(maps.probs[1, 2]))
    np.testing.assert_array_equal(np.asarray(fig.frames[1].data[0].z), causal(later_maps.probs[1, 2]))
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), causal(later_maps.probs[1, 2]))
    assert [step.label for step in fig.layout.sliders[0].steps] == ["0", "50"]
    with pytest.raises(UserInputError, match="no snapshot"):
        figures.training_replay_figure([], 0, 0)


# -- embeddings -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [(" the", "word start"), ("the", "other"), (",", "punctuation"), (" 42", "digit"), ("\n", "other"),
     (" (", "punctuation")],
)
def test_token_class(text, expected):
    assert inspection.token_class(text) == expected


def test_pca_recovers_a_plane():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(50, 2)) * np.array([5.0, 1.0])
    basis, _ = np.linalg.qr(rng.normal(size=(8, 2)))
    vectors = plane @ basis.T + 3.0
    coords, share = inspection.pca(vectors, 2)
    assert share.sum() == pytest.approx(1.0)
    assert share[0] > share[1]
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(coords[:, None] - coords[None], axis=-1), distances, atol=1e-8)
    coords3, share3 = inspection.pca(vectors, 3)
    assert coords3.shape == (50, 3) and share3[2] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(UserInputError):
        inspection.pca(vectors, 4)


def write_data(tmp_path, gpt2_ids) -> dict:
    data = tmp_path / "data"
    data.mkdir()
    np.asarray(gpt2_ids, dtype=np.uint16).tofile(data / "train.bin")
    return {"data": {"dir": str(data)}}


def test_token_counts_from_the_runs_training_data(tmp_path, tokenizer):
    ids = tokenizer.encode(" the the the cat cat.")
    config = write_data(tmp_path, ids)
    counts, note = inspection.token_counts(config["data"]["dir"], tokenizer)
    the, cat = tokenizer.encode(" the cat")
    assert counts[the] == 3 and counts[cat] == 2 and counts.sum() == len(ids)
    assert "train.bin" in note
    assert inspection.most_frequent_tokens(counts, tokenizer, 10) == [the, cat, tokenizer.encode(".")[0]]
    compact = Tokenizer(ids)
    compact_counts, _ = inspection.token_counts(config["data"]["dir"], compact)
    assert compact_counts.tolist() == [counts[g] for g in compact.kept_gpt2_ids]


def test_token_counts_fall_back_without_data(tokenizer):
    counts, note = inspection.token_counts("/nonexistent/data", tokenizer)
    assert counts is None and "'/nonexistent/data' is not on this machine" in note
    assert "records no data folder" in inspection.token_counts(None, tokenizer)[1]
    fallback = inspection.most_frequent_tokens(None, tokenizer, 5)
    assert fallback == [256, 257, 258, 259, 260]  # GPT-2's first merges, single bytes skipped


def test_embedding_figure_shows_the_most_frequent_tokens(tmp_path, model, tokenizer):
    ids = tokenizer.encode(TEXT * 3)
    counts, _ = inspection.token_counts(write_data(tmp_path, ids)["data"]["dir"], tokenizer)
    fig = figures.embedding_figure(model, tokenizer, counts, n=12, dims=2, color_by="frequency")
    (trace,) = fig.data
    expected = inspection.most_frequent_tokens(counts, tokenizer, 12)
    assert list(trace.customdata) == expected
    top = expected[0]
    assert trace.hovertext[0].startswith(f"{tokenizer.token_display(top)} (id {top})")
    assert f"{counts[top]:,} times" in trace.hovertext[0]
    coords, _ = inspection.pca(inspection.token_embeddings(model)[expected], 2)
    np.testing.assert_allclose(trace.x, coords[:, 0])
    by_class = figures.embedding_figure(model, tokenizer, counts, n=12, dims=3, color_by="class")
    assert all(isinstance(t, go.Scatter3d) for t in by_class.data)
    assert sum(len(t.x) for t in by_class.data) == 12
    assert {t.name for t in by_class.data} <= set(inspection.TOKEN_CLASSES)


def test_nearest_neighbours_by_cosine(tokenizer):
    model = tiny_model()
    weight = model.token_embedding.weight
    king, queen, cat = tokenizer.encode(" king queen cat")
    with torch.no_grad():
        weight[queen] = 3.0 * weight[king] + 1e-4
        weight[cat] = -weight[king]
    table = inspection.nearest_neighbours(model, tokenizer, "␣king", k=5)
    assert table.iloc[0]["id"] == queen and table.iloc[0]["token"] == "␣queen"
    assert table.iloc[0]["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert king not in table["id"].tolist() and list(table["rank"]) == [1, 2, 3, 4, 5]
    expected = F.cosine_similarity(weight, weight[king : king + 1], dim=-1).detach()
    assert table.iloc[1]["cosine"] == pytest.approx(float(expected.topk(3).values[2]), abs=1e-4)
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    counts[[king, cat]] = 1
    seen = inspection.nearest_neighbours(model, tokenizer, " king", k=5, counts=counts)
    assert seen["id"].tolist() == [cat] and seen.iloc[0]["cosine"] == pytest.approx(-1.0, abs=1e-4)
    assert inspection.nearest_neighbours(model, tokenizer, f"#{king}", k=1).iloc[0]["id"] == queen
    with pytest.raises(UserInputError, match="2 tokens"):
        inspection.nearest_neighbours(model, tokenizer, " kingdom come")


def test_position_similarity(model):
    sims = inspection.position_similarity(model)
    assert sims.shape == (64, 64)
    np.testing.assert_allclose(np.diag(sims), 1.0, atol=1e-5)
    weights = model.position_embedding.weight.detach()
    assert sims[3, 10] == pytest.approx(float(F.cosine_similarity(weights[3], weights[10], dim=0)), abs=1e-5)
    fig = figures.position_similarity_figure(model)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), sims, atol=1e-6)
    rope = tiny_model(position="rope")
    assert inspection.position_similarity(rope) is None
    assert "RoPE" in figures.position_similarity_figure(rope).layout.annotations[0].text


# -- per-token loss -----------------------------------------------------------------------------------------
def test_token_losses_equal_the_models_loss(model, tokenizer):
    result = inspection.token_losses(model, tokenizer, TEXT)
    ids = tokenizer.encode(TEXT)
    inputs = torch.tensor([[tokenizer.eot_id] + ids[:-1]])
    with torch.no_grad():
        logits, loss = model(inputs, torch.tensor([ids]))
    assert result.ids == ids and len(result.losses) == len(ids)
    assert result.mean_loss == pytest.approx(float(loss), rel=1e-5)
    assert result.num_bytes == len(TEXT.encode("utf-8"))
    assert result.bits_per_byte == pytest.approx(float(loss) * len(ids) / (len(TEXT.encode()) * math.log(2)), rel=1e-5)
    probs = torch.softmax(logits[0], dim=-1)
    top = probs.topk(5, dim=-1)
    np.testing.assert_array_equal(result.top_ids, top.indices.numpy())
    np.testing.assert_allclose(result.top_probs, top.values.numpy(), rtol=1e-4)
    assert "bits per byte" in result.summary()


def test_token_loss_html_marks_every_token(model, tokenizer):
    result = inspection.token_losses(model, tokenizer, "a <b> & c\nd")
    page = figures.token_loss_html(result, tokenizer)
    assert page.count('class="tl-tok"') == len(result.ids)
    assert "␣&lt;" in page and "<b>" not in page.replace(f"<b>{result.summary()}</b>", "")
    assert "↵" in page and "top predictions" in page
    first_guess = tokenizer.token_display(int(result.top_ids[0, 0]))
    assert f"{result.top_probs[0, 0]:6.1%}  {html.escape(first_guess)}" in page


# -- the Inspect tab's handlers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_with_snapshots(tmp_path_factory, tokenizer):
    """A run folder with two snapshots and a data folder, as the trainer leaves it, in an app's runs folder."""
    from gpt.run import LAST_FILE, DataRef, RunConfig, create_run, save_weights, snapshot_path
    from gpt.ui.common import AppDirs

    root = tmp_path_factory.mktemp("inspect")
    config = write_data(root, tokenizer.encode(TEXT * 4))
    run_dir = root / "runs" / "run"
    create_run(run_dir, RunConfig(model=tiny_model().config, train=None, data=DataRef(config["data"]["dir"]),
                                  tokenizer=tokenizer))
    for step, seed in ((0, 0), (10, 1)):
        save_weights(tiny_model(seed), snapshot_path(run_dir, step), step=step)
    save_weights(tiny_model(2), run_dir / LAST_FILE, step=20)
    return AppDirs(data=root / "data", runs=root / "runs"), run_dir


def test_tab_handlers(run_with_snapshots):
    from gpt.ui import inspect_tab

    dirs, run_dir = run_with_snapshots
    run = run_dir.name
    (summary, grid, head_map, view, stats, maps, tokens, layers, heads, loss, scores, views,
     selection) = inspect_tab.inspect_text(dirs, run, "last", TEXT, 1, 2)
    expected = explicit_probs(tiny_model(2), gpt2_tokenizer().encode(TEXT))
    np.testing.assert_array_equal(maps.probs, expected)
    assert "step 20" in summary and "2 layers × 3 heads" in summary
    assert grid.count('class="ag-cell') == 6 and len(stats) == 6
    np.testing.assert_array_equal(np.asarray(head_map.data[0].z), causal(expected[1, 2]))
    assert layers["choices"][0] == ("mean over layers", inspect_tab.MEAN) and layers["value"] == 1
    assert len(tokens["choices"]) == maps.length + 1
    assert loss.count('class="tl-tok"') == maps.length

    head_map, view, _, _ = inspect_tab.head_figures(maps, inspect_tab.MEAN, 0, 4)
    np.testing.assert_allclose(np.asarray(head_map.data[0].z), causal(expected[:, 0].mean(0)), rtol=1e-6)
    assert "lines of token 4" in view.layout.title.text

    replay, scores_replay, _ = inspect_tab.replay_training(dirs, run, TEXT, 0, 1)
    assert [frame.name for frame in replay.frames] == ["0", "10", "20"]
    np.testing.assert_array_equal(
        np.asarray(replay.frames[1].data[0].z), causal(explicit_probs(tiny_model(1), maps.ids)[0, 1])
    )
    assert [frame.name for frame in scores_replay.frames] == ["0", "10", "20"]

    scatter, note, positions, _ = inspect_tab.embedding_views(dirs, run, "snapshot:10", 20, "2D", "class")
    assert "train.bin" in note and sum(len(t.x) for t in scatter.data) == len(set(maps.ids))
    assert positions.data[0].z.shape == (64, 64)
    table = inspect_tab.neighbours_table(dirs, run, "last", "␣speak", True)
    assert len(table) > 0 and (table["count"] > 0).all()

    with pytest.raises(UserInputError, match="empty"):
        inspect_tab.inspect_text(dirs, run, "last", " ", 0, 0)
    with pytest.raises(UserInputError, match="no checkpoint 'snapshot:5'"):
        inspect_tab.inspect_text(dirs, run, "snapshot:5", TEXT, 0, 0)


def test_replay_needs_snapshots(tmp_path):
    from conftest import make_tiny_run

    from gpt.ui import inspect_tab
    from gpt.ui.common import AppDirs

    make_tiny_run(tmp_path / "runs" / "plain")
    dirs = AppDirs(data=tmp_path / "data", runs=tmp_path / "runs")
    with pytest.raises(UserInputError, match="1 checkpoint"):
        inspect_tab.replay_training(dirs, "plain", TEXT, 0, 0)


def test_figures_serialise_for_the_browser(maps):
    """gr.Plot sends `fig.to_json()`; the attention arrays travel as float32 typed arrays."""
    grid = json.loads(figures.attention_grid_figure(maps).to_json())
    assert grid["data"][0]["z"]["dtype"] == "f4"


def _decode(array: dict | list) -> np.ndarray:
    """A plotly JSON array: a typed-array spec ({"dtype", "bdata", "shape"}) or a plain list."""
    if isinstance(array, list):
        return np.asarray(array, dtype=np.float64)
    import base64

    shape = [int(n) for n in array["shape"].split(",")]
    return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).reshape(shape)


def _grid_images(page: str) -> list[np.ndarray]:
    """The palette indexes of every head's image in an attention grid as sent to the browser."""
    import base64
    import io
    import re

    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
            for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_inspect_endpoint_sends_the_models_probabilities(app_url, app_dirs):
    """Through the app's API (gradio_client, named inputs): the attention grid as sent to the browser (each
    head's weights in 255 levels), and the head shown large at full precision."""
    from conftest import TINY_MODEL
    from gradio_client import Client

    from gpt.run import load_run

    run_dir = app_dirs[1] / "tiny-random"
    result = Client(app_url, verbose=False).predict(run="tiny-random", checkpoint="last", text=TEXT, layer=0,
                                                    head=0, api_name="/inspect")
    images = _grid_images(result[1])
    loaded = load_run(run_dir)
    expected = explicit_probs(loaded.model, loaded.tokenizer.encode(TEXT))
    assert len(images) == TINY_MODEL["n_layer"] * TINY_MODEL["n_head"]
    for k, levels in enumerate(images):
        layer, head = divmod(k, TINY_MODEL["n_head"])
        weights = np.where(levels == figures.ATTENTION_LEVELS, np.nan, levels / (figures.ATTENTION_LEVELS - 1))
        np.testing.assert_allclose(weights, causal(expected[layer, head]), atol=0.5 / 254 + 1e-6)
    head_map = json.loads(result[2]["plot"])
    np.testing.assert_array_equal(_decode(head_map["data"][0]["z"]), causal(expected[0, 0]).astype(np.float32))


# -- training curves ------------------------------------------------------------------------------------------
def test_a_curve_of_one_point_is_visible_and_step_0_is_named():
    rows = [{"kind": "eval", "step": 0, "val_loss": 10.9, "perplexity": 54000.0, "bits_per_byte": 4.0},
            {"kind": "train", "step": 1, "train_loss": 10.8, "lr": 1e-4, "tokens_per_second": 300.0, "grad_norm": 2.0}]
    fig = figures.training_figure({"run": rows})
    by_name = {trace.name: trace for trace in fig.data}
    assert all(trace.mode == "lines+markers" for trace in fig.data)  # one point each: drawn as a marker
    assert list(by_name["val"].text) == ["step 0 (before training)"] and "%{text}" in by_name["val"].hovertemplate
    assert list(by_name["lr"].text) == ["step 1"]
    long = [{"kind": "train", "step": i, "train_loss": 5.0, "lr": 1e-3} for i in range(1, 200)]
    assert {trace.mode for trace in figures.training_figure({"run": long}).data} == {"lines"}
