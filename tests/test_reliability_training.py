"""Training and the command line under bad luck: divergence (loss, gradient, weights, evaluation), resume
after a torn metrics file, evaluation on tokens a compact vocabulary cannot represent, and every damaged
input the issue found giving one `error:` line and exit code 2 instead of a traceback."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt import run as runs
from gpt.cli import main
from gpt.config import TrainConfig
from gpt.data import prepare_dataset
from gpt.model import GPTConfig
from gpt.train import Trainer

MODEL = {"context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}
QUICK = {"batch_size": 4, "eval_interval": 5, "eval_batches": 2, "log_interval": 1, "sample_tokens": 8,
         "warmup_steps": 2, "learning_rate": 2e-2, "snapshots": 3, "head_scores": False, "precision": "fp32",
         "device": "cpu"}
FLAGS = ["--preset", "tiny", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context-length", "32",
         "--batch-size", "4", "--eval-batches", "2", "--log-interval", "1", "--no-progress", "--device", "cpu",
         "--precision", "fp32", "--no-head-scores", "--optimizer", "adamw", "--warmup-steps", "2"]


def make_trainer(data_dir: Path, out: Path, **overrides: object) -> Trainer:
    return Trainer(GPTConfig(**MODEL), TrainConfig(**{**QUICK, "max_steps": 10, **overrides}), data_dir, out)


def steps_of(run_dir: Path, kind: str) -> list[int]:
    return [row["step"] for row in runs.read_metrics(run_dir, kind)]


# -- 4. divergence ------------------------------------------------------------------------------------------
def test_a_diverging_run_stops_cleanly_keeps_a_good_checkpoint_and_resumes(data_dir: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """`--learning-rate 1e30`: the evaluation after the first step is NaN. The run stops as diverged without
    sampling from the NaN model, keeps the step-0 checkpoint (the last healthy evaluation) and names it;
    resuming from it with a lower learning rate trains to the end."""
    run = tmp_path / "run"
    code = main(["train", "--data", str(data_dir), *FLAGS, "--out", str(run), "--learning-rate", "1e30",
                 "--eval-interval", "1", "--max-steps", "12", "--sample-tokens", "8"])
    assert code == 1
    status = runs.run_status(run)
    assert status["status"] == "diverged"
    assert status["message"].startswith("the validation loss became nan at step 1; the last good checkpoint is "
                                        "kept: model.safetensors and trainer_state.pt at step 0 (resume from it: "
                                        f"python -m gpt train --resume {run} --learning-rate 5e+29)"), status
    assert steps_of(run, "eval") == [0, 1] and steps_of(run, "sample") == [0]  # no sample from the NaN model
    loaded = runs.load_run(run)
    assert loaded.step == 0 and all(torch.isfinite(p).all() for p in loaded.model.parameters())
    assert runs.load_trainer_state(run)["step"] == 0
    assert "diverged at step 1" in (run / runs.CARD_FILE).read_text()
    capsys.readouterr()

    code = main(["train", "--resume", str(run), "--learning-rate", "1e-3", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "finished" in out and "(step -1)" not in out
    statuses = runs.read_metrics(run, "status")
    assert [row["status"] for row in statuses] == ["running", "diverged", "running", "finished"]
    assert statuses[2]["message"].startswith("resumed at step 0")
    assert steps_of(run, "train") == list(range(1, 13))  # the diverged step 1 was cut: no step logged twice
    assert math.isfinite(runs.read_metrics(run, "eval")[-1]["val_loss"])
    assert runs.load_run(run).step == 12


def test_sample_tokens_0_and_a_divergence_still_write_the_model_card(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), *FLAGS, "--out", str(run), "--learning-rate", "1e30",
                 "--eval-interval", "1", "--max-steps", "6", "--sample-tokens", "0"]) == 1
    card = (run / runs.CARD_FILE).read_text()
    assert "diverged at step 1" in card and runs.read_metrics(run, "sample") == []


def test_an_evaluation_far_above_the_best_is_divergence(data_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import gpt.train

    real = gpt.train.evaluate
    trainer = make_trainer(data_dir, tmp_path / "run", max_steps=20)

    def spiking(*args, **kwargs):
        loss, count = real(*args, **kwargs)
        return (loss + 5.0 if trainer.step >= 10 else loss), count

    monkeypatch.setattr(gpt.train, "evaluate", spiking)
    assert trainer.run() == "diverged"
    message = runs.run_status(tmp_path / "run")["message"]
    assert "at step 10, more than 3 nats above the best" in message and "at step 5 (resume from it" in message
    assert runs.load_run(tmp_path / "run").step == 5 and steps_of(tmp_path / "run", "sample") == [0, 5]


class InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite gradient backward (a finite loss whose gradient overflowed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


def test_an_infinite_gradient_is_divergence_named_as_such(data_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data_dir, tmp_path / "run", max_steps=20)
    model = trainer.model

    def overflowing(x: torch.Tensor, y: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
        logits, loss = model(x, y, **options)
        return logits, InfiniteGradient.apply(loss) if trainer.step >= 7 else loss

    trainer.train_model = overflowing
    assert trainer.run() == "diverged"
    message = runs.run_status(tmp_path / "run")["message"]
    assert message.startswith("the gradient norm became ") and " at step 8; " in message
    assert "model.safetensors and trainer_state.pt at step 5" in message
    assert runs.load_run(tmp_path / "run").step == 5 and steps_of(tmp_path / "run", "train")[-1] == 7


def test_nan_weights_are_never_saved(data_dir: Path, tmp_path: Path) -> None:
    """A burst's save (and a snapshot) checks the weights: NaN weights mark the run diverged, and the files
    keep the last good checkpoint."""
    trainer = make_trainer(data_dir, tmp_path / "run", max_steps=20)
    assert trainer.run(max_steps=5) == "running"
    before = (tmp_path / "run" / runs.LAST_FILE).read_bytes()
    with torch.no_grad():
        next(trainer.model.blocks[0].ffn.parameters()).view(-1)[0] = float("nan")
    trainer.save()
    assert trainer.status == "diverged"
    assert "the weights hold NaN or inf values at step 5" in runs.run_status(tmp_path / "run")["message"]
    assert (tmp_path / "run" / runs.LAST_FILE).read_bytes() == before


def test_resume_after_a_torn_metrics_line_logs_every_step_once_and_matches(data_dir: Path, tmp_path: Path) -> None:
    whole = make_trainer(data_dir, tmp_path / "whole", max_steps=12)
    assert whole.run() == "finished"
    parts = make_trainer(data_dir, tmp_path / "parts", max_steps=12)
    assert parts.run(max_steps=8) == "running"  # checkpoint at step 5; steps 6-8 logged after it
    with open(tmp_path / "parts" / runs.METRICS_FILE, "a") as handle:
        handle.write('{"kind": "train", "step": 9, "train_lo')  # killed mid-write
    resumed = Trainer.resume(tmp_path / "parts")
    assert resumed.step == 5 and resumed.run() == "finished"
    assert steps_of(tmp_path / "parts", "train") == list(range(1, 13))
    statuses = runs.read_metrics(tmp_path / "parts", "status")
    assert [row["status"] for row in statuses] == ["running", "running", "finished"]
    assert statuses[1]["message"].startswith("resumed at step 5")
    losses = {kind: [row["train_loss"] for row in runs.read_metrics(tmp_path / kind, "train")]
              for kind in ("whole", "parts")}
    assert losses["parts"] == losses["whole"]  # bit for bit


# -- 3. tokens a compact vocabulary cannot represent --------------------------------------------------------
@pytest.fixture(scope="module")
def compact_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("compact") / "run"
    assert make_trainer(data_dir, run, max_steps=5, vocab="compact").run() == "finished"
    return run


@pytest.fixture(scope="module")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = ("Quantum chromodynamics describes gluons; 양자 색역학은 글루온을 설명한다. Ñandú, façade, Zürich. " * 40)
    source = tmp_path_factory.mktemp("other") / "other.txt"
    source.write_text(text, encoding="utf-8")
    out = source.parent / "data"
    prepare_dataset([source], out)
    return out


def test_eval_refuses_tokens_outside_a_compact_vocabulary_and_says_how_many(
        compact_run: Path, data_dir: Path, other_data: Path, capsys: pytest.CaptureFixture) -> None:
    """It used to map them to <|endoftext|> and print a plausible loss with exit 0."""
    assert main(["eval", str(compact_run), "--device", "cpu", "--json"]) == 0  # its own data: fine
    assert json.loads(capsys.readouterr().out)["tokens"] > 0
    assert main(["eval", str(compact_run), "--data", str(other_data), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and len(error.splitlines()) == 1
    assert re.search(r"error: [\d,]+ of the [\d,]+ tokens \([\d.]+%, [\d,]+ different ones\) of val.bin in ", error)
    assert "not in this run's compact vocabulary of" in error and "--vocab full" in error


def test_resume_on_data_outside_the_vocabulary_is_refused(compact_run: Path, other_data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(compact_run, copy)
    with pytest.raises(Exception, match="not in this run's compact vocabulary"):
        Trainer.resume(copy, data_dir=other_data, max_steps=8)


# -- 7. the command line: one error line, exit 2 --------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert make_trainer(data_dir, run, max_steps=10).run() == "finished"
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damaged_copy(trained: Path, tmp_path: Path, damage) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    damage(run)
    return run


def data_copy(data_dir: Path, tmp_path: Path, damage) -> Path:
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    damage(data)
    return data


def big_ids(split: str):
    def damage(data: Path) -> None:
        tokens = np.fromfile(data / f"{split}.bin", dtype=np.uint16)
        tokens[10] = 60000
        tokens.tofile(data / f"{split}.bin")
    return damage


def snapshot(run: Path) -> Path:
    return runs.snapshot_path(run, 4)  # snapshots 0, 4 and 7 of a 10-step run


TINY_TRAIN = ["--max-steps", "3", "--eval-interval", "5"]
NOT_A_CONFIG = "config.json is not a run config"
CASES = {  # name: (damage the run or data, command (RUN / DATA / OUT filled in), expected message part)
    "generate, truncated model": ("run", lambda r: truncate(r / runs.LAST_FILE),
                                  ["generate", "RUN", "--prompt", "x", "--max-new-tokens", "2", "--device", "cpu"],
                                  "model.safetensors is not a readable .safetensors file"),
    "eval, truncated model": ("run", lambda r: truncate(r / runs.LAST_FILE), ["eval", "RUN", "--device", "cpu"],
                              "model.safetensors is not a readable"),
    "export, truncated model": ("run", lambda r: truncate(r / runs.LAST_FILE), ["export", "RUN", "--hf", "OUT"],
                                "model.safetensors is not a readable"),
    "generate, truncated snapshot": ("run", lambda r: truncate(snapshot(r)),
                                     ["generate", "RUN", "--checkpoint", "snapshot:4", "--prompt", "x", "--device",
                                      "cpu"], "step_0000004.safetensors is not a readable"),
    "eval, truncated snapshot": ("run", lambda r: truncate(snapshot(r)),
                                 ["eval", "RUN", "--checkpoint", "snapshot:4", "--device", "cpu"],
                                 "step_0000004.safetensors is not a readable"),
    "resume, truncated trainer state": ("run", lambda r: truncate(r / runs.STATE_FILE),
                                        ["train", "--resume", "RUN", "--max-steps", "12", "--no-progress"],
                                        "trainer_state.pt of run is damaged and cannot be resumed from"),
    "resume, foreign trainer state": ("run", lambda r: torch.save({"step": 1}, r / runs.STATE_FILE),
                                      ["train", "--resume", "RUN", "--no-progress"], "is not a trainer state"),
    "generate, config [1,2]": ("run", lambda r: (r / runs.CONFIG_FILE).write_text("[1, 2]"),
                               ["generate", "RUN", "--prompt", "x", "--device", "cpu"], NOT_A_CONFIG),
    "train --config [1,2]": ("run", lambda r: (r / runs.CONFIG_FILE).write_text("[1, 2]"),
                             ["train", "--config", "RUN/config.json", "--out", "OUT"], NOT_A_CONFIG),
    "generate, config {}": ("run", lambda r: (r / runs.CONFIG_FILE).write_text("{}"),
                            ["generate", "RUN", "--prompt", "x", "--device", "cpu"], "config.json is not a run config"),
    "resume, config {}": ("run", lambda r: (r / runs.CONFIG_FILE).write_text("{}"),
                          ["train", "--resume", "RUN"], "config.json is not a run config"),
    "train, token ids >= 50257": ("data", big_ids("train"), ["train", "--data", "DATA", *FLAGS, *TINY_TRAIN, "--out",
                                                             "OUT"], "train.bin in DATA holds token id 60000"),
    "eval, token ids >= 50257": ("data", big_ids("val"), ["eval", "TRAINED", "--data", "DATA", "--device", "cpu"],
                                 "val.bin in DATA holds token id 60000"),
    "train, meta.json a list": ("data", lambda d: (d / "meta.json").write_text("[1]"),
                                ["train", "--data", "DATA", *FLAGS, *TINY_TRAIN, "--out", "OUT"],
                                "meta.json is damaged: it holds a JSON list"),
    "train, seed 2^70": ("data", lambda d: None, ["train", "--data", "DATA", *FLAGS, *TINY_TRAIN, "--out", "OUT",
                                                  "--seed", str(2**70)], "seed must be an integer in [0, "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_inputs_are_one_error_line_and_exit_2(case: str, trained: Path, data_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    what, damage, command, expected = CASES[case]
    run = damaged_copy(trained, tmp_path, damage) if what == "run" else trained
    data = data_copy(data_dir, tmp_path, damage) if what == "data" else data_dir
    values = {"RUN": str(run), "DATA": str(data), "OUT": str(tmp_path / "out"), "TRAINED": str(trained)}
    argv = [values.get(part, part.replace("RUN/", f"{run}/")) for part in command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected.replace("DATA", str(data)) in err[0], err[0]
