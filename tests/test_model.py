"""The GPT model: config validation, sizes, attention paths, KV cache, and every option training."""

from __future__ import annotations

import pytest
import torch

from gpt.config import PRESETS
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig, SlidingDecoder

OPTION_SETS = {
    "gpt2-default": {},
    "relu": {"activation": "relu"},
    "swiglu": {"activation": "swiglu"},
    "rope": {"position": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "no-bias": {"bias": False},
    "dropout": {"dropout": 0.1},
    "dropout-not-on-attention": {"dropout": 0.1, "attention_dropout": False},
    "ffn-width": {"ffn_hidden": 24},
    "all-modern": {"activation": "swiglu", "position": "rope", "norm": "rmsnorm", "bias": False},
    "relu2": {"activation": "relu2"},
    "qk-norm": {"qk_norm": True},
    "untied-head": {"tie_embeddings": False},
    "logit-softcap": {"logit_softcap": 6.0},
    "value-embeddings": {"value_embeddings": True},
    "x0-shortcuts": {"x0_shortcuts": True},
    "zero-init-proj": {"zero_init_proj": True},
    "speedrun-levers": {"activation": "relu2", "position": "rope", "norm": "rmsnorm", "bias": False, "qk_norm": True,
                        "tie_embeddings": False, "logit_softcap": 3.0, "value_embeddings": True,
                        "x0_shortcuts": True, "zero_init_proj": True},
}


def small_config(**overrides: object) -> GPTConfig:
    base = {"vocab_size": 61, "context_length": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    return GPTConfig(**{**base, **overrides})


def perturbed(model: GPT, seed: int = 0) -> GPT:
    """Random non-trivial weights everywhere (norm weights and biases too), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


# -- config -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, "divisible by n_head"),
        ({"n_embd": 18, "n_head": 6, "position": "rope"}, "even head size"),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"context_length": -4}, "context_length must be a positive integer"),
        ({"vocab_size": 2.5}, "vocab_size must be a positive integer"),
        ({"ffn_hidden": 0}, "ffn_hidden must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be a number in [0, 1)"),
        ({"dropout": -0.1}, "dropout must be a number in [0, 1)"),
        ({"activation": "tanh"}, "choose one of: gelu, relu, relu2, swiglu"),
        ({"position": "alibi"}, "choose one of: learned, rope"),
        ({"norm": "batchnorm"}, "choose one of: layernorm, rmsnorm"),
        ({"bias": "yes"}, "bias must be true or false"),
    ],
)
def test_invalid_configs_fail_with_actionable_messages(overrides: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        small_config(**overrides)


def test_unknown_option_names_and_presets_are_listed() -> None:
    with pytest.raises(UserInputError, match="unknown model option.*n_heads.*allowed options: vocab_size"):
        GPTConfig.from_dict({"n_heads": 4})
    with pytest.raises(UserInputError, match="unknown preset 'huge'; choose one of: tiny, quick-cpu, seed, gpt2"):
        GPTConfig.from_preset("huge")


def test_config_round_trips_through_dict() -> None:
    config = GPTConfig.from_preset("seed", activation="swiglu", dropout=0.1)
    assert GPTConfig.from_dict(config.to_dict()) == config


def test_presets_have_the_documented_shapes() -> None:
    seed = GPTConfig.from_preset("seed")
    assert (seed.n_layer, seed.n_head, seed.n_embd, seed.ffn_hidden_size, seed.context_length) == (6, 8, 384, 1536, 256)
    gpt2 = GPTConfig.from_preset("gpt2")
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.context_length) == (12, 12, 768, 1024)
    assert gpt2.num_parameters() == 124_439_808  # the published size of GPT-2 small
    assert set(PRESETS) == {"tiny", "quick-cpu", "seed", "gpt2"}


def test_swiglu_default_width_keeps_the_parameter_count_close() -> None:
    gelu = GPTConfig.from_preset("seed")
    swiglu = GPTConfig.from_preset("seed", activation="swiglu")
    assert swiglu.ffn_hidden_size == 1024
    assert abs(swiglu.num_parameters() - gelu.num_parameters()) / gelu.num_parameters() < 0.01


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_config_parameter_count_matches_the_module(options: dict) -> None:
    config = small_config(**options)
    model = GPT(config)
    assert model.num_parameters() == config.num_parameters()
    assert (model.lm_head.weight is model.token_embedding.weight) == config.tie_embeddings


def test_flops_per_token_formula() -> None:
    config = small_config()
    non_position = config.num_parameters() - config.context_length * config.n_embd
    assert config.flops_per_token() == 6 * non_position + 12 * 2 * 16 * 16


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=2000, context_length=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = model.blocks[0].attn.proj.weight.std().item()
    assert residual == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.1)
    assert model.blocks[0].ffn.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.all(model.blocks[0].norm1.weight == 1)


def test_too_long_input_is_refused() -> None:
    model = GPT(small_config())
    with pytest.raises(UserInputError, match="longer than the model's context length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_loss_ignores_minus_one_targets() -> None:
    model = perturbed(GPT(small_config()))
    idx = torch.randint(0, 61, (2, 8))
    targets = torch.randint(0, 61, (2, 8))
    logits, loss = model(idx, targets)
    masked = targets.clone()
    masked[:, :4] = -1
    _, masked_loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 61), targets[:, 4:].reshape(-1))
    assert masked_loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert loss.item() != pytest.approx(masked_loss.item())


# -- attention ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_explicit_attention_path_matches_sdpa(options: dict) -> None:
    torch.manual_seed(0)
    model = perturbed(GPT(small_config(**options)))
    idx = torch.randint(0, 61, (3, 16))
    logits, _ = model(idx)
    explicit_logits, attentions = model.forward_with_attention(idx)
    torch.testing.assert_close(explicit_logits, logits, atol=1e-5, rtol=1e-5)
    assert len(attentions) == 2
    for probs in attentions:
        assert probs.shape == (3, 2, 16, 16)
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 16))
        future = torch.ones(16, 16, dtype=torch.bool).triu(diagonal=1)
        assert torch.all(probs[..., future] == 0)
        assert torch.all(probs[..., ~future] > 0)


def test_cpu_autocast_runs_attention_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's CPU attention is slower in bf16 than fp32: under CPU autocast q, k, v reach the kernel in
    fp32 and the result goes on in bf16; without autocast nothing is cast. The loss stays close."""
    import gpt.model as model_module

    seen: list[torch.dtype] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(q.dtype)
        out = sdpa(q, *args, **kwargs)
        seen.append(out.dtype)
        return out
    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", recording_sdpa)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32, qk_norm=True))
    x = torch.randint(0, 64, (2, 16))
    _, fp32_loss = model(x, x)
    assert seen == [torch.float32] * 4
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, bf16_loss = model(x, x)
    assert seen == [torch.float32] * 4
    bf16_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert abs(bf16_loss.item() - fp32_loss.item()) < 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attended, _ = model.blocks[0].attn(torch.randn(2, 16, 32))
    assert attended.dtype == torch.bfloat16  # the projection after attention ran in bf16


def test_attention_does_not_look_at_the_future() -> None:
    model = perturbed(GPT(small_config()))
    idx = torch.randint(0, 61, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 61
    torch.testing.assert_close(model(idx)[0][:, :10], model(changed)[0][:, :10])


# -- KV cache -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"position": "rope", "activation": "swiglu", "norm": "rmsnorm"}])
def test_cached_decoding_equals_full_forward(options: dict) -> None:
    torch.manual_seed(1)
    model = perturbed(GPT(small_config(**options)))
    sequence = torch.randint(0, 61, (2, 16))
    full_logits, _ = model(sequence)
    cache = model.new_cache(batch_size=2)
    logits = model.forward_cached(sequence[:, :5], cache)  # prefill a prompt
    torch.testing.assert_close(logits, full_logits[:, 4], atol=1e-5, rtol=1e-5)
    for t in range(5, 16):
        logits = model.forward_cached(sequence[:, t : t + 1], cache)
        torch.testing.assert_close(logits, full_logits[:, t], atol=1e-5, rtol=1e-5)
    assert cache.length == 16
    with pytest.raises(UserInputError, match="longer than the model's context length"):
        model.forward_cached(sequence[:, :1], cache)


def test_cached_chunk_after_cached_prefix_uses_offset_mask() -> None:
    model = perturbed(GPT(small_config(position="rope")))
    sequence = torch.randint(0, 61, (1, 12))
    full_logits, _ = model(sequence)
    cache = model.new_cache()
    model.forward_cached(sequence[:, :4], cache)
    logits = model.forward_cached(sequence[:, 4:12], cache)  # a multi-token chunk after cached tokens
    torch.testing.assert_close(logits, full_logits[:, 11], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{}, {"position": "rope"}])
def test_sliding_decoder_crops_and_reprefills_past_the_context(options: dict) -> None:
    torch.manual_seed(2)
    model = perturbed(GPT(small_config(**options)))
    decoder = SlidingDecoder(model, batch_size=2)  # context 16, keeps the last 12 when full
    assert decoder.keep == 12
    stream = torch.randint(0, 61, (2, 50))
    logits = decoder.prefill(stream[:, :6])
    lengths = []
    for t in range(6, 50):
        window = decoder.window
        assert torch.equal(window, stream[:, t - window.size(1) : t])  # always the most recent tokens
        torch.testing.assert_close(logits, model(window)[0][:, -1], atol=1e-5, rtol=1e-5)
        lengths.append(window.size(1))
        logits = decoder.step(stream[:, t])
    assert max(lengths) == 16
    assert lengths[lengths.index(16) + 1] == 12  # full window + one token -> last 12 tokens, re-prefilled
    with pytest.raises(UserInputError, match="keep must be between 1 and the context length"):
        SlidingDecoder(model, keep=17)


def test_exact_sliding_window_keeps_the_full_context() -> None:
    model = perturbed(GPT(small_config()))
    decoder = SlidingDecoder(model, keep=16)
    stream = torch.randint(0, 61, (1, 30))
    logits = decoder.prefill(stream[:, :20])  # a long prompt is cropped to the context
    assert torch.equal(decoder.window, stream[:, 4:20])
    for t in range(20, 30):
        torch.testing.assert_close(logits, model(stream[:, t - 16 : t])[0][:, -1], atol=1e-5, rtol=1e-5)
        logits = decoder.step(stream[:, t : t + 1])


# -- every option trains ------------------------------------------------------------------------------
def train_losses(config: GPTConfig, steps: int = 30) -> tuple[float, float]:
    """Loss before and after `steps` AdamW steps on a short repeated pattern."""
    torch.manual_seed(0)
    model = GPT(config)
    pattern = torch.tensor([3, 14, 15, 9, 2, 6, 5, 35, 8, 9, 7, 9, 32, 38, 4, 6])
    text = pattern.repeat(8) % config.vocab_size
    windows = torch.stack([text[i : i + config.context_length + 1] for i in range(0, 64, 4)])
    x, y = windows[:, :-1], windows[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    model.train()
    first = None
    for _ in range(steps):
        _, loss = model(x, y, return_logits=False)  # the trainer's path: the chunked loss
        first = loss.item() if first is None else first
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return first, model(x, y)[1].item()


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_every_option_trains(options: dict) -> None:
    before, after = train_losses(small_config(**options))
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", [name for name in OPTION_SETS if name != "gpt2-default"])
def test_every_option_changes_the_model(name: str) -> None:
    """No switch is ignored: the same seed gives a different function (in training mode, for dropout)."""
    idx = torch.randint(0, 61, (2, 16))
    outputs = []
    for options in ({}, OPTION_SETS[name]):
        torch.manual_seed(0)
        model = perturbed(GPT(small_config(**options))).train()
        torch.manual_seed(1)
        outputs.append(model(idx)[0])
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("preset", ["tiny", "seed", "gpt2"])
def test_preset_shapes_train(preset: str) -> None:
    """Each preset's layer/head layout trains (narrowed widths keep the test fast)."""
    shape = PRESETS[preset].model
    head_size = 4
    config = GPTConfig(
        vocab_size=61, context_length=16, n_layer=shape["n_layer"], n_head=shape["n_head"],
        n_embd=shape["n_head"] * head_size,
    )
    before, after = train_losses(config, steps=30)
    assert after < 0.5 * before, (before, after)


# -- the speedrun levers --------------------------------------------------------------------------------
def test_zero_initialised_projections_make_each_block_start_as_the_identity() -> None:
    model = GPT(small_config(zero_init_proj=True, dropout=0.0)).eval()
    x = torch.randn(2, 16, 16)
    for block in model.blocks:
        assert torch.equal(block(x)[0], x)


def test_x0_shortcuts_and_value_embeddings_start_as_documented() -> None:
    model = GPT(small_config(x0_shortcuts=True, value_embeddings=True))
    assert model.blocks[0].x0_mix.tolist() == [1.0, 0.0]
    assert model.blocks[0].attn.value_mix.tolist() == [0.5, 0.5]
    assert model.value_embedding.weight.shape == (61, 16)


def test_logit_softcap_bounds_every_logits_path() -> None:
    cap = 0.5
    model = perturbed(GPT(small_config(logit_softcap=cap)), seed=3)
    idx = torch.randint(0, 61, (1, 16))
    logits = model(idx)[0]
    assert logits.abs().max() < cap
    assert torch.allclose(model.forward_with_attention(idx)[0], logits, atol=1e-5)
    cache = model.new_cache()
    assert torch.allclose(model.forward_cached(idx, cache), logits[:, -1], atol=1e-5)


@pytest.mark.parametrize("cap", [None, 1.5])
def test_chunked_loss_with_softcap_matches_the_plain_loss_and_gradients(cap: float | None) -> None:
    torch.manual_seed(0)
    model = perturbed(GPT(small_config(logit_softcap=cap, tie_embeddings=False)), seed=1).train()
    idx, targets = torch.randint(0, 61, (3, 16)), torch.randint(0, 61, (3, 16))
    targets[0, :4] = -1
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        _, loss = model(idx, targets, return_logits=return_logits)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert torch.allclose(plain, chunked, atol=1e-6)
    for a, b in zip(plain_grads, chunked_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_set_dropout_changes_every_dropout_and_attention_only_where_the_config_drops_it() -> None:
    for attention_dropout in (True, False):
        model = GPT(GPTConfig(vocab_size=64, context_length=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1,
                              attention_dropout=attention_dropout))
        model.set_dropout(0.3)
        modules = list(model.modules())
        assert {m.p for m in modules if isinstance(m, torch.nn.Dropout)} == {0.3}
        assert {m.attention_dropout for m in modules if hasattr(m, "attention_dropout")} == {
            0.3 if attention_dropout else 0.0}
        assert model.config.dropout == 0.1
