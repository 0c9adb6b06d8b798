"""The Train tab is alive from the first second, on a slow setting: the phase at once, then step k of N
with seconds per step and the time to the next evaluation, a visible first point long before the first
evaluation after step 0, and Stop that says "stopping…" at once and "stopped" after the current step."""

from __future__ import annotations

import pytest

from tests.test_browser import choose, set_number

pytestmark = pytest.mark.browser

FIRST_TRAIN_POINT_JS = """() => {
  const plot = document.querySelector('#train-plot .js-plotly-plot');
  if (!plot || !plot.data) return false;
  return plot.data.some(t => t.name === 'train' && t.x.length >= 1 && String(t.mode).includes('markers'));
}"""


def test_a_slow_run_shows_its_phase_and_a_first_point_before_its_first_evaluation(page, artifacts):
    page.get_by_role("tab", name="Train").click()
    choose(page, "train-preset", "tiny")
    page.locator("#train-preset-note", has_text="the quickest try").wait_for()
    # slow steps (a big batch of long windows) and no evaluation for 1,000 steps: the steps are all there is
    for elem_id, value in [("train-n-layer", 2), ("train-n-embd", 64), ("train-context-length", 128),
                           ("train-batch-size", 48), ("train-eval-interval", 1000), ("train-log-interval", 1000),
                           ("train-log-seconds", 1), ("train-max-steps", 2000), ("train-sample-tokens", 0)]:
        set_number(page, elem_id, value)
    choose(page, "train-device", "cpu")
    page.locator("#train-run-name textarea").fill("browser-slow-run")
    page.locator("#train-summary", has_text="2,000 steps").wait_for()
    page.locator("#train-start").click()
    page.locator("#train-status", has_text="browser-slow-run: starting").wait_for(timeout=10_000)
    page.locator("#train-status", has_text="s/step").wait_for(timeout=90_000)
    status = page.locator("#train-status").inner_text()
    assert "of 2,000" in status and "next evaluation in" in status, status
    page.wait_for_function(FIRST_TRAIN_POINT_JS, timeout=60_000)
    page.screenshot(path=str(artifacts / "tab-train-slow.png"), full_page=True)
    page.locator("#train-stop").click()
    page.locator("#train-status", has_text="stopping…").wait_for(timeout=5_000)
    page.locator("#train-status", has_text="browser-slow-run: stopped").wait_for(timeout=90_000)
