"""Optimizers and the schedules: learning rate (cosine, warmup-stable-decay) and training window length.

AdamW (fused kernels on CUDA and CPU) decays only tensors of 2 or more dimensions (matrices and embedding
tables), not biases or norm gains. With `optimizer="muon"` the weight matrices inside the blocks are
trained by Muon (orthogonalised momentum) and everything else by AdamW. Every parameter group has an
`lr_scale` (its peak learning rate over `learning_rate`), so one schedule drives all groups.

`torch.optim.Muon` orthogonalises each update in bf16 (its Newton-Schulz casts `grad.bfloat16()`); on a
CPU without native bf16 that is ~15x slower than fp32 (2.1-2.3 s against 0.12-0.15 s for the 16 block
matrices of `quick-cpu` on an AVX2 CPU). `Muon` below is `torch.optim.Muon` with the orthogonalisation in
a dtype the runtime chooses (`gpt/runtime.py`): bf16 where it is fast, so it is then the library's own
step, fp32 elsewhere. It also has the Muon variants of the small-model speedruns, each a `TrainConfig` field:
Polar Express orthogonalisation, NorMuon's per-neuron normalisation and cautious weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from gpt.config import TrainConfig
from gpt.errors import UserInputError

# Polar Express (Amsel, Persson, Musco & Gower 2025): one (a, b, c) per step, each the optimal odd quintic for
# the singular values left by the step before, as modded-nanogpt uses them; the first steps grow small singular
# values fast, the last ones settle them near 1. The input is scaled a little below Frobenius norm 1 so that
# rounding cannot push a singular value past the range the polynomials were fitted on.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02
NORMUON_BETA2 = 0.95  # the decay of NorMuon's per-neuron second moment (the paper's and modded-nanogpt's)


def orthogonalise(update: torch.Tensor, coefficients: Sequence[tuple[float, float, float]], eps: float,
                  dtype: torch.dtype, safety: float = 1.0) -> torch.Tensor:
    """The orthogonalised (m, n) matrix `update` in `dtype`: one odd quintic X <- aX + (bA + cA²)X, A = XXᵀ,
    per (a, b, c) of `coefficients` (Keller Jordan's Newton-Schulz repeats one; Polar Express varies them),
    after scaling X to Frobenius norm 1/safety (so its spectral norm is at most that)."""
    x = update.to(dtype)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() * safety).clamp(min=eps)
    for a, b, c in coefficients:
        gram = x @ x.T  # (m, m) with m <= n
        update_matrix = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update_matrix, x, beta=a)
    return x.T if transposed else x


def neuron_axis(matrix: torch.Tensor) -> int:
    """The axis a neuron's entries of an (m, n) matrix lie along, for NorMuon: the longer side's vectors, i.e.
    a row (axis 1) of a tall or square matrix and a column (axis 0) of a wide one."""
    return 1 if matrix.size(0) >= matrix.size(1) else 0


def normalise_neurons(update: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """NorMuon's step (Li et al. 2025): `update` (m, n) divided, per neuron (`neuron_axis`), by the root of its
    running mean square, then scaled back to its own Frobenius norm; `second_moment` ((m, 1) or (1, n)) is
    updated in place."""
    norm = update.norm()
    second_moment.lerp_(update.square().mean(dim=neuron_axis(update), keepdim=True), 1 - NORMUON_BETA2)
    evened = update * second_moment.clamp(min=1e-10).rsqrt()
    return evened * (norm / evened.norm().clamp(min=1e-10))


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` whose orthogonalisation runs in `ortho_dtype`, with the variants of `TrainConfig`:
    Polar Express instead of Newton-Schulz, NorMuon's per-neuron normalisation, cautious weight decay (a
    weight decays only where the update moves it toward zero too: Chen et al. 2025). In bf16 without a
    variant it is the library's own step; state dicts are the library's (plus NorMuon's "second_moment")."""

    def __init__(self, params, *, ortho_dtype: torch.dtype = torch.bfloat16, orthogonaliser: str = "newton-schulz",
                 normalise: bool = False, cautious_weight_decay: bool = False, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ortho_dtype = ortho_dtype
        self.orthogonaliser = orthogonaliser
        self.normalise = normalise
        self.cautious_weight_decay = cautious_weight_decay

    def _coefficients(self, group: dict) -> tuple[Sequence[tuple[float, float, float]], float]:
        if self.orthogonaliser == "polar-express":
            return POLAR_EXPRESS, POLAR_EXPRESS_SAFETY
        return (group["ns_coefficients"],) * group["ns_steps"], 1.0

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - the Optimizer.step signature
        library_step = (self.ortho_dtype == torch.bfloat16 and self.orthogonaliser == "newton-schulz"
                        and not self.normalise and not self.cautious_weight_decay)
        if library_step:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            coefficients, safety = self._coefficients(group)
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalise(update, coefficients, group["eps"], self.ortho_dtype, safety).to(param.dtype)
                if self.normalise:
                    if "second_moment" not in state:
                        shape = list(param.shape)
                        shape[neuron_axis(param)] = 1  # one entry per neuron
                        state["second_moment"] = param.new_zeros(shape)
                    update = normalise_neurons(update, state["second_moment"])
                rows, cols = param.shape[:2]
                adjusted_lr = lr * math.sqrt(max(1, rows / cols))  # the library's "original" adjustment
                if self.cautious_weight_decay:
                    param.sub_(param * (update * param >= 0), alpha=lr * weight_decay)
                else:
                    param.mul_(1 - lr * weight_decay)
                param.add_(update, alpha=-adjusted_lr)
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
                               weight_decay=config.weight_decay, ortho_dtype=ortho_dtype,
                               orthogonaliser=config.muon_orthogonaliser, normalise=config.muon_normalise,
                               cautious_weight_decay=config.muon_cautious_weight_decay))
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


# A sequence-length schedule: the windows of the first `context_warmup_fraction` of a run are a quarter, then
# half the context (one half of that share each), then full. Tokens per step stay the same (4x, then 2x the
# windows), so the learning-rate schedule and every token count read as without it.
CONTEXT_WARMUP_DIVISORS = (4, 2)


def window_stages(config: TrainConfig, context_length: int) -> list[tuple[float, int]]:
    """The sequence-length schedule as (share of the run at which a stage ends, window length), the last
    stage ending at 1; one stage of the whole context when it is off. Raises `UserInputError` when the
    context does not divide into the short windows."""
    share = config.context_warmup_fraction
    if share <= 0:
        return [(1.0, context_length)]
    divisor = max(CONTEXT_WARMUP_DIVISORS)
    if context_length % divisor:
        raise UserInputError(f"short windows first (context_warmup_fraction) trains on windows of 1/{divisor} of "
                             f"the context, so context_length must divide by {divisor}, not {context_length}",
                             field="context_warmup_fraction")
    count = len(CONTEXT_WARMUP_DIVISORS)
    return [(share * (stage + 1) / count, context_length // divisor)
            for stage, divisor in enumerate(CONTEXT_WARMUP_DIVISORS)] + [(1.0, context_length)]


def window_length(config: TrainConfig, context_length: int, progress: float) -> int:
    """The length of the training windows `progress` (0..1) of the way through a run."""
    return next((length for end, length in window_stages(config, context_length) if progress < end),
                context_length)


def scheduled_lr(config: TrainConfig, step: int, progress: float) -> float:
    """The peak-relative learning rate of `config.schedule` at `step`, `progress` of the way through."""
    return wsd_lr(config, step, progress) if config.schedule == "wsd" else cosine_lr(config, step, progress)
