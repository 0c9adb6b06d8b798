"""Weight averaging: the averaged copy of the weights a run evaluates, samples from and saves.

Two rules, both a `torch.optim.swa_utils.AveragedModel` updated after every optimizer step:

- `ema_decay` d: an exponential moving average, avg <- d * avg + (1 - d) * weights. Its horizon is fixed in
  steps (about 1 / (1 - d)), so the same d averages a different share of a run on a slower machine: after T
  steps the first weights still hold d^T of the average (0.998^770 = 21%).
- `ema_power` g (the power-function EMA of Karras et al., "Analyzing and Improving the Training Dynamics of
  Diffusion Models", 2024): the k-th update takes the share 1 - (1 - 1/k)^(g + 1), which makes the average
  weigh step t in proportion to t^g. Its horizon is a fixed share of the run however many steps the machine
  manages (the last ~1/(g + 2) of the run on average), so a time-bounded run averages the same part of its
  training on a fast and a slow CPU.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gpt.config import TrainConfig


def power_share(gamma: float, k: int) -> float:
    """The share the k-th averaged weights (k >= 1) take in a power-function EMA of exponent `gamma`."""
    return 1.0 - (1.0 - 1.0 / k) ** (gamma + 1.0)


def power_ema_multi_avg_fn(gamma: float):
    """`AveragedModel`'s multi_avg_fn for the power-function EMA (weights of step t ∝ t^gamma)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # AveragedModel copies the first weights itself; this is the (num_averaged + 1)-th.
        torch._foreach_lerp_(averaged, current, power_share(gamma, int(num_averaged.item()) + 1))

    return update


def weight_average(model: torch.nn.Module, config: TrainConfig) -> AveragedModel | None:
    """The averaged copy `config` asks for (`ema_decay` or `ema_power`), or None when averaging is off."""
    if config.ema_power > 0:
        return AveragedModel(model, multi_avg_fn=power_ema_multi_avg_fn(config.ema_power))
    if config.ema_decay > 0:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    return None

