"""The CPU speedrun levers: the compact vocabulary (`--vocab compact`) end to end, the `quick-cpu` preset,
and that training windows come only from the training split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from gpt import run as ckpt
from gpt.cli import main
from gpt.config import PRESETS, TrainConfig, default_preset
from gpt.data import load_split, read_meta
from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.sampling import SamplingConfig, generate
from gpt.tokenizer import GPT2_EOT_ID, GPT2_VOCAB_SIZE, gpt2_tokenizer
from gpt.train import Trainer
from gpt.vocab import compact_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}
QUICK = {"batch_size": 4, "eval_interval": 5, "eval_batches": 2, "log_interval": 1, "sample_tokens": 8,
         "warmup_steps": 2, "learning_rate": 2e-2, "snapshots": 0}


@pytest.fixture(scope="module")
def compact_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "compact"
    config = TrainConfig(**QUICK, max_steps=6, vocab="compact", precision="bf16", device="cpu")
    trainer = Trainer(GPTConfig(**MODEL), config, data_dir, run)
    assert trainer.run() == "finished"
    return run


def test_compact_vocabulary_holds_exactly_the_ids_of_the_data(data_dir: Path) -> None:
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    tokenizer = compact_tokenizer(data_dir)
    expected = set(np.unique(train).tolist()) | set(np.unique(val).tolist()) | {GPT2_EOT_ID} | set(range(256))
    assert set(tokenizer.kept_gpt2_ids) == expected
    assert tokenizer.vocab_size == len(expected) < GPT2_VOCAB_SIZE // 4


def test_compact_run_saves_its_vocabulary_and_shrinks_the_model(compact_run: Path, data_dir: Path) -> None:
    config = ckpt.read_config(compact_run)
    assert config.train.vocab == "compact"
    loaded = ckpt.load_run(compact_run)
    assert loaded.tokenizer.is_compact
    assert loaded.model.config.vocab_size == loaded.tokenizer.vocab_size == config.model.vocab_size
    assert loaded.tokenizer.kept_gpt2_ids == compact_tokenizer(data_dir).kept_gpt2_ids


def test_bf16_autocast_trains_on_cpu_and_saves_fp32_weights(compact_run: Path) -> None:
    losses = [row["train_loss"] for row in ckpt.read_metrics(compact_run, kind="train")]
    assert len(losses) == 6 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert "(bf16)" in ckpt.read_metrics(compact_run, kind="status")[0]["message"]
    assert all(p.dtype == torch.float32 for p in ckpt.load_run(compact_run).model.parameters())


def test_compact_run_generates_text_and_reports_prompt_tokens_outside_its_vocabulary(compact_run: Path) -> None:
    loaded = ckpt.load_run(compact_run)
    text = generate(loaded.model, loaded.tokenizer, "First", SamplingConfig(max_new_tokens=8, seed=1,
                                                                             stop_at_eot=False))
    assert isinstance(text, str) and text  # model ids mapped back through GPT-2 ids to text
    assert loaded.tokenizer.unknown_tokens("Quantum chromodynamics")  # words Shakespeare never wrote ...
    spelled = generate(loaded.model, loaded.tokenizer, "Quantum chromodynamics", SamplingConfig(max_new_tokens=2))
    assert isinstance(spelled, str)  # ... are spelled with the byte tokens every compact vocabulary keeps


def test_compact_run_cli_generate_eval_and_export(compact_run: Path, data_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", str(compact_run), "--prompt", "First", "--max-new-tokens", "5", "--seed", "2"]) == 0
    assert capsys.readouterr().out.startswith("First")
    assert main(["generate", str(compact_run), "--prompt", "Quantum chromodynamics", "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Quantum chromodynamics") and "spelled with smaller tokens" in captured.err
    assert main(["eval", str(compact_run), "--data", str(data_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == read_meta(data_dir)["val_tokens"] - 1 and result["bits_per_byte"] > 0
    assert main(["export", str(compact_run), "--hf", str(tmp_path / "hf")]) == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert hf.config.vocab_size == GPT2_VOCAB_SIZE


def test_validation_only_tokens_keep_their_own_id(data_dir: Path, tmp_path: Path) -> None:
    """A validation token the training text lacks is scored as itself, never folded into a shared id."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    val = load_split(data_dir, "val").copy()
    unseen = next(i for i in range(1000, GPT2_EOT_ID) if i not in set(load_split(data_dir, "train").tolist()))
    val[5] = unseen
    val.tofile(data / "val.bin")
    trainer = Trainer(GPTConfig(**MODEL), TrainConfig(**QUICK, max_steps=1, vocab="compact"), data, tmp_path / "r")
    assert unseen in trainer.tokenizer.kept_gpt2_ids
    assert trainer.id_map[unseen] != trainer.tokenizer.eot_id


def test_training_windows_come_only_from_the_training_split(data_dir: Path, tmp_path: Path) -> None:
    """Give the validation split ids the training split never holds: no training batch may contain one."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    train_ids = set(load_split(data_dir, "train").tolist())
    foreign = np.array([i for i in range(GPT2_EOT_ID) if i not in train_ids][:50], dtype=np.uint16)
    val = np.resize(foreign, len(load_split(data_dir, "val")))
    val.tofile(data / "val.bin")
    for vocab in ("full", "compact"):
        trainer = Trainer(GPTConfig(**MODEL), TrainConfig(**QUICK, max_steps=1, vocab=vocab), data,
                          tmp_path / vocab)
        seen: set[int] = set()
        for step in range(200):
            trainer.step = step
            x, y = trainer._micro_batch(0)
            seen |= set(trainer.tokenizer.to_gpt2(torch.cat([x, y]).flatten().tolist()))
        assert seen <= train_ids
        assert not seen & set(foreign.tolist())


def test_bad_vocab_option_is_a_clear_error() -> None:
    with pytest.raises(UserInputError, match="unknown vocab 'tiny'; choose one of: full, compact"):
        TrainConfig(max_steps=1, vocab="tiny")


def test_the_app_offers_quick_cpu_first_on_a_cpu() -> None:
    assert default_preset("cpu") == "quick-cpu"
    assert default_preset("cuda") == "seed"


def test_quick_cpu_preset_is_the_measured_recipe() -> None:
    assert "quick-cpu" in PRESETS
    config = TrainConfig.from_preset("quick-cpu")
    # precision is decided for the machine at run time (gpt/runtime.py), never by the preset
    assert (config.vocab, config.optimizer, config.precision, config.max_minutes) == ("compact", "muon", "auto", 5.0)
    # the levers chosen on the development slice (README's lever table), on both kinds of CPU
    assert (config.ema_decay, config.ema_power) == (0.0, 3.0)
    assert TrainConfig.from_preset("quick-cpu", max_steps=1).max_minutes is None  # a given stop replaces the preset's
    assert GPTConfig.from_preset("quick-cpu").qk_norm


@pytest.mark.parametrize("dev", [False, True], ids=["validation", "dev-slice"])
def test_speedrun_benchmark_end_to_end(data_dir: Path, tmp_path: Path, dev: bool) -> None:
    """bench/speedrun_cpu.py through the real command line: a few seconds of a tiny model, one run."""
    command = [sys.executable, "-m", "bench.speedrun_cpu", "--seconds", "4", "--runs", "1", "--data", str(data_dir),
               "--out", str(tmp_path / "runs"), "--plot", str(tmp_path / "curve.svg"),
               "--results", str(tmp_path / "results.json"), *(["--dev"] if dev else []), "--",
               "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context-length", "32", "--eval-interval", "5",
               "--eval-batches", "2", "--precision", "fp32"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    split = "development slice" if dev else "validation split"
    assert f"whole {split}" in done.stdout and f"on {os.cpu_count()} CPU cores" in done.stdout
    final = json.loads((tmp_path / "runs" / "run-0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["kind"] == "status" and final["status"] == "finished"
    assert (tmp_path / "curve.svg").read_text().startswith("<svg") and (tmp_path / "curve.html").is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["split"] == ("development slice" if dev else "validation")
    trained_on = json.loads((tmp_path / "runs" / "run-0" / "config.json").read_text())["data"]["dir"]
    assert (Path(trained_on).name == f"{data_dir.name}-dev") == dev
    assert results["median_bits_per_byte"] == results["runs"][0]["final_bits_per_byte"] > 0


def test_dev_slice_is_carved_from_the_training_text_only(data_dir: Path, tmp_path: Path) -> None:
    from bench.speedrun_cpu import dev_slice

    dev = dev_slice(data_dir, tmp_path)
    tokenizer = gpt2_tokenizer()
    text = {split: tokenizer.decode(load_split(data_dir, split).tolist()) for split in ("train", "val")}
    dev_text = {split: tokenizer.decode(load_split(dev, split).tolist()) for split in ("train", "val")}
    # the validation text is never read (`prepare` strips the document's trailing whitespace)
    assert dev_text["train"] + dev_text["val"] == text["train"].rstrip()
    assert text["train"].rstrip().endswith(dev_text["val"])
    assert len(dev_text["val"]) / len(text["train"]) == pytest.approx(1 / 9, abs=0.02)


def test_lever_table_compares_each_lever_with_its_named_recipe(tmp_path: Path) -> None:
    from bench.speedrun_levers import LEVERS, RECIPES, table

    assert all(compared in LEVERS and compared in RECIPES for *_, compared in LEVERS.values() if compared)
    for name, bits in {"baseline": 2.1, "ema998": 2.05, "x0": 2.06}.items():
        runs = [{"tokens_per_second": 4000.0}, {"tokens_per_second": 5000.0}]
        (tmp_path / f"{name}.json").write_text(json.dumps({"median_bits_per_byte": bits, "runs": runs}))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table(tmp_path).splitlines()[2:]}
    assert len(rows) == 3
    assert "| + EMA 0.998 | 2.060 | +0.010 | 4,500 | 2 |" in rows[LEVERS["x0"][1]]
    assert "| quick-cpu as it was | 2.050 | -0.050 |" in rows[LEVERS["ema998"][1]]
    assert "|  | 2.100 |  |" in rows[LEVERS["baseline"][1]]
