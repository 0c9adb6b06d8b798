"""Optimizers and the learning-rate schedules (cosine, warmup-stable-decay).

AdamW (fused kernels on CUDA and CPU) decays only tensors of 2 or more dimensions (matrices and embedding
tables), not biases or norm gains. With `optimizer="muon"` the weight matrices inside the blocks are
trained by Muon (orthogonalised momentum) and everything else by AdamW. Every parameter group has an
`lr_scale` (its peak learning rate over `learning_rate`), so one schedule drives all groups.

`torch.optim.Muon` orthogonalises each update in bf16 (its Newton-Schulz casts `grad.bfloat16()`); on a
CPU without native bf16 that is ~15x slower than fp32 (2.1-2.3 s against 0.12-0.15 s for the 16 block
matrices of `quick-cpu` on an AVX2 CPU). `Muon` below is `torch.optim.Muon` with the orthogonalisation in
a dtype the runtime chooses (`gpt/runtime.py`): bf16 where it is fast, so it is then the library's own
step, fp32 elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gpt.config import TrainConfig


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz orthogonalisation of a (m, n) matrix in `dtype` (the same quintic iteration as
    `torch.optim.Muon`, Keller Jordan's Muon), returned in that dtype."""
    a, b, c = coefficients
    x = update.to(dtype)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T  # (m, m) with m <= n
        update_matrix = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update_matrix, x, beta=a)
    return x.T if transposed else x


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` whose Newton-Schulz runs in `ortho_dtype` (state dicts are the library's)."""

    def __init__(self, params, *, ortho_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ortho_dtype = ortho_dtype

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - the Optimizer.step signature
        if self.ortho_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ortho_dtype)
                rows, cols = param.shape[:2]
                adjusted_lr = lr * math.sqrt(max(1, rows / cols))  # the library's "original" adjustment
                param.mul_(1 - lr * weight_decay)
                param.add_(update.to(param.dtype), alpha=-adjusted_lr)
        return loss


def configure_optimizers(model: torch.nn.Module, config: TrainConfig, device: torch.device,
                         ortho_dtype: torch.dtype = torch.bfloat16) -> list[torch.optim.Optimizer]:
    """AdamW for everything, or (optimizer="muon") Muon for the blocks' weight matrices + AdamW for the rest."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    muon = config.optimizer == "muon"
    in_muon = {id(p) for name, p in named if muon and name.startswith("blocks.") and p.dim() == 2}
    rest = [p for _, p in named if id(p) not in in_muon]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay, "lr_scale": 1.0},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    fused = device.type in ("cuda", "cpu")
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=fused)
    ]
    if in_muon:
        matrices = [p for _, p in named if id(p) in in_muon]
        scale = config.muon_learning_rate / config.learning_rate
        optimizers.append(Muon([{"params": matrices, "lr_scale": scale}], lr=config.muon_learning_rate,
                               weight_decay=config.weight_decay, ortho_dtype=ortho_dtype))
    return optimizers


def _warmup_then(config: TrainConfig, step: int, progress: float,
                 decay: Callable[[float, float, float], float]) -> float:
    """Linear warmup over `warmup_steps`, then `decay(peak, low, progress)` with low = min_lr_ratio x peak
    and `progress` clamped to [0, 1]: how far the decay has gone (by planned steps, or by time for a run
    bounded only by `max_minutes`)."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    return decay(peak, peak * config.min_lr_ratio, min(max(progress, 0.0), 1.0))


def cosine_lr(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then cosine from the peak down to min_lr_ratio x peak."""
    return _warmup_then(config, step, progress,
                        lambda peak, low, done: low + 0.5 * (1.0 + math.cos(math.pi * done)) * (peak - low))


def wsd_lr(config: TrainConfig, step: int, progress: float) -> float:
    """Warmup-stable-decay (trapezoidal): linear warmup, the peak until the last `cooldown_fraction` of the
    run, then linear down to min_lr_ratio x peak (Hägele et al. 2024; modded-nanogpt's schedule)."""
    start = 1.0 - config.cooldown_fraction
    return _warmup_then(config, step, progress, lambda peak, low, done: peak if done <= start
                        else peak - (peak - low) * (done - start) / config.cooldown_fraction)


def scheduled_lr(config: TrainConfig, step: int, progress: float) -> float:
    """The peak-relative learning rate of `config.schedule` at `step`, `progress` of the way through."""
    return wsd_lr(config, step, progress) if config.schedule == "wsd" else cosine_lr(config, step, progress)
