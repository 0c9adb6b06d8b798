"""Weight averaging rules (gpt/averaging.py) and how configs choose one."""

from __future__ import annotations

import pytest
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from gpt.averaging import power_ema_multi_avg_fn, power_share, weight_average
from gpt.config import TrainConfig, resolve_preset
from gpt.errors import UserInputError
from gpt.run import train_command


def average_of_steps(update, steps: int) -> torch.Tensor:
    """Average one-hot "weights": step t's weights are the t-th unit vector, so the average's entries are the
    share each step holds (AveragedModel copies the first weights, then calls `update`)."""
    averaged = [torch.nn.functional.one_hot(torch.tensor(0), steps).double()]
    for t in range(1, steps):
        update(averaged, [torch.nn.functional.one_hot(torch.tensor(t), steps).double()], torch.tensor(t))
    return averaged[0]


def test_power_share_starts_with_a_copy() -> None:
    assert power_share(1.0, 1) == 1.0
    assert power_share(0.0, 4) == pytest.approx(0.25)  # exponent 0: the plain running mean


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_power_average_weighs_step_t_as_t_to_the_power(gamma: float) -> None:
    shares = average_of_steps(power_ema_multi_avg_fn(gamma), 40)
    t = torch.arange(1, 41, dtype=torch.float64)
    # exactly: exponent 0 is the uniform mean; exponent 1 weighs step t as (2t - 1) / T^2 (∝ t)
    expected = torch.full((40,), 1 / 40, dtype=torch.float64) if gamma == 0 else (2 * t - 1) / 40**2
    torch.testing.assert_close(shares, expected)
    assert shares.sum().item() == pytest.approx(1.0)


def test_power_average_spans_the_same_share_of_a_short_and_a_long_run() -> None:
    """The point of the power rule: a slow machine's 600 steps and a fast one's 2,400 average the same part of
    the run, where a fixed EMA decay gives the first weights of the short run far more."""
    def first_tenth(update, steps: int) -> float:
        return average_of_steps(update, steps)[: steps // 10].sum().item()

    power = [first_tenth(power_ema_multi_avg_fn(1.0), steps) for steps in (600, 2400)]
    assert power[0] == pytest.approx(power[1], abs=1e-3) == pytest.approx(0.01, abs=1e-3)
    ema = [first_tenth(get_ema_multi_avg_fn(0.998), steps) for steps in (600, 2400)]
    assert ema[0] > 0.25 and ema[1] < 0.02


def test_weight_average_follows_the_config() -> None:
    model = torch.nn.Linear(2, 2)
    assert weight_average(model, TrainConfig(max_steps=1)) is None
    for config in (TrainConfig(max_steps=1, ema_decay=0.9), TrainConfig(max_steps=1, ema_power=2.0)):
        averaged = weight_average(model, config)
        averaged.update_parameters(model)
        with torch.no_grad():
            model.weight.add_(1.0)
        averaged.update_parameters(model)
        share = 0.1 if config.ema_decay else power_share(2.0, 2)
        torch.testing.assert_close(averaged.module.weight, model.weight - 1.0 + share)


def test_one_weight_average_at_a_time() -> None:
    with pytest.raises(UserInputError, match=r"choose one weight average: ema_decay \(0.99\) or ema_power \(1\)"):
        TrainConfig(max_steps=1, ema_decay=0.99, ema_power=1.0)
    with pytest.raises(UserInputError, match="ema_power"):
        TrainConfig(max_steps=1, ema_power=-1.0)


@pytest.mark.parametrize("given", [{"ema_decay": 0.99}, {"ema_power": 3.0}, {"ema_power": 0.0}])
def test_a_given_weight_average_replaces_the_presets(given: dict) -> None:
    _, config = resolve_preset("quick-cpu", train_overrides=given)
    expected = {"ema_decay": 0.0, "ema_power": 0.0, **given}
    assert (config.ema_decay, config.ema_power) == (expected["ema_decay"], expected["ema_power"])


def test_the_reproduce_command_keeps_the_average(tmp_path) -> None:
    """The model card's command line gives back the run's averaging rule whichever one the preset has."""
    from gpt.cli import build_parser
    from gpt.run import DataRef, RunConfig
    from gpt.tokenizer import gpt2_tokenizer

    for given in ({"ema_decay": 0.99}, {"ema_power": 3.0}, {"ema_decay": 0.0, "ema_power": 0.0}):
        model, train = resolve_preset("quick-cpu", train_overrides=given)
        command = train_command(tmp_path / "r", RunConfig(model=model, train=train, data=DataRef("d", {}),
                                                          tokenizer=gpt2_tokenizer(), preset="quick-cpu"))
        args = build_parser().parse_args(command.split()[3:])
        overrides = {name: getattr(args, name) for name in args.train_fields}
        _, again = resolve_preset("quick-cpu", train_overrides=overrides)
        assert (again.ema_decay, again.ema_power) == (train.ema_decay, train.ema_power), command
