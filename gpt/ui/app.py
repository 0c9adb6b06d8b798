"""The app: `build_demo()` assembles the Data, Train, Inspect and Generate tabs into one `gr.Blocks`.

Each tab lives in its own module (`data_tab.py`, `train_tab.py`, `inspect_tab.py`, `generate_tab.py`)
with `build(dirs)` (layout, returns its components) and `wire(dirs, tab, demo)` (events); tabs share
`common.py` (error decorator), `runs.py`/`picker.py` (the app's runs) and `datasets.py`, never each other.
Nothing here touches the network or trains at start-up, so the page is served within seconds on a CPU-only
machine.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from gpt.run import CHECKPOINTS_DIR
from gpt.ui import generate_tab, inspect_tab, train_tab
from gpt.ui.common import DEFAULT_DATA_DIR, AppDirs
from gpt.ui.data_tab import build_data_tab

MAX_FILE_SIZE = "200mb"
INTRO = (
    "# GPT Playground\n"
    "Pretrain a small GPT-2-style model on your own text, watch it learn, look inside it and talk to it. "
    "**Data** prepares a corpus, **Train** trains a model on it, **Inspect** shows attention and embeddings, "
    "**Generate** samples from any run (the shipped Shakespeare model is ready at once)."
)


def build_demo(data_dir: str | Path | None = None, runs_dir: str | Path | None = None) -> gr.Blocks:
    """The whole app. `data_dir` holds prepared datasets (default `data/`), `runs_dir` training runs
    (default `checkpoints/`); tests point both at temporary folders."""
    dirs = AppDirs(data=Path(data_dir or DEFAULT_DATA_DIR), runs=Path(runs_dir or CHECKPOINTS_DIR))
    with gr.Blocks(title="GPT Playground") as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                build_data_tab(dirs)
            with gr.Tab("Train", id="train"):
                train_tab.wire(dirs, train_tab.build(dirs), demo)
            with gr.Tab("Inspect", id="inspect"):
                inspect_tab.wire(dirs, inspect_tab.build(dirs), demo)
            with gr.Tab("Generate", id="generate"):
                generate_tab.wire(dirs, generate_tab.build(dirs), demo)
    return demo
