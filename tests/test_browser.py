"""A new user's whole journey in a real browser (Playwright driving Debian's headless chromium).

Upload a small CSV, pick its text column, clean, prepare; start a tiny training and watch the loss plot
gain points; stop it; generate with changed sliders and watch the text stream; switch to the shipped
model. A screenshot of each tab is saved under `test-artifacts/`.
"""

from __future__ import annotations

import time

import pytest

from gpt.run import DEFAULT_RUN, LAST_FILE

pytestmark = pytest.mark.browser

TRAIN_POINTS_JS = """() => {
  const plot = document.querySelector('#train-plot .js-plotly-plot');
  if (!plot || !plot.data) return 0;
  return plot.data.filter(t => t.name === 'train').reduce((n, t) => n + t.x.length, 0);
}"""


RECORD_ANSWER_LENGTHS_JS = """() => {
  window.answerLengths = [];
  new MutationObserver(() => {
    const bubbles = document.querySelectorAll('#gen-chat .message.bot');
    if (bubbles.length) window.answerLengths.push(bubbles[bubbles.length - 1].innerText.length);
  }).observe(document.querySelector('#gen-chat'), {subtree: true, childList: true, characterData: true});
}"""


RECORD_STATS_JS = """() => {
  const stats = document.querySelector('#gen-stats');
  window.statsSeen = [];
  new MutationObserver(() => window.statsSeen.push(stats.innerText))
    .observe(stats, {subtree: true, childList: true, characterData: true});
}"""
# This run's answer is done: the stats showed "generating" after the click, then a final "tokens/s".
REGENERATED_JS = """() => {
  const seen = window.statsSeen || [];
  const started = seen.findIndex(text => text.includes('generating'));
  return started >= 0 && seen.slice(started + 1).some(text => text.includes('tokens/s'));
}"""


def chat_text(page) -> str:
    bubbles = page.locator("#gen-chat .message.bot")
    return bubbles.last.inner_text() if bubbles.count() else ""


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def choose(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    page.locator("ul[role=listbox] li", has_text=value).first.click()


def test_new_user_journey(page, artifacts, tmp_path):
    csv = tmp_path / "reviews.csv"
    rows = ["id,review,stars"] + [f'{i},"Review {i}: A GOOD little café, I would come back {i % 5} times.",{i % 5}'
                                  for i in range(150)]
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")

    # Data: upload, pick the column, clean, prepare.
    page.get_by_label("Upload files").check()
    page.locator("#data-files input[type=file]").set_input_files(str(csv))
    page.locator("#data-load").click()
    page.locator("#data-summary", has_text="150 documents").wait_for()
    choose(page, "data-column", "review")
    page.locator("#data-summary", has_text="text column review").wait_for()
    page.locator("#clean-lowercase input").check()
    page.locator("#data-clean-preview", has_text="lowercase").wait_for()
    page.locator("#data-name textarea").fill("browser-reviews")
    page.locator("#data-prepare").click()
    page.locator("#data-result", has_text="train / val tokens").wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts / "tab-data.png"), full_page=True)

    # Train: a tiny run; the loss plot gains points; stop.
    page.get_by_role("tab", name="Train").click()
    choose(page, "train-dataset", "browser-reviews")
    for elem_id, value in [("train-n-layer", 1), ("train-n-head", 2), ("train-n-embd", 32),
                           ("train-context-length", 32), ("train-batch-size", 4), ("train-eval-interval", 10),
                           ("train-log-interval", 2), ("train-max-steps", 400), ("train-warmup-steps", 2)]:
        set_number(page, elem_id, value)
    choose(page, "train-device", "cpu")
    page.locator("#train-run-name textarea").fill("browser-run")
    page.locator("#train-summary", has_text="device: cpu").wait_for()
    page.locator("#train-start").click()
    page.wait_for_function(f"({TRAIN_POINTS_JS})() >= 2", timeout=90_000)
    first = page.evaluate(TRAIN_POINTS_JS)
    page.wait_for_function(f"({TRAIN_POINTS_JS})() > {first}", timeout=60_000)
    page.locator("#train-status", has_text="running").wait_for()
    page.screenshot(path=str(artifacts / "tab-train.png"), full_page=True)
    second = page.context.browser.new_page()  # another user (or a reload) finds the running job
    second.goto(page.url)
    second.get_by_role("tab", name="Train").click()
    second.locator("#train-status", has_text="browser-run: running").wait_for()
    second.wait_for_function(f"({TRAIN_POINTS_JS})() > 0")
    second.close()
    page.locator("#train-stop").click()
    page.locator("#train-status", has_text="stopped").wait_for(timeout=60_000)
    page.locator("#train-runs", has_text="browser-run").wait_for()  # the runs table shows the stopped run

    # Inspect: INSPECT's tab renders.
    page.get_by_role("tab", name="Inspect").click()
    time.sleep(1.0)
    page.screenshot(path=str(artifacts / "tab-inspect.png"), full_page=True)

    # Generate: changed sliders, streamed text.
    page.get_by_role("tab", name="Generate").click()
    choose(page, "gen-run", "tiny-random")
    set_number(page, "gen-temperature", 1.3)
    set_number(page, "gen-top-k", 50)
    set_number(page, "gen-max-new-tokens", 300)
    set_number(page, "gen-seed", 7)
    page.locator("#gen-prompt textarea").fill("Once upon a time")
    page.evaluate(RECORD_ANSWER_LENGTHS_JS)
    page.locator("#gen-send").click()
    page.locator("#gen-stats", has_text="tokens/s").wait_for(timeout=60_000)
    lengths = {n for n in page.evaluate("window.answerLengths") if n > 0}
    assert len(lengths) >= 3, f"the answer did not stream: lengths seen {sorted(lengths)}"
    page.locator("#gen-why .js-plotly-plot").wait_for()
    page.screenshot(path=str(artifacts / "tab-generate.png"), full_page=True)
    answer = chat_text(page)
    page.evaluate(RECORD_STATS_JS)  # "generating" can come and go between two polls: record every change
    page.locator("#gen-regenerate").click()
    page.wait_for_function(REGENERATED_JS, timeout=60_000)
    assert page.locator("#gen-chat .message.user").count() == 1
    assert chat_text(page) == answer  # same seed, same answer, in place of the old one

    # The shipped model.
    if not (DEFAULT_RUN / LAST_FILE).is_file():
        pytest.skip(f"no shipped model at {DEFAULT_RUN} yet")
    choose(page, "gen-run", DEFAULT_RUN.name)
    set_number(page, "gen-max-new-tokens", 60)
    page.locator("#gen-clear").click()
    page.locator("#gen-prompt textarea").fill("ROMEO:")
    page.locator("#gen-send").click()
    page.locator("#gen-stats", has_text=DEFAULT_RUN.name).wait_for(timeout=60_000)
    assert len(chat_text(page)) > 20
    page.screenshot(path=str(artifacts / "tab-generate-shipped.png"), full_page=True)
