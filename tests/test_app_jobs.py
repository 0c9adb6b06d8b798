"""The training job manager without a browser: the command it runs, and ZeroGPU-style burst training."""

from __future__ import annotations

import time

import pytest

from gpt.cli import build_parser
from gpt.config import TrainConfig
from gpt.data import prepare_dataset
from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.run import DataRef, RunConfig, list_checkpoints, read_config, run_status
from gpt.tokenizer import gpt2_tokenizer
from gpt.ui.jobs import JobManager, train_command

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


def run_config(data_dir) -> RunConfig:
    return RunConfig(model=MODEL, train=TRAIN, data=DataRef(str(data_dir), {}), tokenizer=gpt2_tokenizer(),
                     preset="seed")


def test_the_job_trains_exactly_the_config_file_it_writes(data_dir, tmp_path):
    """One path from Start to the trainer: the parent writes config.json, the child reads only that file."""
    from gpt.run import create_run

    run = create_run(tmp_path / "r", run_config(data_dir))
    args = build_parser().parse_args(train_command(run)[3:])
    assert args.config == str(run / "config.json") and args.preset is None and args.data is None
    assert not any(getattr(args, name) is not None for name in args.model_fields + args.train_fields)
    written = read_config(run)
    for name, value in {**MODEL.to_dict(), **TRAIN.to_dict()}.items():
        assert getattr(written.model if name in MODEL.to_dict() else written.train, name) == value, name
    assert written.preset == "seed" and written.command.startswith("python -m gpt train --data ")


def test_burst_job_trains_in_bursts_refuses_a_second_job_and_stops_gracefully(data_dir, tmp_path):
    jobs = JobManager(burst_seconds=0.5)
    job = jobs.start(run_config(data_dir), tmp_path / "burst")
    with pytest.raises(UserInputError, match="already running.*burst"):
        jobs.start(run_config(data_dir), tmp_path / "other")
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
