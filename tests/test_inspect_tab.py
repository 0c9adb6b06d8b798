"""The Inspect tab's handlers without a browser: head scores per checkpoint, selecting a head, bad input and
downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpt import inspection
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.run import LAST_FILE, DataRef, RunConfig, create_run, save_weights
from gpt.tokenizer import Tokenizer
from gpt.ui import inspect_tab
from gpt.ui.common import AppDirs

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."


def add_run(dirs: AppDirs, name: str, data: str = "", **model) -> Path:
    torch.manual_seed(0)
    config = GPTConfig(**{"context_length": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, **model})
    run_dir = dirs.runs / name
    create_run(run_dir, RunConfig(model=config, train=None, data=DataRef(data), tokenizer=Tokenizer()))
    save_weights(GPT(config), run_dir / LAST_FILE, step=7)
    return run_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, data_dir) -> AppDirs:
    root = tmp_path_factory.mktemp("inspect-tab")
    dirs = AppDirs(data=root / "data", runs=root / "runs")
    add_run(dirs, "with-data", data=str(data_dir))
    add_run(dirs, "no-data")
    add_run(dirs, "rope-one-head", position="rope", n_head=1)
    add_run(dirs, "short-context", context_length=8)
    return dirs


def test_head_scores_of_a_checkpoint_are_the_probes(dirs):
    outputs = inspect_tab.inspect_text(dirs, "with-data", "last", TEXT, 0, 1)
    stats, scores, views, selection = outputs[4], outputs[10], outputs[11], outputs[12]
    loaded = inspect_tab.load_picked(dirs, "with-data", "last")
    expected = inspection.score_probe(loaded.model, inspection.probe_for_run(loaded.config))
    assert stats["induction_score"].tolist() == [round(v, 3) for layer in expected["induction"] for v in layer]
    assert stats["duplicate_token_score"].iloc[1] == round(expected["duplicate_token"][0][1], 3)
    assert "In-context learning score" in scores and f"{expected['icl_score']:+.3f}" in scores
    assert '[data-layer="0"][data-head="1"]' in selection
    assert set(views) >= {"Head-type scores", "Attention of every head", "Per-token loss"}
    again = inspect_tab.checkpoint_scores(loaded)  # computed once per checkpoint file
    assert again is inspect_tab.checkpoint_scores(loaded)


def test_select_head_sets_the_dropdowns(dirs):
    maps = inspect_tab.inspect_text(dirs, "with-data", "last", TEXT)[5]
    layer, head, head_map, view, views, selection = inspect_tab.select_head(maps, 1, 0, inspect_tab.ALL_TOKENS, {})
    assert layer["value"] == 1 and head["value"] == 0
    np.testing.assert_array_equal(np.asarray(head_map.data[0].z)[3, :4], maps.probs[1, 0, 3, :4])
    assert "layer 1, head 0" in head_map.layout.title.text and "Head view" in views
    assert '[data-layer="1"][data-head="0"]' in selection
    assert inspect_tab.selection_style(inspect_tab.MEAN, 0) == ""
    with pytest.raises(UserInputError, match="heads 0..1"):
        inspect_tab.select_head(maps, 0, 2, None)
    with pytest.raises(UserInputError, match="press Inspect first"):
        inspect_tab.select_head(None, 0, 0, None)


def test_only_listed_runs_and_checkpoints_are_loaded(dirs, tmp_path):
    elsewhere = add_run(AppDirs(data=tmp_path / "d", runs=tmp_path / "r"), "elsewhere")
    with pytest.raises(UserInputError, match="unknown run"):
        inspect_tab.inspect_text(dirs, str(elsewhere), "last", TEXT)
    with pytest.raises(UserInputError, match="unknown run"):
        inspect_tab.embedding_views(dirs, "../../etc", "last")
    with pytest.raises(UserInputError, match="has no checkpoint .*choose one of: last"):
        inspect_tab.inspect_text(dirs, "with-data", str(dirs.runs / "with-data" / LAST_FILE), TEXT)
    with pytest.raises(UserInputError, match="choose a run first"):
        inspect_tab.inspect_text(dirs, None, "last", TEXT)


def test_bad_input_gets_a_message_in_the_page(dirs):
    summary, *_, scores, _, _ = inspect_tab.inspect_text(dirs, "rope-one-head", "last", TEXT)
    assert "one head per layer" in summary
    _, _, positions, _ = inspect_tab.embedding_views(dirs, "rope-one-head", "last")
    assert "RoPE" in positions.layout.annotations[0].text
    *_, scores, _, _ = inspect_tab.inspect_text(dirs, "no-data", "last", TEXT)
    assert "no in-context learning score" in scores and "not available" in scores  # scores, without ICL
    *_, scores, _, _ = inspect_tab.inspect_text(dirs, "short-context", "last", TEXT)
    assert "head-type scores are not available" in scores and "at least 16" in scores
    with pytest.raises(UserInputError, match="1 checkpoint"):
        inspect_tab.replay_training(dirs, "no-data", TEXT, 0, 0)


def test_embedding_note_names_runs_never_paths(dirs):
    _, found, _, _ = inspect_tab.embedding_views(dirs, "with-data", "last")
    _, missing, _, _ = inspect_tab.embedding_views(dirs, "no-data", "last")
    assert found.startswith("**with-data**") and "'tiny'" in found and "/" not in found.replace("N/A", "")
    assert missing.startswith("**no-data**") and "records no data" in missing


def test_download_is_one_self_contained_page(dirs):
    views = inspect_tab.inspect_text(dirs, "with-data", "last", TEXT)[11]
    lens, views = inspect_tab.logit_lens_view(dirs, "with-data", "last", TEXT, views)
    assert "Logit lens" in views and lens.data[0].z.shape[0] == 2
    path = Path(inspect_tab.download_views("with-data", "last", views))
    page = path.read_text(encoding="utf-8")
    assert path.name == "inspect-with-data-last.html"
    assert page.count("<section>") == len(views) and "Plotly.newPlot" in page and "plotly.js" in page
    with pytest.raises(UserInputError, match="press Inspect first"):
        inspect_tab.download_views("with-data", "last", {})
