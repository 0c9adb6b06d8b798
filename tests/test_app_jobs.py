"""The training job manager without a browser: the command it runs, and ZeroGPU-style burst training."""

from __future__ import annotations

import time

import pytest

from gpt.checkpoint import list_checkpoints, run_status
from gpt.cli import build_parser
from gpt.data import prepare_dataset
from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.train import TrainConfig
from gpt.ui.jobs import JobManager, train_arguments

MODEL = GPTConfig(vocab_size=50257, context_length=16, n_layer=1, n_head=2, n_embd=16, activation="relu",
                  norm="rmsnorm", bias=False)
TRAIN = TrainConfig(batch_size=2, max_steps=100_000, eval_interval=5, eval_batches=1, log_interval=1,
                    sample_tokens=4, warmup_steps=1, device="cpu", snapshots=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i}: to be or not to be, that is the question." for i in range(80)))
    return prepare_dataset([corpus], root / "data").out_dir


def test_train_arguments_spell_out_every_field_for_the_command_line(tmp_path):
    args = build_parser().parse_args(["train", *train_arguments(MODEL, TRAIN, tmp_path / "d", tmp_path / "r", "seed")])
    assert (args.data, args.preset, args.out) == (str(tmp_path / "d"), "seed", str(tmp_path / "r"))
    for name, value in {**MODEL.to_dict(), **TRAIN.to_dict()}.items():
        if name != "vocab_size":
            assert getattr(args, name) == value, name


def test_burst_job_trains_in_bursts_refuses_a_second_job_and_stops_gracefully(data_dir, tmp_path):
    jobs = JobManager(burst_seconds=0.5)
    job = jobs.start(MODEL, TRAIN, data_dir, tmp_path / "burst", "tiny")
    with pytest.raises(UserInputError, match="already running.*burst"):
        jobs.start(MODEL, TRAIN, data_dir, tmp_path / "other", "tiny")
    deadline = time.time() + 60
    while "burst ended: running" not in (tmp_path / "burst" / "train.log").read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert jobs.stop() is job
    job.wait(60)
    assert not job.is_running() and job.returncode() == 0
    status = run_status(tmp_path / "burst")
    assert status["status"] == "stopped" and status["step"] > 0
    assert "last" in [info.name for info in list_checkpoints(tmp_path / "burst")]
    assert jobs.stop() is None
