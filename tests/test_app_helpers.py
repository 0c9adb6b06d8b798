"""Small pieces of the app that need no server: safe names, field forms, estimates, curve thinning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gpt.config import TrainConfig
from gpt.data import prepare_dataset
from gpt.figures import thin, training_figure
from gpt.model import GPTConfig
from gpt.plan import planned_steps, training_memory
from gpt.ui.common import AppDirs, safe_name
from gpt.ui.train_tab import FIELD_NAMES, build_configs, field_checks, preset_values, summary_markdown


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"), ("my rows (1).csv", "my_rows_1_.csv"), ("..", "untitled"),
    (".hidden", "hidden"), ("a\\b\\c.txt", "c.txt"), ("", "untitled"), ("Ærø data", "r_data"),
])
def test_safe_name_keeps_names_inside_the_app_folders(name, expected):
    assert safe_name(name) == expected


def test_the_form_has_every_config_field_and_presets_fill_them_all():
    every = {f.name for f in dataclasses.fields(GPTConfig)} | {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(FIELD_NAMES) == every - {"vocab_size"}  # the vocabulary comes from the tokenizer
    for preset in ("tiny", "seed", "gpt2"):
        model, train = build_configs(preset_values(preset))
        assert model == GPTConfig.from_preset(preset) and train == TrainConfig.from_preset(preset)


def test_zero_in_an_optional_field_means_not_set_as_the_browser_sends_0_for_an_empty_number():
    values = dict(zip(FIELD_NAMES, preset_values("tiny"), strict=True))
    values.update(ffn_hidden=0, max_minutes=0, epochs=0, max_steps=50)
    model, train = build_configs(list(values.values()))
    assert model.ffn_hidden is None and train.max_minutes is None and train.epochs is None and train.max_steps == 50


def test_errors_are_attached_to_the_fields_they_are_about():
    assert list(field_checks({"preset": "tiny", "fields": {"n_embd": 30, "n_head": 4}})) == ["n_head"]
    stop = field_checks({"preset": "tiny", "fields": {"max_steps": None}})
    assert list(stop) == ["max_steps"] and "say when to stop" in stop["max_steps"]
    assert list(field_checks({"preset": "tiny", "fields": {"learning_rate": -1}})) == ["learning_rate"]
    assert field_checks({"preset": "tiny"}) == {}


def test_estimates_grow_with_the_work():
    model, train = GPTConfig.from_preset("tiny"), TrainConfig.from_preset("tiny")
    small = training_memory(model, train, "fp32", flash_attention=False)
    bigger = training_memory(model, dataclasses.replace(train, batch_size=64), "fp32", flash_attention=False)
    assert small["state"] == 16 * model.num_parameters() and bigger["activations"] > small["activations"]
    assert planned_steps(train, model, None) == train.max_steps
    by_epochs = dataclasses.replace(train, max_steps=None, epochs=2.0)
    assert planned_steps(by_epochs, model, 16 * 128 * 10) == 20


def test_long_curves_are_thinned_but_keep_their_last_point():
    points = [(i, float(i)) for i in range(10_001)]
    kept = thin(points, 400)
    assert len(kept) <= 402 and kept[0] == points[0] and kept[-1] == points[-1]
    rows = [{"kind": "train", "step": i, "train_loss": 5.0, "lr": 1e-3, "grad_norm": 1.0,
             "tokens_per_second": 100.0} for i in range(1000)]
    figure = training_figure({"run": rows})
    assert max(len(trace.x) for trace in figure.data) <= 402


def test_summary_counts_the_parameters_of_a_compact_vocabulary(tmp_path):
    dirs = AppDirs(tmp_path / "data", tmp_path / "runs")
    text = (Path(__file__).resolve().parent.parent / "assets" / "data" / "tinyshakespeare.txt").read_text()[:5000]
    (tmp_path / "play.txt").write_text(text, encoding="utf-8")
    prepare_dataset([tmp_path / "play.txt"], dirs.data / "play")
    compact = summary_markdown(dirs, {"preset": "quick-cpu", "dataset": "play"})
    assert "compact vocabulary: **" in compact
    full = summary_markdown(dirs, {"preset": "quick-cpu", "dataset": "play", "fields": {"vocab": "full"}})
    assert _parameters(compact) < _parameters(full) == GPTConfig.from_preset("quick-cpu").num_parameters()
    assert "known once the data is prepared" in summary_markdown(dirs, {"preset": "quick-cpu",
                                                                        "dataset": "not-prepared"})


def _parameters(summary: str) -> int:
    return int(summary.split(" parameters**")[0].strip("*").replace(",", ""))
