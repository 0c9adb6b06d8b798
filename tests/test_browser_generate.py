"""The Generate tab in a real browser (Playwright, headless chromium): the stage view follows the token picked
with the keyboard or a click, a picked alternative makes a branch shown next to the main answer, and Stop
ends a streaming answer with the stats, the stage view and the coloured answer all describing it."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser

RUN = "tiny-random"


def choose(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    page.locator("ul[role=listbox] li", has_text=value).first.click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def tokens_made(page) -> int:
    return int(re.search(r"(\d+) tokens in", page.locator("#gen-stats").inner_text()).group(1))


def stage_title(page, text: str):
    """The stage figure's title once it reads `text`."""
    title = page.locator("#gen-why .gtitle", has_text=text)
    title.wait_for()
    return title


def chat_answers(page) -> list[str]:
    return page.locator("#gen-chat .message.bot").all_inner_texts()


def test_stage_view_branching_and_stop(page, artifacts):
    page.get_by_role("tab", name="Generate").click()
    choose(page, "gen-run", RUN)
    set_number(page, "gen-max-new-tokens", 24)
    set_number(page, "gen-seed", 11)
    page.locator("#gen-prompt textarea").fill("Once upon a time")
    page.locator("#gen-send").click()
    page.locator("#gen-stats", has_text="tokens/s").wait_for(timeout=90_000)
    made = tokens_made(page)
    main_tokens = page.locator("#gen-answer .smp-tok[data-branch='0']")
    assert main_tokens.count() == made
    stage_title(page, f"Token 1 of {made}")
    assert "candidates left" in page.locator("#gen-stage-table").inner_text()
    assert page.locator("#gen-chat [data-testid='block-label']").count() == 0  # no label over the first line

    # The arrow keys move the slider and the stage view follows.
    slider = page.locator("#gen-step input[type=range]")
    slider.focus()
    slider.press("ArrowRight")
    slider.press("ArrowRight")
    stage_title(page, f"Token 3 of {made}")

    # A click on a token shows its stages; an alternative there starts a branch next to the main answer.
    main_tokens.nth(4).click()
    stage_title(page, f"Token 5 of {made}")
    page.locator("#gen-alternatives label").first.click()
    page.locator("#gen-answer .smp-branch[data-branch='1']").wait_for(timeout=90_000)
    page.locator("#gen-stats", has_text="branch 2: token 5").wait_for(timeout=90_000)
    stage_title(page, "(picked by you)")
    fork = page.locator("#gen-answer .smp-tok[data-branch='1']")
    cards = [main_tokens.nth(i).get_attribute("title") for i in range(5)]
    forked = [fork.nth(i).get_attribute("title") for i in range(5)]
    assert cards[:4] == forked[:4] and cards[4] != forked[4] and "picked by you" in forked[4]
    assert page.locator("#gen-branch label").count() == 2
    page.screenshot(path=str(artifacts / "tab-generate-branches.png"), full_page=True)

    # Stop while a long answer streams: it ends there, and everything describes that answer.
    set_number(page, "gen-max-new-tokens", 1000)
    page.locator("#gen-prompt textarea").fill("Stop me")
    page.locator("#gen-send").click()
    page.wait_for_function("() => { const b = document.querySelectorAll('#gen-chat .message.bot');"
                           " return b.length === 2 && b[1].innerText.trim().length > 0; }", timeout=90_000)
    page.locator("#gen-stop").click()
    page.locator("#gen-stats", has_text="stopped").wait_for(timeout=30_000)
    stopped = tokens_made(page)
    assert stopped < 1000
    assert page.locator("#gen-answer .smp-tok[data-branch='0']").count() == stopped
    assert page.locator("#gen-answer .smp-branch").count() == 1  # the new answer, not the old branches
    stage_title(page, f"Token 1 of {stopped}")
    answer = chat_answers(page)[-1]
    slider.focus()
    slider.press("ArrowRight")  # a round trip to the server after the stop ...
    stage_title(page, f"Token 2 of {stopped}")
    assert chat_answers(page)[-1] == answer  # ... and the answer did not grow meanwhile
    page.screenshot(path=str(artifacts / "tab-generate-stopped.png"), full_page=True)
