"""The chunked cross-entropy (`model(x, y, return_logits=False)`): the same loss and gradients as the whole
logits through `F.cross_entropy`, whatever the block size, with ignored targets, under autocast, without
gradients; and what it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

import gpt.model as model_module
from gpt.model import GPT, GPTConfig, chunked_cross_entropy, loss_chunks

VOCAB = 61


def tiny_model(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    base = {"vocab_size": VOCAB, "context_length": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    model = GPT(GPTConfig(**{**base, **overrides}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial weights everywhere, so every gradient is non-zero
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def batch(seed: int = 1, ignored: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (3, 16), generator=generator)
    y = torch.randint(0, VOCAB, (3, 16), generator=generator)
    if ignored:
        y[0, :5] = -1
        y[2, -3:] = -1
    return x, y


def loss_and_grads(model: GPT, x: torch.Tensor, y: torch.Tensor, return_logits: bool,
                   scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits, loss = model(x, y, return_logits=return_logits)
    assert (logits is None) == (not return_logits)
    (loss * scale).backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 7 rows of the 48: six full ones and a short last one."""
    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 4 * VOCAB * 7)


@pytest.mark.parametrize("blocks", ["one block", "several blocks"])
@pytest.mark.parametrize("options", [{}, {"activation": "swiglu", "position": "rope", "norm": "rmsnorm",
                                          "bias": False}], ids=["gpt2", "modern"])
def test_loss_and_every_gradient_equal_the_whole_logits_path(blocks: str, options: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if blocks == "several blocks":
        monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 4 * VOCAB * 7)
    assert len(loss_chunks(48, VOCAB)) == (1 if blocks == "one block" else 7)
    model = tiny_model(**options)
    x, y = batch()
    plain_loss, plain_grads = loss_and_grads(model, x, y, return_logits=True)
    loss, grads = loss_and_grads(model, x, y, return_logits=False)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_incoming_gradient_scales_every_gradient(small_blocks: None) -> None:
    """The trainer backpropagates loss / accumulation steps (and a scaler may multiply it)."""
    model = tiny_model()
    x, y = batch()
    _, plain_grads = loss_and_grads(model, x, y, return_logits=True, scale=0.375)
    _, grads = loss_and_grads(model, x, y, return_logits=False, scale=0.375)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_ignored_targets_are_left_out_like_f_cross_entropy(small_blocks: None) -> None:
    hidden = torch.randn(48, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (48,))
    targets[::3] = -1
    loss = chunked_cross_entropy(hidden, weight, targets)
    kept = targets != -1
    expected = F.cross_entropy(hidden[kept] @ weight.t(), targets[kept])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(hidden.grad[~kept] == 0)  # an ignored row gets no gradient
    assert torch.all(hidden.grad[kept].abs().sum(dim=1) > 0)
    every_ignored = torch.full((48,), -1)
    assert torch.isnan(chunked_cross_entropy(hidden, weight, every_ignored))
    assert torch.isnan(F.cross_entropy(hidden @ weight.t(), every_ignored, ignore_index=-1))


def test_without_gradients_it_is_the_same_loss(small_blocks: None) -> None:
    model = tiny_model().eval()
    x, y = batch()
    with torch.no_grad():
        logits, plain = model(x, y)
        none, loss = model(x, y, return_logits=False)
    assert none is None and not loss.requires_grad
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(model(x, y, return_logits=False)[1], plain, rtol=1e-6, atol=1e-6)


def test_bf16_autocast_stays_close_to_the_whole_logits_path(small_blocks: None) -> None:
    """Under autocast the matmuls run in bf16 and the softmax in fp32, as autocast runs the plain path."""
    model = tiny_model()
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_loss, plain_grads = loss_and_grads(model, x, y, return_logits=True)
        loss, grads = loss_and_grads(model, x, y, return_logits=False)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, plain_loss, rtol=1e-2, atol=1e-2)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32
        scale = plain_grads[name].abs().max()
        assert (grad - plain_grads[name]).abs().max() <= 0.05 * scale, name


def test_a_second_backward_is_refused_with_a_reason() -> None:
    model = tiny_model()
    x, y = batch()
    _, loss = model(x, y, return_logits=False)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass per forward"):
        loss.backward()


def test_a_frozen_body_still_trains_the_head() -> None:
    """Only the weight wants a gradient (e.g. hidden states given): the hidden gradient is skipped."""
    hidden = torch.randn(20, 16)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (20,))
    chunked_cross_entropy(hidden, weight, targets).backward()
    expected = copy.deepcopy(weight.detach()).requires_grad_()
    F.cross_entropy(hidden @ expected.t(), targets).backward()
    torch.testing.assert_close(weight.grad, expected.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("rows", "vocab", "budget", "count"),
                         [(1024, 50257, 128 * 2**20, 2), (48, 61, 4 * 61 * 7, 7), (5, 61, 1, 5), (3, 10, 10**9, 1)])
def test_blocks_cover_every_row_once_within_the_budget(rows: int, vocab: int, budget: int, count: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", budget)
    blocks = loss_chunks(rows, vocab)
    assert len(blocks) == count
    assert [i for block in blocks for i in range(rows)[block]] == list(range(rows))
    assert all(4 * vocab * (block.stop - block.start) <= max(budget, 4 * vocab) for block in blocks)
