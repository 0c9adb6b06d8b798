"""Hugging Face dataset names without the Hub: the real `datasets` / `huggingface_hub` clients, no mock
server, fail within seconds with a message that says the Hub is unreachable and how to use a local file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt.data import load_hf_dataset
from gpt.errors import UserInputError

REPO = Path(__file__).resolve().parent.parent
NAME = "gpt-playground-test/no-such-dataset"


def _assert_says_unreachable_and_what_to_do(message: str) -> None:
    assert f"could not load Hugging Face dataset {NAME}" in message
    assert "Hugging Face Hub is unreachable" in message
    assert "upload it in the Data tab" in message and "python -m gpt prepare FILE" in message


def test_offline_mode_fails_at_once_in_process(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(UserInputError) as info:
        load_hf_dataset(NAME)
    assert time.monotonic() - start < 10
    _assert_says_unreachable_and_what_to_do(str(info.value))
    assert "offline mode: HF_HUB_OFFLINE is set" in str(info.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def _without_network(tmp_path: Path, endpoint: str) -> dict:
    """The environment of a machine without network and without offline mode: `endpoint` is a name that
    never resolves (.invalid) or a port nobody listens on."""
    if endpoint == "closed-port":
        endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"))
    return env


TIMED_LOAD = f"""
import time
from gpt.data import load_hf_dataset
from gpt.errors import UserInputError
start = time.monotonic()
try:
    load_hf_dataset({NAME!r})
except UserInputError as error:
    print(f"{{time.monotonic() - start:.2f}}", error)
"""


@pytest.mark.parametrize("endpoint", ["https://hub.invalid", "closed-port"])
def test_no_network_without_offline_mode_fails_within_seconds(tmp_path, endpoint):
    """Without HF_HUB_OFFLINE `datasets` alone retries for ~25 s; the library's call (imports included)
    returns in seconds, timed in a fresh process so no earlier import helps it."""
    env = _without_network(tmp_path, endpoint)
    result = subprocess.run([sys.executable, "-c", TIMED_LOAD], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=60)
    seconds, message = result.stdout.strip().split(" ", 1)
    assert float(seconds) < 10, f"took {seconds} s"
    _assert_says_unreachable_and_what_to_do(message)
    assert env["HF_ENDPOINT"] in message


def test_cli_without_network_is_one_line_and_exit_2(tmp_path):
    env = _without_network(tmp_path, "https://hub.invalid")
    command = [sys.executable, "-m", "gpt", "prepare", "--hf-dataset", NAME, "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    _assert_says_unreachable_and_what_to_do(result.stderr)
    assert not (tmp_path / "out").exists()
