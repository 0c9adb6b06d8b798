"""The Data tab's handlers and layout without a browser: own file names in messages, the encoding choice,
controls made from CleanConfig's fields, and dataset names resolved only through the app's list."""

from __future__ import annotations

import gradio as gr
import pytest

from gpt.data import CleanConfig
from gpt.errors import UserInputError
from gpt.fields import field_specs
from gpt.ui import data_tab
from gpt.ui.common import AppDirs
from gpt.ui.data_tab import SOURCES, load_source, prepare, show_dataset
from gpt.ui.datasets import dataset_dir, prepared_datasets

CAFE = "Café crème, naïve façade"
DEFAULTS = [spec.default if spec.kind is not tuple else "" for spec in field_specs(CleanConfig)]


def _upload(tmp_path, name: str, content: bytes) -> str:
    """A file where Gradio keeps an upload: <temp folder>/<64 hex>/<its own name>."""
    folder = tmp_path / ("0f" * 32)
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(content)
    return str(folder / name)


def _load(files, encoding="auto", kind=SOURCES[1], hf_name=""):
    return load_source(kind, files, False, hf_name, "", "train", encoding)


@pytest.fixture()
def dirs(tmp_path) -> AppDirs:
    return AppDirs(data=tmp_path / "data", runs=tmp_path / "runs")


def test_errors_name_the_uploaded_file_not_the_server_folder(tmp_path):
    for name, content, message in [("empty.txt", b"", "empty.txt is empty"),
                                   ("photo.txt", bytes(range(256)) * 40, "photo.txt looks like a binary file")]:
        with pytest.raises(gr.Error) as info:
            _load([_upload(tmp_path, name, content)])
        assert info.value.message.startswith(message) and "0f0f" not in info.value.message
    with pytest.raises(gr.Error, match="Upload at least one file"):
        _load([])


def test_the_decided_encoding_is_shown_and_can_be_changed(tmp_path):
    path = _upload(tmp_path, "latin.txt", (CAFE + "\n").encode("latin-1") * 3)
    loaded, summary, _, preview, name = _load([path])
    assert loaded.documents[0].startswith(CAFE) and "encoding **cp1252** (detected)" in summary
    assert CAFE in preview["text"][0] and name == "latin"
    loaded, summary, *_ = _load([path], encoding="cp1250")
    assert loaded.documents[0].startswith("Café crčme") and "encoding **cp1250** (as chosen)" in summary
    with pytest.raises(gr.Error, match="latin.txt is not valid utf-8"):
        _load([path], encoding="utf-8")
    with pytest.raises(gr.Error, match="unknown text encoding 'klingon' for latin.txt"):
        _load([path], encoding="klingon")
    assert all(value == gr.skip() for value in data_tab.reload_source(None, SOURCES[1], [path], False, "", "",
                                                                       "train", "cp1250", None))


def test_a_dataset_name_is_never_a_server_path(tmp_path):
    for name in ("/etc", "../secrets", str(tmp_path)):
        with pytest.raises(gr.Error, match="is not a Hugging Face dataset name"):
            _load([], kind=SOURCES[2], hf_name=name)


def test_cleaning_controls_are_made_from_the_fields(dirs):
    with gr.Blocks():
        tab = data_tab.build(dirs)
    specs = field_specs(CleanConfig)
    assert len(tab.options) == len(specs)
    for control, spec in zip(tab.options, specs, strict=True):
        assert control.label == spec.label and control.elem_id == "clean-" + spec.name.replace("_", "-")
        if spec.choices:
            assert [choice[0] for choice in control.choices] == list(spec.choices)
    assert tab.preview.headers == data_tab.PREVIEW_HEADERS  # no "1 2 3" before anything is loaded
    assert data_tab._clean_config(DEFAULTS) == CleanConfig()
    changed = list(DEFAULTS)
    changed[[s.name for s in specs].index("remove_patterns")] = "x+\n\n\\d"
    assert data_tab._clean_config(changed).remove_patterns == ("x+", r"\d")


def test_prepare_and_show_go_through_the_list_of_datasets(tmp_path, dirs):
    text = "\n\n".join(" ".join(f"w{i}x{j}" for j in range(40)) for i in range(30))
    loaded, *_ = _load([_upload(tmp_path, "words.txt", text.encode())])
    result, datasets = prepare(dirs, loaded, "my words", 0.2, False, *DEFAULTS, progress=lambda *a, **k: None)
    assert "train / val tokens" in result and datasets["value"] == "my_words"
    assert prepared_datasets(dirs) == ["my_words"] and dataset_dir(dirs, "my_words") == dirs.data / "my_words"
    assert "Dataset `my_words`" in show_dataset(dirs, "my_words") and show_dataset(dirs, "") == ""
    for bad in ("../my_words", "other", "/etc"):
        with pytest.raises(UserInputError, match="unknown dataset"):
            dataset_dir(dirs, bad)
        with pytest.raises(gr.Error, match="unknown dataset"):
            show_dataset(dirs, bad)
    with pytest.raises(gr.Error, match="Load a source first"):
        prepare(dirs, None, "x", 0.2, False, *DEFAULTS, progress=lambda *a, **k: None)
