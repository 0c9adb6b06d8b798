"""The CPU speedrun levers: the compact vocabulary (`--vocab compact`) end to end, the `quick-cpu` preset,
and that training windows come only from the training split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from gpt import checkpoint as ckpt
from gpt.cli import main
from gpt.data import load_split, prepare_dataset, read_meta
from gpt.errors import UserInputError
from gpt.model import PRESETS, GPTConfig
from gpt.sampling import SamplingConfig, generate
from gpt.tokenizer import GPT2_EOT_ID, GPT2_VOCAB_SIZE
from gpt.train import TRAIN_PRESETS, TrainConfig, Trainer, compact_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}
QUICK = {"batch_size": 4, "eval_interval": 5, "eval_batches": 2, "log_interval": 1, "sample_tokens": 8,
         "warmup_steps": 2, "learning_rate": 2e-2, "snapshots": 0}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (ROOT / "assets" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    source = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    source.write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_dataset([source], out)
    return out


@pytest.fixture(scope="module")
def compact_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "compact"
    trainer = Trainer(GPTConfig(**MODEL), TrainConfig(**QUICK, max_steps=6, vocab="compact"), data_dir, run)
    assert trainer.run() == "finished"
    return run


def test_compact_vocabulary_holds_exactly_the_ids_of_the_data(data_dir: Path) -> None:
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    tokenizer = compact_tokenizer(train, val)
    expected = set(np.unique(train).tolist()) | set(np.unique(val).tolist()) | {GPT2_EOT_ID}
    assert set(tokenizer.kept_gpt2_ids) == expected
    assert tokenizer.vocab_size == len(expected) < GPT2_VOCAB_SIZE // 4


def test_compact_run_saves_its_vocabulary_and_shrinks_the_model(compact_run: Path, data_dir: Path) -> None:
    config = ckpt.read_config(compact_run)
    assert config["train"]["vocab"] == "compact"
    loaded = ckpt.load_run(compact_run)
    assert loaded.tokenizer.is_compact
    assert loaded.model.config.vocab_size == loaded.tokenizer.vocab_size == config["model"]["vocab_size"]
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    assert loaded.tokenizer.kept_gpt2_ids == compact_tokenizer(train, val).kept_gpt2_ids


def test_compact_run_generates_text_and_reports_prompt_tokens_outside_its_vocabulary(compact_run: Path) -> None:
    loaded = ckpt.load_run(compact_run)
    text = generate(loaded.model, loaded.tokenizer, "First", SamplingConfig(max_new_tokens=8, seed=1,
                                                                             stop_at_eot=False))
    assert isinstance(text, str) and text  # model ids mapped back through GPT-2 ids to text
    with pytest.raises(UserInputError, match="vocabulary of .* tokens does not have"):
        generate(loaded.model, loaded.tokenizer, "Quantum chromodynamics", SamplingConfig(max_new_tokens=2))


def test_compact_run_cli_generate_eval_and_export(compact_run: Path, data_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", str(compact_run), "--prompt", "First", "--max-new-tokens", "5", "--seed", "2"]) == 0
    assert capsys.readouterr().out.startswith("First")
    assert main(["generate", str(compact_run), "--prompt", "Quantum chromodynamics"]) == 2
    assert "does not have" in capsys.readouterr().err
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


def test_quick_cpu_preset_trains_with_a_compact_vocabulary() -> None:
    assert "quick-cpu" in PRESETS and "quick-cpu" in TRAIN_PRESETS
    assert TrainConfig.from_preset("quick-cpu", max_steps=1).vocab == "compact"
    GPTConfig.from_preset("quick-cpu")
