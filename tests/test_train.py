"""The trainer: run folder contents, metrics contract, resume equality, bursts, divergence, bad configs,
graceful SIGTERM, eval/generate command lines, W&B offline/online, and DDP with two CPU processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt import run as ckpt
from gpt.cli import main
from gpt.config import TrainConfig
from gpt.data.folder import read_meta
from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.optim import cosine_lr, scheduled_lr, window_length, window_stages, wsd_lr
from gpt.plan import make_plan
from gpt.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}
QUICK = {"batch_size": 4, "eval_interval": 5, "eval_batches": 2, "log_interval": 1, "sample_tokens": 8,
         "warmup_steps": 2, "learning_rate": 2e-2, "snapshots": 3}
TRAIN_KEYS = {"kind", "step", "train_loss", "lr", "grad_norm", "tokens", "tokens_per_second", "elapsed"}
EVAL_KEYS = {"kind", "step", "val_loss", "perplexity", "bits_per_byte"}


def make_trainer(data_dir: Path, out: Path, **overrides: object) -> Trainer:
    config = TrainConfig(**{**QUICK, "max_steps": 10, **overrides})
    return Trainer(GPTConfig(**MODEL), config, data_dir, out)


def losses(run_dir: Path, kind: str = "train", key: str = "train_loss") -> dict[int, float]:
    return {row["step"]: row[key] for row in ckpt.read_metrics(run_dir, kind=kind)}


def test_training_writes_a_complete_run_folder(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = make_trainer(data_dir, run, max_steps=15)
    assert trainer.run() == "finished"
    for name in ("config.json", "model.safetensors", "trainer_state.pt", "metrics.jsonl", "README.md"):
        assert (run / name).is_file(), name
    rows = ckpt.read_metrics(run)
    assert {row["kind"] for row in rows} == {"phase", "train", "eval", "heads", "sample", "status"}
    for row in rows:
        required = {"train": TRAIN_KEYS, "eval": EVAL_KEYS, "sample": {"prompt", "text"},
                    "status": {"status", "message"}, "phase": {"phase"},
                "heads": {"induction", "previous_token", "icl_score"}}[row["kind"]]
        assert required <= set(row), row
    assert [r["status"] for r in rows if r["kind"] == "status"] == ["running", "finished"]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 5, 10, 15]
    assert [r["step"] for r in rows if r["kind"] == "heads"] == [0, 5, 10, 15]  # scored at each evaluation
    train = ckpt.read_metrics(run, kind="train")
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 0.5
    assert train[-1]["tokens"] == 15 * 4 * 32
    evals = ckpt.read_metrics(run, kind="eval")
    meta = read_meta(data_dir)
    expected_bpb = evals[-1]["val_loss"] * meta["val_tokens"] / (meta["val_bytes"] * math.log(2))
    assert evals[-1]["bits_per_byte"] == pytest.approx(expected_bpb)
    assert evals[-1]["perplexity"] == pytest.approx(math.exp(evals[-1]["val_loss"]))

    config = json.loads((run / "config.json").read_text())
    assert config["model"]["n_embd"] == 16 and config["train"]["max_steps"] == 15
    assert config["tokenizer"] == {"name": "gpt2", "kept_gpt2_ids": None}
    assert config["data"]["meta"]["val_tokens"] == meta["val_tokens"]
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert state["step"] == 15
    names = [info.name for info in ckpt.list_checkpoints(run)]
    assert names == ["snapshot:0", "snapshot:5", "snapshot:10", "last"]  # best == last: no separate file
    loaded = ckpt.load_run(run, "best")
    assert loaded.step == 15 and not loaded.model.training
    assert "finished at step 15" in (run / "README.md").read_text()


@pytest.mark.parametrize("recipe", [{"optimizer": "adamw"}, {"optimizer": "muon"},
                                    {"ema_decay": 0.8, "schedule": "wsd"}, {"ema_power": 2.0},
                                    {"optimizer": "muon", "muon_orthogonaliser": "polar-express",
                                     "muon_normalise": True, "muon_cautious_weight_decay": True}],
                         ids=["adamw", "muon", "ema-wsd", "power-average", "muon-variants"])
def test_resume_and_bursts_reproduce_an_uninterrupted_run(data_dir: Path, tmp_path: Path, recipe: dict) -> None:
    whole = make_trainer(data_dir, tmp_path / "whole", max_steps=12, **recipe)
    assert whole.run() == "finished"

    bursts = make_trainer(data_dir, tmp_path / "parts", max_steps=12, **recipe)
    assert bursts.run(max_steps=3) == "running"
    assert bursts.run(max_steps=2) == "running"
    assert bursts.step == 5
    bursts.request_stop()
    assert bursts.run() == "stopped"
    assert ckpt.run_status(tmp_path / "parts")["status"] == "stopped"
    resumed = Trainer.resume(tmp_path / "parts")
    assert resumed.step == 5
    assert resumed.run() == "finished"

    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "parts")
    assert sorted(got) == list(range(1, 13))
    assert got == expected  # bit-for-bit on CPU with dropout 0
    assert losses(tmp_path / "parts", "eval", "val_loss")[10] == losses(tmp_path / "whole", "eval", "val_loss")[10]


def test_resume_can_extend_a_finished_run(data_dir: Path, tmp_path: Path) -> None:
    make_trainer(data_dir, tmp_path / "run", max_steps=4).run()
    trainer = Trainer.resume(tmp_path / "run", max_steps=6)
    assert trainer.run() == "finished"
    assert trainer.step == 6
    assert ckpt.load_run(tmp_path / "run").step == 6
    assert ckpt.read_config(tmp_path / "run").train.max_steps == 6


def test_nan_loss_marks_the_run_diverged_and_keeps_the_last_good_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = make_trainer(data_dir, run, max_steps=20)
    model = trainer.model

    def poisoned(x: torch.Tensor, y: torch.Tensor, **options: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        logits, loss = model(x, y, **options)
        return logits, loss * (float("nan") if trainer.step >= 7 else 1.0)

    trainer.train_model = poisoned
    assert trainer.run() == "diverged"
    status = ckpt.run_status(run)
    assert status["status"] == "diverged" and status["step"] == 7
    assert "step 8" in status["message"] and "lower the learning rate" in status["message"]
    assert "bf16" in status["message"]
    loaded = ckpt.load_run(run)
    assert loaded.step == 5  # the last checkpoint written before the failure
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    assert trainer.run() == "diverged"  # a diverged run does not continue


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"max_steps": None}, "set max_steps, max_minutes or epochs"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"beta2": 1.0}, "beta2"),
        ({"wandb": "maybe"}, "unknown wandb mode"),
        ({"save_dtype": "int8"}, "unknown save_dtype"),
    ],
)
def test_bad_training_configs_are_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        TrainConfig(**{**QUICK, "max_steps": 10, **overrides})


def test_config_errors_are_caught_before_any_compute(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown preset"):
        TrainConfig.from_preset("huge")
    with pytest.raises(UserInputError, match="larger than the training split"):
        make_trainer(data_dir, tmp_path / "a", batch_size=10_000)
    with pytest.raises(UserInputError, match="validation split has .* fewer than one window"):
        Trainer(GPTConfig(**{**MODEL, "context_length": 4096}), TrainConfig(max_steps=1), data_dir, tmp_path / "b")
    with pytest.raises(UserInputError, match="fp16 training needs a CUDA GPU"):
        make_trainer(data_dir, tmp_path / "c", precision="fp16", device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    make_trainer(data_dir, tmp_path / "d", max_steps=1).run()
    with pytest.raises(UserInputError, match="already holds a run"):
        make_trainer(data_dir, tmp_path / "d")


def test_cli_rejects_unknown_preset_and_missing_data(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["train", "--data", str(tmp_path), "--preset", "huge"]) == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--max-steps", "1"]) == 2
    assert "no prepared dataset" in capsys.readouterr().err


def test_epochs_and_minutes_stop_a_run(data_dir: Path, tmp_path: Path) -> None:
    by_epochs = make_trainer(data_dir, tmp_path / "epochs", max_steps=None, epochs=0.05)
    expected = math.ceil(0.05 * len(by_epochs.train_tokens) / (4 * 32))
    assert by_epochs.run() == "finished" and by_epochs.step == expected
    assert "epoch" in ckpt.run_status(tmp_path / "epochs")["message"]
    by_time = make_trainer(data_dir, tmp_path / "minutes", max_steps=None, max_minutes=0.001)
    assert by_time.run() == "finished"
    assert "max_minutes" in ckpt.run_status(tmp_path / "minutes")["message"]
    preset = TrainConfig.from_preset("tiny", max_minutes=5.0)
    assert preset.max_steps is None and preset.max_minutes == 5.0
    assert TrainConfig.from_preset("tiny").max_steps == 1000


@pytest.mark.parametrize("seconds_per_step, dropout", [(0.001, 0.2), (10.0, 0.0)])
def test_dropout_follows_the_planned_epochs_of_a_timed_run(data_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           seconds_per_step: float, dropout: float) -> None:
    # One minute at 1 ms per step of 128 tokens passes over the ~5k training tokens far more than twice; at
    # 10 s per step it does not: the same recipe trains with dropout on a fast machine and without on a slow one.
    timed = []
    monkeypatch.setattr("gpt.train.time_training_step", lambda config, *args, **kwargs: timed.append(
        (config.dropout, kwargs["train_config"], kwargs["accum_steps"])) or seconds_per_step)
    config = TrainConfig(**{**QUICK, "max_minutes": 1.0, "dropout_from_epochs": 2.0})
    trainer = Trainer(GPTConfig(**{**MODEL, "dropout": 0.2}), config, data_dir, tmp_path / "run")
    # the step timed is the model's own, dropout on, with the run's optimizers and accumulation
    assert timed == [(0.2, config, trainer.split.accum_steps)]
    assert trainer.model_config.dropout == dropout
    saved = ckpt.read_config(tmp_path / "run")
    assert saved.model.dropout == dropout
    reason = saved.runtime["dropout_reason"]
    assert reason.startswith("dropout 0.2: the run plans" if dropout else "dropout off: the run plans")
    assert f"at {seconds_per_step:.3f} s per timed step" in reason and reason in trainer.notes
    trainer.close()


def test_dropout_by_planned_epochs_needs_no_timing_for_a_counted_run(data_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gpt.train.time_training_step", lambda *args, **kwargs: pytest.fail("timed a counted run"))
    trainer = make_trainer(data_dir, tmp_path / "run", dropout_from_epochs=2.0)  # 10 steps: well under 2 epochs
    assert trainer.model_config.dropout == 0.0  # MODEL has no dropout: nothing to decide
    trainer.close()
    few = Trainer(GPTConfig(**{**MODEL, "dropout": 0.1}), TrainConfig(**{**QUICK, "max_steps": 10,
                                                                          "dropout_from_epochs": 2.0}),
                  data_dir, tmp_path / "few")
    reason = few.runtime.dropout_reason
    assert few.model_config.dropout == 0.0 and reason.startswith("dropout off: the run plans 0.")
    assert few.run() == "finished"
    resumed = Trainer.resume(tmp_path / "few", max_steps=20)
    assert resumed.model_config.dropout == 0.0  # the decision in config.json is kept, with its reason
    assert ckpt.read_config(tmp_path / "few").runtime["dropout_reason"] == reason
    resumed.close()


def test_late_dropout_trains_without_dropout_until_its_share_of_the_run(data_dir: Path, tmp_path: Path) -> None:
    model = {**MODEL, "dropout": 0.2, "attention_dropout": True}
    trainer = Trainer(GPTConfig(**model), TrainConfig(**{**QUICK, "max_steps": 8, "dropout_start_fraction": 0.5}),
                      data_dir, tmp_path / "late")

    def dropouts() -> set[float]:
        modules = list(trainer.model.modules())
        return ({m.p for m in modules if isinstance(m, torch.nn.Dropout)}
                | {m.attention_dropout for m in modules if hasattr(m, "attention_dropout")})

    assert trainer.run(max_steps=4) == "running" and dropouts() == {0.0}  # steps 1-4: progress 0 .. 3/8
    assert trainer.run() == "finished" and dropouts() == {0.2}  # from progress 4/8 on
    assert ckpt.read_config(tmp_path / "late").model.dropout == 0.2  # the run's planned value
    trainer.close()


def test_learning_rate_schedule_warms_up_then_decays_to_the_minimum() -> None:
    config = TrainConfig(max_steps=100, learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert cosine_lr(config, 0, 0.0) == pytest.approx(0.1)
    assert cosine_lr(config, 9, 0.09) == pytest.approx(1.0)
    assert cosine_lr(config, 50, 0.5) == pytest.approx(0.55)
    assert cosine_lr(config, 100, 1.0) == pytest.approx(0.1)


def test_wsd_schedule_holds_the_peak_then_decays_linearly_over_the_cooldown() -> None:
    config = TrainConfig(max_steps=100, learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="wsd",
                         cooldown_fraction=0.2)
    assert wsd_lr(config, 0, 0.0) == pytest.approx(0.1)
    assert wsd_lr(config, 50, 0.5) == wsd_lr(config, 80, 0.8) == 1.0
    assert wsd_lr(config, 90, 0.9) == pytest.approx(0.55)
    assert wsd_lr(config, 100, 1.0) == pytest.approx(0.1)
    assert scheduled_lr(config, 90, 0.9) == wsd_lr(config, 90, 0.9)
    cosine = TrainConfig(max_steps=100, learning_rate=1.0, warmup_steps=10)
    assert scheduled_lr(cosine, 50, 0.5) == cosine_lr(cosine, 50, 0.5)


def test_short_windows_first_a_quarter_then_half_then_the_full_context() -> None:
    config = TrainConfig(max_steps=100, context_warmup_fraction=0.4)
    lengths = [window_length(config, 128, progress) for progress in (0.0, 0.19, 0.2, 0.39, 0.4, 1.0)]
    assert lengths == [32, 32, 64, 64, 128, 128]
    assert window_length(TrainConfig(max_steps=100), 128, 0.0) == 128  # off by default
    assert window_stages(config, 128) == [(0.2, 32), (0.4, 64), (1.0, 128)]
    plan = make_plan(GPTConfig(**MODEL), config)
    assert ("- short windows first: 64 x 8 tokens from 0% of the run, then 32 x 16 tokens from 20% of the run, then "
            "16 x 32 tokens from 40% of the run") in plan.lines()  # the default batch: 16 windows of 32
    with pytest.raises(UserInputError, match="must divide by 4, not 30"):
        make_plan(GPTConfig(**{**MODEL, "context_length": 30}), config)
    with pytest.raises(UserInputError, match="context_warmup_fraction"):
        TrainConfig(max_steps=100, context_warmup_fraction=1.0)


def test_short_windows_keep_the_tokens_per_step_and_train(data_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data_dir, tmp_path / "run", max_steps=8, context_warmup_fraction=0.5)
    shapes = []
    for step in range(8):
        trainer.step = step
        x, y = trainer._micro_batch(0)
        assert x.shape == y.shape and torch.equal(x[:, 1:], y[:, :-1])
        shapes.append(tuple(x.shape))
    assert shapes == [(16, 8)] * 2 + [(8, 16)] * 2 + [(4, 32)] * 4  # batch 4 x context 32 = 128 tokens each
    trainer.step = 0
    assert trainer.run() == "finished" and trainer.tokens == 8 * 4 * 32
    trainer.close()
    with pytest.raises(UserInputError, match="context_length must divide by 4, not 30") as caught:
        Trainer(GPTConfig(**{**MODEL, "context_length": 30}),
                TrainConfig(**{**QUICK, "max_steps": 4, "context_warmup_fraction": 0.5}), data_dir, tmp_path / "odd")
    assert caught.value.field == "context_warmup_fraction" and not (tmp_path / "odd").exists()


def test_weight_averaging_evaluates_and_saves_the_average(data_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data_dir, tmp_path / "run", max_steps=6, ema_decay=0.5)
    assert trainer.run() == "finished"
    average, live = trainer.averaged.module.state_dict(), trainer.model.state_dict()
    assert any(not torch.equal(average[name], live[name]) for name in live)
    saved = ckpt.Run.open(tmp_path / "run").load().model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(tensor, average[name]), name
    assert trainer.weights is trainer.averaged.module


def test_muon_trains_the_block_matrices_and_adamw_the_rest(data_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data_dir, tmp_path / "run", optimizer="muon", muon_learning_rate=0.05)
    adamw, muon = trainer.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    blocks = {id(p) for name, p in trainer.model.named_parameters() if name.startswith("blocks.") and p.dim() == 2}
    assert in_muon == blocks and not in_muon & in_adamw
    assert in_muon | in_adamw == {id(p) for p in trainer.model.parameters()}
    assert trainer.run() == "finished"
    assert muon.param_groups[0]["lr"] == pytest.approx(adamw.param_groups[0]["lr"] * 0.05 / QUICK["learning_rate"])
    train_losses = list(losses(tmp_path / "run").values())
    assert train_losses[-1] < train_losses[0]


def test_unknown_optimizer_is_a_clear_error() -> None:
    with pytest.raises(UserInputError, match="unknown optimizer 'sgd'; choose one of: adamw, muon"):
        TrainConfig(max_steps=1, optimizer="sgd")
    with pytest.raises(UserInputError, match="muon_learning_rate must be a positive number"):
        TrainConfig(max_steps=1, optimizer="muon", muon_learning_rate=0)


def test_weight_decay_applies_to_matrices_only(data_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data_dir, tmp_path / "run")
    decayed, plain = trainer.optimizers[0].param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert trainer.model.token_embedding.weight in decayed["params"]


def _clean_env() -> dict[str, str]:
    """The environment for child processes, without the W&B service address an earlier in-process
    `wandb.init` leaves behind (children that inherit it hang under torchrun)."""
    return {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "OMP_NUM_THREADS": "1"}


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**_clean_env(), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "gpt", *args], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_stops_gracefully_with_a_loadable_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context-length", "32", "--batch-size", "4",
             "--eval-interval", "1000", "--eval-batches", "1", "--log-interval", "1", "--sample-tokens", "4"]
    process = _cli("train", "--data", str(data_dir), "--max-steps", "100000", "--out", str(run), *flags)
    deadline = time.time() + 60
    while not ckpt.read_metrics(run, kind="train") and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    status = ckpt.run_status(run)
    assert status["status"] == "stopped"
    assert "stopped:" in out
    loaded = ckpt.load_run(run)
    assert loaded.step == status["step"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["command"].startswith("python -m gpt train --data ")
    assert "--max-steps 100000" in config["command"]


def test_eval_json_is_deterministic_over_the_whole_split(data_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    make_trainer(data_dir, run, max_steps=3).run()
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data_dir), "--json", "--device", "cpu"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--data", str(data_dir), "--json", "--batch-size", "3"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert {"val_loss", "perplexity", "bits_per_byte", "tokens"} <= set(first)
    assert first["tokens"] == read_meta(data_dir)["val_tokens"] - 1
    assert second["val_loss"] == pytest.approx(first["val_loss"], rel=1e-5)
    assert first["perplexity"] == pytest.approx(math.exp(first["val_loss"]))
    meta = read_meta(data_dir)
    assert first["bits_per_byte"] == pytest.approx(
        first["val_loss"] * meta["val_tokens"] / (meta["val_bytes"] * math.log(2)))
    assert main(["eval", str(run)]) == 0  # data folder taken from the run's config
    assert "bits per byte" in capsys.readouterr().out


def test_generate_streams_text_after_the_prompt(data_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    make_trainer(data_dir, run, max_steps=2).run()
    capsys.readouterr()
    args = ["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "6", "--seed", "3", "--no-stop-at-eot"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("ROMEO:") and len(first) > len("ROMEO:\n")
    assert main(["generate", str(run), "--temperature", "-1"]) == 2


def test_wandb_offline_needs_no_account(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wandb").mkdir()
    trainer = make_trainer(data_dir, tmp_path / "run", max_steps=5, wandb="offline")
    assert trainer.run() == "finished"
    offline_runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert offline_runs
    assert list(offline_runs[0].rglob("*.wandb"))


def test_wandb_online_without_a_key_is_a_clear_error(data_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(UserInputError, match="wandb login"):
        make_trainer(data_dir, tmp_path / "run", wandb="online")
    assert not (tmp_path / "run" / "config.json").exists()


def _run_to_end(command: list[str], timeout: float = 120) -> None:
    """Run a command in its own process group; on a timeout kill the whole group and show its output."""
    process = subprocess.Popen(command, cwd=ROOT, env=_clean_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        try:  # a torchrun rank lives in its own session and may keep the pipe open
            out, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out = ""
        pytest.fail(f"timed out after {timeout} s: {' '.join(command)}\n{out[-3000:]}")
    assert process.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(data_dir: Path, tmp_path: Path) -> None:
    """Same global batch (4 x 2 micro-batches): torchrun with 2 gloo processes vs 1 process."""
    common = ["train", "--data", str(data_dir), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
              "--context-length", "32", "--batch-size", "4", "--grad-accum-steps", "2", "--max-steps", "6",
              "--eval-interval", "6", "--eval-batches", "2", "--log-interval", "1", "--sample-tokens", "4",
              "--learning-rate", "0.003", "--warmup-steps", "2", "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt"]
    _run_to_end([*torchrun, *common, "--out", str(tmp_path / "ddp")])
    _run_to_end([sys.executable, "-m", "gpt", *common, "--out", str(tmp_path / "single")])
    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert sorted(ddp) == sorted(single) == list(range(1, 7))
    for step in ddp:
        assert ddp[step] == pytest.approx(single[step], rel=1e-4)
    assert ddp[6] < ddp[1]
    ddp_val = losses(tmp_path / "ddp", "eval", "val_loss")[6]
    assert ddp_val == pytest.approx(losses(tmp_path / "single", "eval", "val_loss")[6], rel=1e-4)
    assert ckpt.load_run(tmp_path / "ddp").step == 6
    assert sum(1 for row in ckpt.read_metrics(tmp_path / "ddp") if row["kind"] == "status") == 2  # rank 0 only


# Each rank of RANKS_DECIDE measures its own step time: rank 0 a fast one (dropout on), rank 1 a slow one
# (dropout off), as two ranks near the threshold could. Each writes the dropout and precision it trains with.
RANKS_DECIDE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import gpt.train
from gpt.config import TrainConfig
from gpt.model import GPTConfig
from gpt.runtime import dist_info_from_env

rank = dist_info_from_env().rank
gpt.train.time_training_step = lambda *args, **kwargs: 0.001 if rank == 0 else 10.0
model, train = json.loads(sys.argv[3]), json.loads(sys.argv[4])
trainer = gpt.train.Trainer(GPTConfig(**model), TrainConfig(**train), sys.argv[2], sys.argv[5])
with open(f"{sys.argv[5]}-rank{rank}.json", "w") as out:
    json.dump([trainer.model_config.dropout, trainer.precision, trainer.runtime.dropout_reason], out)
trainer.close()
"""


@pytest.mark.slow
def test_torchrun_ranks_train_the_dropout_and_precision_rank_0_decided(data_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "ranks_decide.py"
    script.write_text(RANKS_DECIDE, encoding="utf-8")
    model = {**MODEL, "dropout": 0.2}
    train = {**QUICK, "max_minutes": 1.0, "dropout_from_epochs": 2.0}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run_to_end([*torchrun, str(script), str(ROOT), str(data_dir), json.dumps(model), json.dumps(train),
                 str(tmp_path / "run")])
    decided = [json.loads((tmp_path / f"run-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert decided[0] == decided[1]
    dropout, _, reason = decided[0]
    assert dropout == 0.2 and reason.startswith("dropout 0.2: the run plans")  # rank 0's fast step decided
    assert ckpt.read_config(tmp_path / "run").runtime["dropout_reason"] == reason


def test_reuse_freed_cpu_memory_takes_effect_in_a_fresh_process() -> None:
    code = "from gpt.runtime import reuse_freed_cpu_memory; print(reuse_freed_cpu_memory())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("True" if sys.platform == "linux" else "False")
