"""The Train tab's "Push to Hub" endpoint through gradio_client: offline, unreachable and token-less pushes are
one page message each, and the token typed into the page appears in no message, return value or log line."""

from __future__ import annotations

import logging
import socket

import pytest

hf_constants = pytest.importorskip("huggingface_hub.constants")
from gradio_client import Client  # noqa: E402

FAKE_TOKEN = "hf_pageTokenThatMustNeverBeEchoedAnywhere"


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_offline_is_one_page_message_without_the_token(client: Client, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.DEBUG), pytest.raises(Exception, match="the Hugging Face Hub is off here") as info:
        client.predict("tiny-random", "someone/tiny-random", True, FAKE_TOKEN, api_name="/push_to_hub")
    assert "cannot push to someone/tiny-random" in caplog.text  # the server's one log line was captured
    assert FAKE_TOKEN not in str(info.value) and FAKE_TOKEN not in caplog.text
    assert "Traceback" not in caplog.text


def test_push_to_an_unreachable_hub_never_echoes_the_token(client: Client, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The token is used here (the push gets as far as the network), and still shows up nowhere."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with caplog.at_level(logging.DEBUG), pytest.raises(Exception, match="Hugging Face Hub is unreachable") as info:
        client.predict("tiny-random", "someone/tiny-random", False, FAKE_TOKEN, api_name="/push_to_hub")
    assert "cannot push to someone/tiny-random" in caplog.text
    assert FAKE_TOKEN not in str(info.value) and FAKE_TOKEN not in caplog.text


def test_push_without_a_token_or_with_bad_input_says_what_to_fix(client: Client, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(Exception, match="needs a Hugging Face token with write access"):
        client.predict("tiny-random", "someone/tiny-random", False, "", api_name="/push_to_hub")
    with pytest.raises(Exception, match="not a Hugging Face repository id"):
        client.predict("tiny-random", "not a repo", False, "", api_name="/push_to_hub")
    with pytest.raises(Exception, match="unknown run '/?etc'"):
        client.predict("/etc", "someone/x", False, "", api_name="/push_to_hub")


def test_on_a_space_the_panel_says_local_runs_vanish_and_opens(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import gradio as gr

    from gpt.ui import hub_panel
    from gpt.ui.common import AppDirs

    monkeypatch.setattr(hub_panel, "ON_SPACE", True)
    with gr.Blocks() as demo:
        panel = hub_panel.build(AppDirs(data=tmp_path / "data", runs=tmp_path / "runs"))
    notes = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "hub-space-note"]
    assert notes and "vanish when the Space restarts" in notes[0].value
    accordion = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "hub-panel")
    assert accordion.open and panel.token.type == "password"


@pytest.mark.browser
def test_push_panel_in_the_browser(page, artifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    page.get_by_role("tab", name="Train").click()
    page.locator("#hub-panel").get_by_text("Push to Hub: share a run").click()
    token = page.locator("#hub-token input, #hub-token textarea").first
    assert token.get_attribute("type") == "password"
    page.locator("#hub-repo textarea, #hub-repo input").first.fill("someone/tiny-random")
    token.fill(FAKE_TOKEN)
    page.locator("#hub-push").click()
    page.get_by_text("the Hugging Face Hub is off here").first.wait_for()
    assert FAKE_TOKEN not in page.content()  # the password field's value is a property, not in the markup
    page.locator("#hub-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "train-push-to-hub.png"), full_page=True)


def test_on_a_space_the_servers_token_never_pushes_for_a_visitor(client: Client, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path) -> None:
    """A Space owner's HF_TOKEN secret is for the Space, not for whoever opens the page."""
    from gpt.ui import hub_panel

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(hub_panel, "ON_SPACE", True)
    with pytest.raises(Exception, match="paste your own Hugging Face token") as info:
        client.predict("tiny-random", "someone/tiny-random", False, "", api_name="/push_to_hub")
    assert FAKE_TOKEN not in str(info.value)
