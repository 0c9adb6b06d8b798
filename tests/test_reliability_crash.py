"""Crash safety: SIGKILL a training run (`python -m gpt train`, tiny model) at many moments, including in
the middle of every kind of write and right after each file appears, and check after every kill that the
run folder is either a run that loads and resumes, or a folder that starts again cleanly. The same folder
goes through every kill in turn, each start resuming or restarting what the last one left; at the end it
finishes, and its losses equal an uninterrupted run's bit for bit, with every step logged once.

One real `python -m gpt train` process is killed at a random moment. The other kills hit processes forked
from one harness that imported torch and `gpt` once (a fresh interpreter costs seconds on a loaded
2-core machine); each runs `gpt.cli.main` exactly as `python -m gpt` does, with `os.replace` or the
metrics append patched in that child only to pause at the chosen write, which the test then kills.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt import run as runs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TRAIN_FLAGS = ["--preset", "tiny", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context-length", "32",
               "--batch-size", "4", "--eval-batches", "2", "--eval-interval", "5", "--log-interval", "1",
               "--max-steps", "300", "--snapshots", "4", "--sample-tokens", "4", "--no-head-scores",
               "--optimizer", "adamw", "--device", "cpu", "--precision", "fp32", "--no-progress"]

HARNESS = r"""
import json, os, sys, time, traceback
from pathlib import Path
import torch  # imported once here (never run: a forked child must not inherit a used thread pool)
import torch._dynamo  # what building an optimizer imports (3 s of CPU)
import gpt.card, gpt.cli, gpt.evaluate, gpt.run, gpt.sampling, gpt.train, tqdm

def pause(marker):
    Path(marker).write_text("paused")
    time.sleep(3600)  # until the test kills this process

def patch(job):
    what = job.get("pause")
    if not what:
        return
    seen = {"count": 0}
    if what["file"] == "torn metrics":
        append = gpt.run.append_metrics
        def torn(run_dir, row):
            seen["count"] += 1
            if seen["count"] == what["nth"]:
                with open(Path(run_dir) / gpt.run.METRICS_FILE, "a") as handle:
                    handle.write(json.dumps(row)[:25])
                    handle.flush()
                pause(job["marker"])
            append(run_dir, row)
        gpt.run.append_metrics = torn
        return
    replace = os.replace
    def paused_replace(source, target):
        hit = Path(target).name.startswith(what["file"])
        if hit:
            seen["count"] += 1
        if hit and seen["count"] == what["nth"] and what["when"] == "before":
            pause(job["marker"])
        replace(source, target)
        if hit and seen["count"] == what["nth"] and what["when"] == "after":
            pause(job["marker"])
    os.replace = paused_replace

print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        torch.set_num_threads(1)  # a tiny model: two threads only fight over a loaded machine's cores
        try:
            patch(job)
            code = gpt.cli.main(job["argv"])
        except BaseException:
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), flush=True)
"""

# (file the write replaces, before/after the replace, which occurrence in that process); None: a random moment.
KILLS = [  # in an order each is reached with steps to spare, whatever the random kills left
    None,
    {"file": "config.json", "when": "before", "nth": 1},
    {"file": "trainer_state.pt", "when": "before", "nth": 1},  # the first checkpoint: its first file
    {"file": "trainer_state.pt", "when": "after", "nth": 1},   # ... the state exists, no weights yet
    {"file": "best.safetensors", "when": "before", "nth": 1},
    {"file": "model.safetensors", "when": "before", "nth": 1},
    {"file": "model.safetensors", "when": "after", "nth": 1},  # the first complete checkpoint
    {"file": "step_", "when": "before", "nth": 1},             # a snapshot
    {"file": "torn metrics", "nth": 9},                        # a metrics row half written
    {"file": "metrics.jsonl", "when": "before", "nth": 1},     # resume cutting the metrics back
    None,
    {"file": "model.safetensors", "when": "before", "nth": 2},
    {"file": "step_", "when": "after", "nth": 1},
    None,
    {"file": "best.safetensors", "when": "after", "nth": 2},
    {"file": "torn metrics", "nth": 30},
    {"file": "README.md", "when": "before", "nth": 1},         # the model card, after the final checkpoint
]


class Harness:
    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "w") as errors:
            self.process = subprocess.Popen([sys.executable, "-c", HARNESS], cwd=ROOT, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errors, text=True)

    def wait_ready(self) -> None:
        assert self.process.stdout.readline().strip() == "ready", log_tail(self.log)

    def start(self, argv: list[str], log: Path, pause: dict | None, marker: Path) -> int:
        job = {"argv": argv, "log": str(log), "pause": pause, "marker": str(marker)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["pid"]

    def exit_status(self) -> int:
        return json.loads(self.process.stdout.readline())["status"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def folder_state(run: Path) -> str:
    """What a killed start left: "run" (every checkpoint loads, its trainer state loads), "resumable"
    (a trainer state before the first weights), "restartable" (a readable config.json) or "empty"."""
    if runs.has_checkpoint(run):
        opened = runs.Run.open(run)
        for info in opened.checkpoints():
            opened.load(info.name)
        assert runs.load_trainer_state(run)["step"] >= 0  # a run trained here always has its state
        return "run"
    if (run / runs.STATE_FILE).is_file():
        runs.load_trainer_state(run)
        runs.Run.open(run)
        return "resumable"
    if (run / runs.CONFIG_FILE).is_file():
        runs.Run.open(run)
        return "restartable"
    return "empty"


def next_command(run: Path, first: list[str]) -> list[str]:
    """What a person does next: resume a folder with a trainer state, else start its config again, else
    run the first command again."""
    if (run / runs.STATE_FILE).is_file():
        return ["train", "--resume", str(run), "--no-progress"]
    if (run / runs.CONFIG_FILE).is_file():
        return ["train", "--config", str(run / runs.CONFIG_FILE), "--no-progress"]
    return first


def alive(pid: int) -> bool:
    """Whether the harness's child still runs (a zombie, not yet reaped, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def test_sigkill_at_any_moment_leaves_a_loadable_resumable_or_restartable_folder(data_dir: Path,
                                                                                 tmp_path: Path) -> None:
    rng = random.Random(17)
    run, reference = tmp_path / "run", tmp_path / "reference"
    first = ["train", "--data", str(data_dir), *TRAIN_FLAGS, "--out", str(run)]
    states: list[str] = []

    harness = Harness(tmp_path / "harness.log")  # starts importing while the real process below runs
    # A real `python -m gpt train` process, killed at a random moment once its run folder exists.
    process = subprocess.Popen([sys.executable, "-m", "gpt", *first], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / runs.METRICS_FILE).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    states.append(folder_state(run))

    try:
        harness.wait_ready()
        paused = []
        for index, kill in enumerate(KILLS):
            marker, log = tmp_path / f"paused-{index}", tmp_path / f"start-{index}.log"
            pid = harness.start(next_command(run, first), log, kill, marker)
            if kill is None:
                time.sleep(rng.uniform(0.05, 0.4))
            else:
                deadline = time.monotonic() + 60
                while not marker.exists() and time.monotonic() < deadline and alive(pid):
                    time.sleep(0.01)
                if marker.exists():
                    paused.append(index)
            with contextlib.suppress(ProcessLookupError):  # it may have ended by itself
                os.kill(pid, signal.SIGKILL)
            status = harness.exit_status()
            assert not os.WIFEXITED(status) or os.WEXITSTATUS(status) == 0, (kill, log_tail(log))
            try:
                states.append(folder_state(run))
            except Exception as error:
                raise AssertionError(f"after kill {index} ({kill}) the folder is unusable: {error}") from error
        missed = [KILLS[i] for i in range(len(KILLS)) if KILLS[i] is not None and i not in paused]
        assert not missed, f"these writes were never reached, so never killed: {missed}"

        harness.start(next_command(run, first), tmp_path / "finish.log", None, tmp_path / "unused")
        assert harness.exit_status() == 0, log_tail(tmp_path / "finish.log")
        harness.start(["train", "--data", str(data_dir), *TRAIN_FLAGS, "--out", str(reference)],
                      tmp_path / "reference.log", None, tmp_path / "unused")
        assert harness.exit_status() == 0, log_tail(tmp_path / "reference.log")
    finally:
        harness.close()

    # which states the kills leave depends on timing (the first, random kill may already pass the first
    # checkpoint); each planned write was killed (`missed` above) and every folder was usable
    assert "run" in states and set(states) <= {"run", "resumable", "restartable", "empty"}, states
    assert runs.run_status(run)["status"] == "finished"
    train = [(row["step"], row["train_loss"]) for row in runs.read_metrics(run, "train")]
    expected = [(row["step"], row["train_loss"]) for row in runs.read_metrics(reference, "train")]
    assert [step for step, _ in train] == list(range(1, 301))  # every step logged once
    assert train == expected  # resumed and restarted, and the same losses bit for bit
    assert not list(run.rglob("*.tmp"))  # each start cleaned what the last kill left
    assert runs.load_run(run).step == 300
