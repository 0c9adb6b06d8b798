"""Shared fixtures: a small prepared Shakespeare data folder, a tiny run, the app served on a free port, and
a headless browser.

The app under test gets its own temporary data and runs folders, so tests never touch `data/` or
`checkpoints/`. Screenshots go to `test-artifacts/` (git-ignored). Browser tests are marked
`@pytest.mark.browser`; they need Debian's chromium (`CHROMIUM_PATH`, default /usr/bin/chromium).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
TINY_MODEL = {"context_length": 64, "n_layer": 2, "n_head": 2, "n_embd": 32}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_tiny_run(run_dir: Path) -> Path:
    """A run folder with a randomly initialised tiny model (enough to generate and load)."""
    import torch

    from gpt.model import GPT, GPTConfig
    from gpt.run import LAST_FILE, DataRef, RunConfig, create_run, save_weights
    from gpt.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL))
    create_run(run_dir, RunConfig(model=model.config, train=None, data=DataRef(), tokenizer=Tokenizer(),
                                  command="tests/conftest.py make_tiny_run"))
    save_weights(model, run_dir / LAST_FILE, step=0)
    return run_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20,000 characters of the bundled corpus, prepared (train/val token files + meta.json)."""
    from gpt.data import prepare_dataset

    text = (ROOT / "assets" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    source = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    source.write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_dataset([source], out)
    return out


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def app_dirs(tmp_path_factory):
    """(data folder, runs folder) of the app under test; the runs folder holds one tiny random run."""
    root = tmp_path_factory.mktemp("app")
    data, runs = root / "data", root / "runs"
    make_tiny_run(runs / "tiny-random")
    return data, runs


@pytest.fixture(scope="session")
def app_url(app_dirs):
    from gpt.ui.app import build_demo

    data, runs = app_dirs
    demo = build_demo(data_dir=data, runs_dir=runs).queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, ssr_mode=False)
    yield url
    from gpt.ui.jobs import JOBS

    JOBS.shutdown()
    demo.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"), headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_url)
    yield page
    context.close()
