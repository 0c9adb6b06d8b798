"""Muon's variants (gpt/optim.py): Polar Express orthogonalisation, NorMuon's per-neuron normalisation,
cautious weight decay; each a `TrainConfig` field that only a Muon run accepts."""

from __future__ import annotations

import math

import pytest
import torch

from gpt.cli import build_parser
from gpt.config import TrainConfig, resolve_preset
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.optim import POLAR_EXPRESS, POLAR_EXPRESS_SAFETY, Muon, configure_optimizers, normalise_neurons, orthogonalise
from gpt.run import DataRef, RunConfig, train_command
from gpt.tokenizer import gpt2_tokenizer

NEWTON_SCHULZ = ((3.4445, -4.775, 2.0315),) * 5


@pytest.mark.parametrize("shape", [(48, 96), (96, 48)])
def test_polar_express_leaves_singular_values_nearer_one_than_newton_schulz(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    update = torch.randn(*shape) * torch.logspace(0, 2, shape[1])  # columns from 1 to 100: ill-conditioned
    spread = {}
    for name, coefficients, safety in (("newton-schulz", NEWTON_SCHULZ, 1.0),
                                       ("polar-express", POLAR_EXPRESS, POLAR_EXPRESS_SAFETY)):
        result = orthogonalise(update, coefficients, 1e-7, torch.float32, safety)
        assert result.shape == update.shape
        singular = torch.linalg.svdvals(result)
        assert singular.max() < 1.25
        spread[name] = (singular - 1).abs().max().item()
    assert spread["polar-express"] < spread["newton-schulz"]


@pytest.mark.parametrize("shape", [(8, 4), (4, 8)])
def test_normuon_evens_out_each_neuron_and_keeps_the_update_norm(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    tall = shape[0] >= shape[1]
    scales = torch.arange(1.0, max(shape) + 1)  # neuron i is i times as large as neuron 1
    update = torch.randn(*shape) * (scales[:, None] if tall else scales[None, :])
    second_moment = torch.zeros((shape[0], 1) if tall else (1, shape[1]))
    evened = normalise_neurons(update, second_moment)
    rms = evened.square().mean(dim=1 if tall else 0).sqrt()
    assert torch.allclose(rms, rms[0].expand_as(rms), rtol=1e-5)  # every neuron's step the same size
    assert evened.norm().item() == pytest.approx(update.norm().item(), rel=1e-5)
    assert torch.allclose(second_moment.flatten(), 0.05 * update.square().mean(dim=1 if tall else 0))
    assert torch.equal(torch.sign(evened), torch.sign(update))


def test_cautious_weight_decay_decays_only_where_the_update_agrees() -> None:
    torch.manual_seed(0)
    start = torch.randn(16, 32)
    grad = torch.randn(16, 32)
    lr, decay = 0.02, 0.5
    params = {}
    for name, options in (("cautious", {"weight_decay": decay, "cautious_weight_decay": True}),
                          ("plain", {"weight_decay": decay}), ("none", {"weight_decay": 0.0})):
        param = torch.nn.Parameter(start.clone())
        param.grad = grad.clone()
        Muon([param], lr=lr, ortho_dtype=torch.float32, **options).step()
        params[name] = param.detach()
    step = start - params["none"]  # adjusted lr x the orthogonalised update
    agrees = step * start >= 0  # the update moves the weight toward zero
    assert 0.2 < agrees.float().mean() < 0.8
    torch.testing.assert_close(params["cautious"], params["none"] - lr * decay * start * agrees)
    torch.testing.assert_close(params["plain"], params["none"] - lr * decay * start)


def test_the_variants_only_change_a_muon_run() -> None:
    for given in ({"muon_orthogonaliser": "polar-express"}, {"muon_normalise": True},
                  {"muon_cautious_weight_decay": True}):
        name = next(iter(given))
        with pytest.raises(UserInputError, match=f"{name} changes Muon, which this run does not use") as caught:
            TrainConfig(max_steps=1, optimizer="adamw", **given)
        assert caught.value.field == name
        assert TrainConfig(max_steps=1, optimizer="muon", **given)
    with pytest.raises(UserInputError, match="unknown muon_orthogonaliser 'svd'; choose one of: newton-schulz, "
                                             "polar-express"):
        TrainConfig(max_steps=1, optimizer="muon", muon_orthogonaliser="svd")


def test_a_variant_leaves_the_library_step_for_its_own() -> None:
    """Newton-Schulz in bf16 is `torch.optim.Muon`'s step; a variant runs the same loop with its change only."""
    torch.manual_seed(0)
    start, grad = torch.randn(32, 16), torch.randn(32, 16)
    results = {}
    for name, options in (("library", {}), ("own", {"cautious_weight_decay": True})):
        param = torch.nn.Parameter(start.clone())
        param.grad = grad.clone()
        Muon([param], lr=0.02, weight_decay=0.0, ortho_dtype=torch.bfloat16, **options).step()
        results[name] = param.detach()
    # With no decay the cautious mask changes nothing: the two paths take the same step.
    torch.testing.assert_close(results["own"], results["library"])
    assert not math.isclose((results["own"] - start).abs().sum().item(), 0.0)


def test_the_reproduce_command_and_the_optimizer_keep_the_variants(tmp_path) -> None:
    """The model card's command line gives the variants back, and the optimizer is built with them."""
    given = {"muon_orthogonaliser": "polar-express", "muon_normalise": True, "muon_cautious_weight_decay": True}
    model, train = resolve_preset("quick-cpu", train_overrides=given)
    command = train_command(tmp_path / "r", RunConfig(model=model, train=train, data=DataRef("d", {}),
                                                      tokenizer=gpt2_tokenizer(), preset="quick-cpu"))
    assert "--muon-orthogonaliser polar-express --muon-normalise --muon-cautious-weight-decay" in command
    args = build_parser().parse_args(command.split()[3:])
    _, again = resolve_preset("quick-cpu", train_overrides={name: getattr(args, name) for name in args.train_fields})
    assert {name: getattr(again, name) for name in given} == given
    tiny = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, context_length=8, vocab_size=32))
    _, muon = configure_optimizers(tiny, again, torch.device("cpu"), ortho_dtype=torch.float32)
    assert (muon.orthogonaliser, muon.normalise, muon.cautious_weight_decay) == ("polar-express", True, True)
