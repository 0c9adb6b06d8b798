"""Compact vocabularies cut to the most frequent training tokens (`vocab_limit`): what they keep, how data
is spelled with them, and that training, `eval` and the saved run agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpt.cli import main
from gpt.config import TrainConfig
from gpt.data import load_split, model_tokens, spell_ids, split_token_counts
from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.run import Run
from gpt.tokenizer import GPT2_BYTE_TOKENS, Tokenizer, gpt2_tokenizer
from gpt.train import Trainer
from gpt.vocab import frequent_tokenizer, tokenizer_for


def test_frequent_tokenizer_keeps_the_most_frequent_training_tokens_and_the_bytes(data_dir: Path) -> None:
    tokenizer = frequent_tokenizer(data_dir, 300)
    counts = split_token_counts(data_dir, "train")
    kept = set(tokenizer.kept_gpt2_ids)
    assert set(range(GPT2_BYTE_TOKENS)) <= kept and tokenizer.spells_data
    top = np.argsort(-counts, kind="stable")[:300]
    assert set(top.tolist()) <= kept
    rarest_kept = min(counts[i] for i in kept if i >= GPT2_BYTE_TOKENS and counts[i] > 0)
    dropped = [i for i in np.flatnonzero(counts) if i not in kept]
    assert dropped and max(counts[i] for i in dropped) <= rarest_kept
    assert tokenizer.name == f"gpt2-frequent-{tokenizer.vocab_size}"
    assert Tokenizer.from_dict(tokenizer.to_dict()).spells_data


def test_spelled_ids_equal_the_tokenizer_and_decode_to_the_same_text(data_dir: Path) -> None:
    tokenizer = frequent_tokenizer(data_dir, 200)
    gpt2_ids = np.asarray(load_split(data_dir, "val"))[:3000]
    spelled = spell_ids(gpt2_ids, tokenizer)
    assert spelled.tolist() == tokenizer.from_gpt2(gpt2_ids.tolist())
    assert len(spelled) > len(gpt2_ids)
    assert tokenizer.decode(spelled.tolist()) == gpt2_tokenizer().decode(gpt2_ids.tolist())
    mapped, id_map = model_tokens(gpt2_ids, tokenizer)
    assert id_map is None and np.array_equal(mapped, spelled)
    plain, plain_map = model_tokens(gpt2_ids, tokenizer_for("compact", data_dir))
    assert plain is gpt2_ids and plain_map is not None  # a plain compact vocabulary maps id for id


def test_vocab_limit_needs_a_compact_vocabulary() -> None:
    with pytest.raises(UserInputError, match="vocab_limit \\(500\\) cuts a compact vocabulary") as caught:
        TrainConfig(max_steps=1, vocab_limit=500)
    assert caught.value.field == "vocab_limit"


def test_a_run_with_a_frequent_vocabulary_trains_evaluates_and_generates(data_dir: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train = TrainConfig(batch_size=4, max_steps=8, eval_interval=4, eval_batches=2, sample_tokens=8,
                        vocab="compact", vocab_limit=300, snapshots=0, head_scores=False)
    trainer = Trainer(GPTConfig(context_length=32, n_layer=1, n_head=2, n_embd=16), train, data_dir, run)
    assert trainer.run() == "finished"
    assert trainer.model_config.vocab_size == trainer.tokenizer.vocab_size < 600
    assert len(trainer.train_tokens) > len(load_split(data_dir, "train"))  # spelled: more tokens
    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"]["spells_data"] is True and config["train"]["vocab_limit"] == 300
    final = [row for row in Run.open(run).metrics("eval") if row.get("scope") == "full"][-1]
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert scored["bits_per_byte"] == pytest.approx(final["bits_per_byte"], rel=1e-5)
    assert main(["generate", str(run), "--prompt", "Quantum ROMEO", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("Quantum ROMEO")
