"""ZeroGPU as it is today, checked on CPU with the real `spaces` package: a GPU call is at most 60 s by
default, runs in a separate process with its arguments and result pickled (no CUDA tensors may cross),
and torch.compile is not supported there."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import pytest
import spaces

from gpt.config import resolve_preset
from gpt.errors import UserInputError
from gpt.run import DataRef, Run, RunConfig, create_run
from gpt.tokenizer import gpt2_tokenizer
from gpt.train import Trainer
from gpt.ui import jobs, zerogpu

SMALL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "context_length": 32}
QUICK = {"batch_size": 4, "max_steps": 4, "eval_interval": 2, "eval_batches": 1, "sample_tokens": 2,
         "snapshots": 0, "device": "cpu"}


def _new_run(data_dir: Path, run: Path, **train: object) -> Path:
    model, config = resolve_preset("tiny", SMALL, {**QUICK, **train})
    create_run(run, RunConfig(model=model, train=config, data=DataRef(str(data_dir), {}), tokenizer=gpt2_tokenizer(),
                              preset="tiny"))
    return run


def test_the_burst_fits_a_default_gpu_call() -> None:
    assert jobs.BURST_DURATION <= 60  # ZeroGPU's default duration per call
    assert jobs.BURST_SECONDS + 15 <= jobs.BURST_DURATION  # room to start, evaluate and save
    assert not spaces.config.Config.zero_gpu and not zerogpu.ON_ZEROGPU  # the decorator is a no-op here
    assert jobs.train_burst is spaces.GPU(jobs._train_burst, duration=jobs.BURST_DURATION)


def test_a_burst_in_a_separate_process_exchanges_only_plain_data(data_dir: Path, tmp_path: Path) -> None:
    """As on ZeroGPU: the call runs in another process; its arguments and result are pickled."""
    run = _new_run(data_dir, tmp_path / "run")
    arguments = (str(run), 60.0, False)
    assert pickle.loads(pickle.dumps(arguments)) == arguments
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        status = pool.apply(jobs._train_burst, arguments)
        assert status == "finished" and pickle.loads(pickle.dumps(status)) == status
        opened = Run.open(run)
        assert opened.status()["status"] == "finished" and opened.checkpoints()[-1].step == 4
        # a second burst of a finished run starts nothing and returns the same plain status
        assert pool.apply(jobs._train_burst, arguments) == "finished"


def test_bursts_resume_from_the_checkpoint_and_stop_cleanly(data_dir: Path, tmp_path: Path) -> None:
    run = _new_run(data_dir, tmp_path / "run", max_steps=100_000)
    assert jobs._train_burst(str(run), 0.5, False) == "running"
    for _ in range(20):  # the first burst may hold only the step-0 evaluation on a loaded machine
        if Run.open(run).checkpoints()[-1].step > 0:
            break
        assert jobs._train_burst(str(run), 0.5, False) == "running"
    first = Run.open(run).checkpoints()[-1].step
    assert first > 0 and Run.open(run).has_trainer_state()
    assert jobs._train_burst(str(run), 0.5, True) == "stopped"
    assert Run.open(run).status()["status"] == "stopped" and Run.open(run).checkpoints()[-1].step >= first


def test_compile_is_refused_on_zerogpu_before_anything_is_built(data_dir: Path, tmp_path: Path) -> None:
    model, train = resolve_preset("tiny", SMALL, {**QUICK, "compile": True})
    with pytest.raises(UserInputError, match="not supported on ZeroGPU") as caught:
        Trainer(model, train, data_dir, tmp_path / "run", on_zerogpu=True)
    assert caught.value.field == "compile" and not (tmp_path / "run").exists()


def test_the_train_tab_says_how_much_quota_a_run_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt.ui import train_tab
    from gpt.ui.common import AppDirs

    dirs = AppDirs(tmp_path / "data", tmp_path / "runs")
    monkeypatch.setattr(train_tab.zerogpu, "ON_ZEROGPU", True)
    summary = train_tab.summary_markdown(dirs, {"preset": "quick-cpu", "fields": {"device": "cpu"}})
    assert f"bursts of {jobs.BURST_SECONDS:.0f} s" in summary and "min of quota" in summary
