"""The Inspect tab in a real browser (Playwright driving Debian's headless chromium).

The app is served on its own folders: a tiny run with snapshots, trained on a prepared slice of the
bundled corpus (so the head probe has training and validation text). Checked: every view draws, clicking a
head in the attention grid or in a head-type grid selects it, a run created after the page loaded is
listed without pressing anything, the per-token hover, the download. Screenshots go to `test-artifacts/`.
"""

from __future__ import annotations

import re

import pytest
from conftest import free_port, make_tiny_run

pytestmark = pytest.mark.browser
OUTLINE = "rgb(214, 39, 40)"  # the selected head's outline (#d62728)

HEAD_MAP_TITLE_JS = """() => {
  const plot = document.querySelector('#insp-head-map .js-plotly-plot');
  return plot && plot.layout && plot.layout.title ? plot.layout.title.text : '';
}"""


@pytest.fixture(scope="module")
def inspect_runs(tmp_path_factory, data_dir):
    """An app's runs folder whose only run has two snapshots and real data."""
    import torch

    from gpt.model import GPT, GPTConfig
    from gpt.run import LAST_FILE, DataRef, RunConfig, create_run, save_weights, snapshot_path
    from gpt.tokenizer import Tokenizer

    runs = tmp_path_factory.mktemp("inspect-app") / "runs"
    config = GPTConfig(context_length=64, n_layer=2, n_head=2, n_embd=32)
    create_run(runs / "heads-run", RunConfig(model=config, train=None, data=DataRef(str(data_dir)),
                                             tokenizer=Tokenizer()))
    for step in (0, 10, 20):
        torch.manual_seed(step)
        path = runs / "heads-run" / LAST_FILE if step == 20 else snapshot_path(runs / "heads-run", step)
        save_weights(GPT(config), path, step=step)
    return runs


@pytest.fixture(scope="module")
def app_url(inspect_runs):
    """The app on these runs (in place of conftest's app, for this module's `page`)."""
    from gpt.ui.app import build_demo

    demo = build_demo(data_dir=inspect_runs.parent / "data", runs_dir=inspect_runs).queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, ssr_mode=False)
    yield url
    demo.close()


@pytest.fixture
def inspect_page(page):
    page.get_by_role("tab", name="Inspect").click()
    return page


def choose_run(page, name: str) -> None:
    box = page.locator("#insp-run input")
    box.click()
    page.locator("ul[role=listbox] li", has_text=name).first.click()
    page.wait_for_function(f"document.querySelector('#insp-run input').value === {name!r}")


def test_inspect_views_and_clicking_a_head(inspect_page, artifacts):
    page = inspect_page
    choose_run(page, "heads-run")
    page.locator("#insp-go").click()
    page.locator("#insp-grid img").nth(3).wait_for()
    assert page.locator("#insp-grid img").count() == 4  # 2 layers x 2 heads
    page.locator("#insp-head-map .js-plotly-plot").wait_for()
    assert page.locator("#insp-stats table").count() == 1
    page.wait_for_function(f"({HEAD_MAP_TITLE_JS})().includes('layer 0, head 0')")
    page.screenshot(path=str(artifacts / "inspect-attention.png"), full_page=True)

    # a click on a head in the attention grid shows it large and sets the dropdowns
    page.locator('#insp-grid .ag-cell[data-layer="1"][data-head="1"]').click()
    page.wait_for_function(f"({HEAD_MAP_TITLE_JS})().includes('layer 1, head 1')")
    assert page.locator("#insp-layer input").input_value() == "layer 1"
    assert page.locator("#insp-head input").input_value() == "head 1"
    page.mouse.move(0, 0)
    for cell in ('#insp-grid .ag-cell[data-layer="1"][data-head="1"]',  # outlined in every grid
                 '#insp-scores .hs-grid:nth-child(3) .hs-cell[data-layer="1"][data-head="1"]'):
        page.wait_for_function(f"getComputedStyle(document.querySelector({cell!r})).borderTopColor === {OUTLINE!r}")
    assert page.locator('#insp-grid .ag-cell[data-layer="0"][data-head="0"]').evaluate(
        "e => getComputedStyle(e).borderTopColor") != OUTLINE

    # so does a click on a cell of a head-type grid
    page.locator("#insp-scores .hs-cell").first.wait_for()
    assert page.locator("#insp-scores .hs-cell").count() == 4 * 4  # four head types x 4 heads
    assert "In-context learning score" in page.locator("#insp-scores").inner_text()
    page.screenshot(path=str(artifacts / "inspect-heads.png"), full_page=True)
    page.locator('#insp-scores .hs-grid:nth-child(3) .hs-cell[data-layer="0"][data-head="1"]').click()
    page.wait_for_function(f"({HEAD_MAP_TITLE_JS})().includes('layer 0, head 1')")
    assert page.locator("#insp-layer input").input_value() == "layer 0"

    page.get_by_role("tab", name="Logit lens").click()
    page.locator("#insp-lens .js-plotly-plot").wait_for()
    page.locator("#insp-lens").screenshot(path=str(artifacts / "inspect-logit-lens.png"))
    page.get_by_role("tab", name="Per-token loss").click()
    page.locator("#insp-loss .tl-tok").first.wait_for()
    page.locator("#insp-loss .tl-tok").nth(3).hover()
    tip = page.locator("#insp-loss .tl-tok").nth(3).locator(".tl-tip")
    assert tip.is_visible() and re.search(r"rank [\d,]+ of 50,257", tip.inner_text())
    assert "top predictions" in tip.inner_text()
    page.locator("#insp-loss").screenshot(path=str(artifacts / "inspect-loss.png"))
    page.get_by_role("tab", name="Embeddings").click()
    page.locator("#insp-emb .scatterlayer .point").first.wait_for()
    assert page.locator("#insp-emb .scatterlayer .point").count() >= 20
    note = page.locator("#insp-emb-note").inner_text()
    assert "heads-run" in note and "/" not in note.split("data folder", 1)[-1]  # names, never paths
    page.locator("#insp-emb").screenshot(path=str(artifacts / "inspect-embeddings.png"))

    page.get_by_role("tab", name="Across training").click()
    page.locator("#insp-replay-go").click()
    page.locator("#insp-scores-replay .js-plotly-plot").wait_for()
    page.locator("#insp-replay .js-plotly-plot .slider-container").first.wait_for()
    page.screenshot(path=str(artifacts / "inspect-across-training.png"), full_page=True)

    page.locator("#insp-download").click()
    link = page.locator('#insp-report a[download="inspect-heads-run-last.html"]')
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    html = download.value.path().read_text(encoding="utf-8")
    assert "Head-type scores" in html and "Logit lens" in html and "Attention across training" in html


def test_a_new_run_is_listed_without_pressing_refresh(inspect_page, inspect_runs):
    page = inspect_page
    page.locator("#insp-go").wait_for()
    make_tiny_run(inspect_runs / "trained-later")
    choose_run(page, "trained-later")  # opening the list refreshes it
    page.locator("#insp-go").click()
    page.locator("#insp-summary", has_text="trained-later").wait_for()
    page.reload()  # and a page loaded later lists it at once
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#insp-run input").click()
    page.locator("ul[role=listbox] li", has_text="trained-later").wait_for()
