"""The `train` command's contracts: `--config` (the one path the app takes), `--dry-run`, `--help` with
preset values, and torchrun with any preset: no extra flags, one line for what was adjusted, errors once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt import run as runs
from gpt.cli import main
from gpt.config import resolve_preset
from gpt.run import DataRef, RunConfig, create_run
from gpt.tokenizer import gpt2_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "context_length": 32}
QUICK = {"batch_size": 4, "max_steps": 3, "eval_interval": 10, "eval_batches": 1, "sample_tokens": 2,
         "snapshots": 0, "device": "cpu"}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_SERVICE")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _written_config(data_dir: Path, run: Path) -> Path:
    model, train = resolve_preset("tiny", SMALL, QUICK)
    create_run(run, RunConfig(model=model, train=train, data=DataRef(str(data_dir), {}), tokenizer=gpt2_tokenizer(),
                              preset="tiny"))
    return run / runs.CONFIG_FILE


def test_config_file_trains_the_run_it_describes_and_can_be_run_again(data_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    config = _written_config(data_dir, tmp_path / "run")
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    first = runs.Run.open(tmp_path / "run")
    assert first.status()["status"] == "finished" and first.checkpoints()[-1].step == 3
    assert first.config.runtime["precision"] in ("fp32", "bf16") and first.config.runtime["precision_reason"]
    assert main(["train", "--config", str(config)]) == 2  # trained now: refused, nothing touched
    assert "already holds a run" in capsys.readouterr().err
    # the same file trains a second run elsewhere, with a field changed
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "again"), "--max-steps", "2",
                 "--no-progress"]) == 0
    again = runs.Run.open(tmp_path / "again")
    assert again.config.train.max_steps == 2 and again.config.model == first.config.model
    assert "--max-steps 2" in again.config.command


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(data_dir: Path, tmp_path: Path) -> None:
    config = _written_config(data_dir, tmp_path / "run")
    runs.append_metrics(tmp_path / "run", {"kind": "status", "step": 0, "status": "running", "message": "x"})
    (tmp_path / "run" / ".model.safetensors.abc.tmp").write_bytes(b"partial")
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    run = runs.Run.open(tmp_path / "run")
    assert not list((tmp_path / "run").glob(".*.tmp"))
    assert [row["status"] for row in run.metrics("status")] == ["running", "finished"]


def test_dry_run_prints_the_plan_and_writes_nothing(data_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "never"
    assert main(["train", "--data", str(data_dir), "--preset", "quick-cpu", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "parameters" in text and "compact vocabulary" in text and "precision" in text
    assert "until the time limit (5 min)" in text
    assert "dropout 0.1 only past 5 epochs: decided from a timed step when training starts" in text
    assert not out.exists()


def test_help_lists_presets_with_descriptions_and_the_chosen_presets_values() -> None:
    done = subprocess.run([sys.executable, "-m", "gpt", "train", "--preset", "quick-cpu", "--help"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "the 5-minute CPU recipe" in done.stdout and "the quickest try" in done.stdout
    assert "[quick-cpu: muon]" in done.stdout and "choices: adamw, muon" in done.stdout.replace("\n", " ")


@pytest.mark.slow
def test_torchrun_two_processes_with_preset_tiny_and_no_batch_flags(data_dir: Path, tmp_path: Path) -> None:
    """tiny's accumulation (1) does not divide among 2 processes: the batch is split, said once by rank 0."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt",
               "train", "--data", str(data_dir), "--preset", "tiny", "--max-steps", "2", "--out", str(out),
               "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert output.count("each runs 1 micro-batch(es) of 8 windows (the global batch stays 16 windows)") == 1
    run = runs.Run.open(out)
    assert run.status()["status"] == "finished" and run.checkpoints()[-1].step == 2
    assert json.loads((out / "config.json").read_text())["runtime"]["world_size"] == 2

    bad = subprocess.run([*command[:8], "--data", str(tmp_path / "missing"), "--preset", "tiny", "--out",
                          str(tmp_path / "bad")], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    errors = [line for line in (bad.stdout + bad.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing" in errors[0] and "(exitcode: 2)" in bad.stderr
