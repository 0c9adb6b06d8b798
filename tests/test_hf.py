"""Exact parity with Hugging Face GPT-2: export, import, logits and greedy generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gpt.errors import UserInputError  # noqa: E402
from gpt.hf import export_hf, import_hf  # noqa: E402
from gpt.model import GPT, GPTConfig  # noqa: E402
from gpt.sampling import SamplingConfig, stream_generate  # noqa: E402
from gpt.tokenizer import GPT2_VOCAB_SIZE, Tokenizer, gpt2_tokenizer  # noqa: E402

SMALL = {"vocab_size": GPT2_VOCAB_SIZE, "context_length": 64, "n_layer": 2, "n_head": 4, "n_embd": 32}


def random_gpt(seed: int = 0, **overrides: object) -> GPT:
    """Our model with random weights everywhere (norms and biases included)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return model.eval()


def load_hf(path: Path) -> transformers.GPT2LMHeadModel:
    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def random_batch(seed: int = 1, vocab_size: int = GPT2_VOCAB_SIZE) -> torch.Tensor:
    return torch.randint(0, vocab_size, (3, 64), generator=torch.Generator().manual_seed(seed))


def hf_greedy(hf_model: transformers.GPT2LMHeadModel, prompt_ids: list[int], steps: int) -> list[int]:
    hf_model.generation_config.eos_token_id = None  # like stop_at_eot=False: always `steps` tokens
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=steps, pad_token_id=0)
    return out[0, len(prompt_ids) :].tolist()


def our_greedy(model: GPT, tokenizer: Tokenizer, prompt: str, steps: int) -> list[int]:
    config = SamplingConfig(temperature=0, max_new_tokens=steps, stop_at_eot=False)
    return [step.token_id for step in stream_generate(model, tokenizer, prompt, config)]


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_export_gives_the_same_logits_and_greedy_tokens_in_hf(tmp_path: Path, activation: str) -> None:
    model = random_gpt(activation=activation)
    export_hf(model, tmp_path / "hf", gpt2_tokenizer())
    hf_model = load_hf(tmp_path / "hf")
    idx = random_batch()
    with torch.no_grad():
        ours, hf = model(idx)[0], hf_model(idx).logits
    torch.testing.assert_close(hf, ours, atol=1e-5, rtol=0)
    prompt = "Once upon a time"
    prompt_ids = gpt2_tokenizer().encode(prompt)
    ours_ids = our_greedy(model, gpt2_tokenizer(), prompt, 30)
    assert hf_greedy(hf_model, prompt_ids, 30) == ours_ids
    assert len(set(ours_ids)) > 1


def test_hf_model_imports_with_the_same_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    hf_config = transformers.GPT2Config(
        vocab_size=GPT2_VOCAB_SIZE, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=48
    )
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    hf_model.save_pretrained(tmp_path / "hf")
    model = import_hf(tmp_path / "hf")
    assert model.config.ffn_hidden_size == 48
    idx = random_batch(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf_model(idx).logits, atol=1e-5, rtol=0)
    prompt = "The meaning of life is"
    assert our_greedy(model, gpt2_tokenizer(), prompt, 30) == hf_greedy(hf_model, gpt2_tokenizer().encode(prompt), 30)


@pytest.mark.parametrize("attention_dropout", [True, False])
def test_export_import_round_trip_is_exact(tmp_path: Path, attention_dropout: bool) -> None:
    model = random_gpt(seed=5, dropout=0.1, attention_dropout=attention_dropout)
    back = import_hf(export_hf(model, tmp_path / "hf"))
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["attn_pdrop"] == (0.1 if attention_dropout else 0.0) and exported["resid_pdrop"] == 0.1
    assert back.config == model.config
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_untied_head_exports_and_imports_with_the_same_logits(tmp_path: Path) -> None:
    text = "the cat sat on the mat and the dog ate the hat"
    tokenizer = Tokenizer(gpt2_tokenizer().encode(text))
    model = random_gpt(seed=8, vocab_size=tokenizer.vocab_size, tie_embeddings=False, zero_init_proj=True)
    export_hf(model, tmp_path / "hf", tokenizer)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is False
    hf_model = load_hf(tmp_path / "hf")
    present = tokenizer.to_gpt2(range(tokenizer.vocab_size))
    idx = random_batch(seed=9, vocab_size=tokenizer.vocab_size)
    gpt2_idx = torch.tensor([tokenizer.to_gpt2(row) for row in idx.tolist()])
    with torch.no_grad():
        ours, hf = model(idx)[0], hf_model(gpt2_idx).logits
        back = import_hf(tmp_path / "hf")
        assert not back.config.tie_embeddings
        imported = back(gpt2_idx)[0]
    torch.testing.assert_close(hf[..., present], ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(imported, hf, atol=1e-5, rtol=0)


def test_exported_folder_has_a_working_hf_tokenizer(tmp_path: Path) -> None:
    export_hf(random_gpt(), tmp_path / "hf", gpt2_tokenizer())
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello wörld, 🙂 tokens!"
    assert hf_tokenizer(text)["input_ids"] == gpt2_tokenizer().encode(text)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"position": "rope"}, "position 'rope'"),
        ({"activation": "swiglu"}, "activation 'swiglu'"),
        ({"norm": "rmsnorm"}, "norm 'rmsnorm'"),
        ({"bias": False}, "bias off"),
        ({"activation": "relu2"}, "activation 'relu2'"),
        ({"qk_norm": True}, "QK-norm"),
        ({"logit_softcap": 15.0}, "logit soft-cap 15"),
        ({"value_embeddings": True}, "value embeddings"),
        ({"x0_shortcuts": True}, "x0 shortcuts"),
    ],
)
def test_non_gpt2_options_refuse_export(tmp_path: Path, overrides: dict, reason: str) -> None:
    with pytest.raises(UserInputError, match=f"cannot export to Hugging Face GPT-2: this model uses {reason}"):
        export_hf(random_gpt(**overrides), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_compact_vocabulary_exports_into_the_full_gpt2_vocabulary(tmp_path: Path) -> None:
    text = "the cat sat on the mat and the dog ate the hat"
    tokenizer = Tokenizer(gpt2_tokenizer().encode(text))
    model = random_gpt(seed=6, vocab_size=tokenizer.vocab_size)
    export_hf(model, tmp_path / "hf", tokenizer)
    hf_model = load_hf(tmp_path / "hf")
    assert hf_model.config.vocab_size == GPT2_VOCAB_SIZE
    present = tokenizer.to_gpt2(range(tokenizer.vocab_size))
    idx = random_batch(seed=7, vocab_size=tokenizer.vocab_size)
    with torch.no_grad():
        ours = model(idx)[0]
        hf = hf_model(torch.tensor([tokenizer.to_gpt2(row) for row in idx.tolist()])).logits
    torch.testing.assert_close(hf[..., present], ours, atol=1e-5, rtol=0)
    absent = sorted(set(range(GPT2_VOCAB_SIZE)) - set(present))
    assert torch.all(hf[..., absent] == 0)  # the documented choice: zero rows for tokens the run lacks
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == absent
    ours_ids = our_greedy(model, tokenizer, "the cat", 30)
    assert hf_greedy(hf_model, gpt2_tokenizer().encode("the cat"), 30) == tokenizer.to_gpt2(ours_ids)


def test_import_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="is not a folder"):
        import_hf(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="has no config.json"):
        import_hf(tmp_path / "empty")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserInputError, match="only GPT-2 \\('gpt2'\\) models can be imported"):
        import_hf(llama)
    pickled = tmp_path / "pickled"
    export_hf(random_gpt(), pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(UserInputError, match="no model.safetensors .*pickled .bin files are never opened"):
        import_hf(pickled)
    odd = tmp_path / "odd"
    export_hf(random_gpt(), odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "activation_function": "silu"}))
    with pytest.raises(UserInputError, match="activation_function 'silu' is not supported"):
        import_hf(odd)


def test_command_line_import_then_export_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gpt.cli import main
    from gpt.run import load_run

    model = random_gpt(seed=8)
    export_hf(model, tmp_path / "hf", gpt2_tokenizer())
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    loaded = load_run(tmp_path / "run")
    idx = random_batch(seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx)[0], model(idx)[0], atol=0, rtol=0)
    assert main(["export", str(tmp_path / "run"), "--hf", str(tmp_path / "again")]) == 0
    back = load_hf(tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, model(idx)[0], atol=1e-5, rtol=0)
    assert main(["export", str(tmp_path / "run"), "--hf", str(tmp_path / "again")]) == 2
    assert "already holds a model; pass --overwrite" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2
    assert "already a run folder" in capsys.readouterr().err
