"""What a run will cost before it starts, and how far a running one has got.

`make_plan(model, train, data_dir)` returns a `RunPlan`: parameters (with the vocabulary the run really
uses), tokens per step, planned steps, epochs, tokens per parameter, estimated memory, and the precision
the machine resolves to with its reason. The trainer, the Train tab and `python -m gpt train --dry-run`
all show this one plan. `training_progress(rows, ...)` turns a run's metrics rows into step k of N,
seconds per step, the time to the next evaluation and the ETA for the Train tab's status line.

The memory estimate is rough (weights, gradients and optimizer state in fp32, plus stored activations
and the logits), good for "will this fit?" rather than exact accounting. It follows the per-layer
activation count of Korthikanti et al. 2022 (34·s·b·h bytes in 16-bit, plus 5·a·s²·b for attention
scores when they are materialised, as on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from gpt.config import TrainConfig
from gpt.model import GPTConfig
from gpt.optim import window_stages
from gpt.runtime import resolve_device, resolve_precision, split_batch

CHINCHILLA_TOKENS_PER_PARAMETER = 20


def planned_steps(train: TrainConfig, model: GPTConfig, train_tokens: int | None) -> int | None:
    """Optimizer steps a run will take when bounded by steps or epochs (None when only by minutes)."""
    tokens_per_step = train.batch_size * train.grad_accum_steps * model.context_length
    candidates = []
    if train.max_steps is not None:
        candidates.append(train.max_steps)
    if train.epochs is not None and train_tokens:
        candidates.append(max(1, math.ceil(train.epochs * train_tokens / tokens_per_step)))
    return min(candidates) if candidates else None


@dataclass(frozen=True)
class DropoutChoice:
    """The dropout a new run trains with, and why (None: the model's dropout, no rule applied)."""

    dropout: float
    reason: str | None


def dropout_rule_applies(model: GPTConfig, train: TrainConfig) -> bool:
    """Whether `decide_dropout` has anything to decide: a threshold is set and the model has dropout."""
    return train.dropout_from_epochs is not None and model.dropout > 0


def decide_dropout(model: GPTConfig, train: TrainConfig, train_tokens: int | None, tokens_per_step: int,
                   seconds_per_step: float | None = None) -> DropoutChoice:
    """The model's dropout, or none when `train.dropout_from_epochs` is set and the run is planned to pass over
    the training tokens at most that many times. Dropout is a cost at few passes and the cure at many: on the
    5-minute CPU recipe dropout 0.1 cost 0.05 bits/byte at ~4 passes (a CPU without fast bf16) and gained
    0.14 at ~9 (an AMX CPU). A time-bounded run's passes need `seconds_per_step` (a timed step); without it
    the choice is left to the start of training and the reason says so."""
    if not dropout_rule_applies(model, train):
        return DropoutChoice(model.dropout, None)
    threshold = train.dropout_from_epochs
    counted = planned_steps(train, model, train_tokens)
    timed = train.max_minutes * 60 / seconds_per_step if train.max_minutes is not None and seconds_per_step else None
    candidates = [steps for steps in (counted, timed) if steps is not None]
    if not candidates or not train_tokens:
        return DropoutChoice(model.dropout, f"dropout {model.dropout:g} only past {threshold:g} epochs: decided "
                                            "from a timed step when training starts")
    epochs = min(candidates) * tokens_per_step / train_tokens
    how = (f" ({train.max_minutes:g} min at {seconds_per_step:.3f} s per timed step)"
           if timed is not None and min(candidates) == timed else "")
    if epochs > threshold:
        return DropoutChoice(model.dropout, f"dropout {model.dropout:g}: the run plans {epochs:.1f} epochs{how}, "
                                            f"more than {threshold:g}")
    return DropoutChoice(0.0, f"dropout off: the run plans {epochs:.1f} epochs{how}, at most {threshold:g} "
                              f"(dropout {model.dropout:g} is used past that)")


def training_memory(model: GPTConfig, train: TrainConfig, precision: str, flash_attention: bool) -> dict[str, int]:
    """Estimated bytes: `state` (weights + grads + optimizer), `activations` (one micro-batch), `total`."""
    n = model.num_parameters()
    if train.optimizer == "muon":
        d, h = model.n_embd, model.ffn_hidden_size
        matrices = model.n_layer * (4 * d * d + (3 if model.activation == "swiglu" else 2) * d * h)
        optimizer_state = 4 * matrices + 8 * (n - matrices)  # one Muon momentum, two AdamW moments
    else:
        optimizer_state = 8 * n
    state = 8 * n + optimizer_state  # fp32 weights and gradients
    s, b, d, a, layers = model.context_length, train.batch_size, model.n_embd, model.n_head, model.n_layer
    scale = 1.0 if precision in ("bf16", "fp16") else 2.0  # the 34·s·b·h count is for 16-bit activations
    per_layer = 34 * s * b * d + (0 if flash_attention else 5 * a * s * s * b)
    logits = 3 * b * s * model.vocab_size * 4  # logits, their softmax and gradient, in fp32
    activations = int(layers * per_layer * scale + logits)
    return {"state": state, "optimizer": optimizer_state, "activations": activations, "total": state + activations}


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


@dataclass(frozen=True)
class RunPlan:
    """What a run will do and cost (see the module docstring)."""

    model: GPTConfig  # with the vocabulary size the run uses
    train: TrainConfig
    parameters: int
    vocab_note: str
    tokens_per_step: int
    planned_steps: int | None
    train_tokens: int | None
    memory: dict
    device: str
    precision: str
    precision_reason: str
    batch_note: str | None
    dropout_reason: str | None = None

    @property
    def planned_tokens(self) -> int | None:
        return self.planned_steps * self.tokens_per_step if self.planned_steps else None

    @property
    def epochs(self) -> float | None:
        if self.planned_tokens and self.train_tokens:
            return self.planned_tokens / self.train_tokens
        return None

    @property
    def tokens_per_parameter(self) -> float | None:
        return self.planned_tokens / self.parameters if self.planned_tokens else None

    def lines(self) -> list[str]:
        """The plan as Markdown lines (the Train tab's summary, `train --dry-run`)."""
        steps = self.planned_steps
        planned = (f"{steps:,} steps, {self.planned_tokens:,} tokens = **{self.tokens_per_parameter:.2f} tokens per "
                   f"parameter** (Chinchilla-optimal ≈ {CHINCHILLA_TOKENS_PER_PARAMETER})" if steps
                   else f"until the time limit ({self.train.max_minutes:g} min)")
        optimizer = "Muon + AdamW" if self.train.optimizer == "muon" else "AdamW"
        lines = [
            f"**{self.parameters:,} parameters** ({self.parameters / 1e6:.2f} M) · {self.tokens_per_step:,} tokens "
            "per step",
            f"- planned: {planned}",
            f"- estimated memory: **{format_bytes(self.memory['total'])}** (weights + gradients + {optimizer} "
            f"{format_bytes(self.memory['state'])}, activations {format_bytes(self.memory['activations'])})",
            f"- device: **{self.device}**, precision **{self.precision}** ({self.precision_reason})",
            f"- {self.vocab_note}",
        ]
        if self.train_tokens:
            lines.append(f"- dataset: {self.train_tokens:,} training tokens"
                         + (f", {self.epochs:.2f} epochs" if self.epochs else ""))
        if self.dropout_reason:
            lines.append(f"- {self.dropout_reason}")
        stages = window_stages(self.train, self.model.context_length)
        if len(stages) > 1:
            windows, start = [], 0.0
            for end, length in stages:
                windows.append(f"{self.tokens_per_step // length:,} x {length} tokens from {start:.0%} of the run")
                start = end
            lines.append(f"- short windows first: {', then '.join(windows)}")
        if self.batch_note:
            lines.append(f"- processes: {self.batch_note}")
        return lines


def make_plan(model: GPTConfig, train: TrainConfig, data_dir: str | Path | None = None,
              world_size: int = 1) -> RunPlan:
    """The plan of training `model` with `train` on a prepared data folder (None: not prepared yet, so a
    compact vocabulary's size is unknown). Raises `UserInputError` for a device/precision that cannot run."""
    from gpt.data.folder import read_meta
    from gpt.vocab import tokenizer_for

    prepared = data_dir is not None and (Path(data_dir) / "meta.json").is_file()
    train_tokens = read_meta(data_dir).get("train_tokens") if prepared else None
    if prepared:
        tokenizer = tokenizer_for(train.vocab, data_dir, train.vocab_limit)
        model = GPTConfig.from_dict({**model.to_dict(), "vocab_size": tokenizer.vocab_size})
        if tokenizer.spells_data:
            vocab_note = (f"compact vocabulary: **{tokenizer.vocab_size:,} tokens** (the {train.vocab_limit:,} most "
                          "frequent training tokens and the 256 bytes; rarer tokens are spelled with them)")
        elif tokenizer.is_compact:
            vocab_note = (f"compact vocabulary: **{tokenizer.vocab_size:,} tokens** of GPT-2's 50,257 "
                          "(those in the data)")
        else:
            vocab_note = "vocabulary: GPT-2's 50,257 tokens"
    else:
        vocab_note = ("compact vocabulary: its size (and so the parameter count) is known once the data is prepared"
                      if train.vocab == "compact" else "vocabulary: GPT-2's 50,257 tokens")
    device = resolve_device(train.device)
    choice = resolve_precision(train.precision, device, model_config=model, measure=False)
    window_stages(train, model.context_length)  # refuses a context that does not divide into short windows
    split = split_batch(train.batch_size, train.grad_accum_steps, world_size)
    tokens_per_step = split.global_windows(world_size) * model.context_length
    return RunPlan(model=model, train=train, parameters=model.num_parameters(), vocab_note=vocab_note,
                   tokens_per_step=tokens_per_step, planned_steps=planned_steps(train, model, train_tokens),
                   train_tokens=train_tokens,
                   memory=training_memory(model, train, choice.precision, flash_attention=device.type == "cuda"),
                   device=str(device), precision=choice.precision, precision_reason=choice.reason,
                   batch_note=split.note,
                   dropout_reason=decide_dropout(model, train, train_tokens, tokens_per_step).reason)


@dataclass(frozen=True)
class Progress:
    """Where a running run is, from its metrics rows."""

    phase: str  # the last phase the trainer reported ("loading data", ..., "training")
    step: int
    planned_steps: int | None
    seconds_per_step: float | None
    seconds_to_eval: float | None
    eta_seconds: float | None
    tokens_per_second: float | None

    def text(self) -> str:
        parts = [self.phase] if self.phase != "training" or not self.step else []
        parts.append(f"step {self.step:,}" + (f" of {self.planned_steps:,}" if self.planned_steps else ""))
        if self.seconds_per_step is not None:
            parts.append(f"{self.seconds_per_step:.2f} s/step")
        if self.seconds_to_eval is not None:
            parts.append(f"next evaluation in ~{format_seconds(self.seconds_to_eval)}")
        if self.eta_seconds is not None:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        if self.tokens_per_second:
            parts.append(f"{self.tokens_per_second:,.0f} tokens/s")
        return " · ".join(parts)


def training_progress(rows: list[dict], train: TrainConfig | None, planned: int | None) -> Progress:
    """Step, speed, time to the next evaluation and ETA of a run from its metrics rows."""
    phases = [row for row in rows if row.get("kind") == "phase"]
    trains = [row for row in rows if row.get("kind") == "train"]
    step = max((row.get("step", 0) for row in rows), default=0)
    phase = phases[-1]["phase"] if phases else "starting"
    seconds_per_step = to_eval = eta = speed = None
    if trains:
        last = trains[-1]
        seconds_per_step = last.get("seconds_per_step") or last["elapsed"] / max(1, last["step"])
        speed = last.get("tokens_per_second")
        remaining = []
        if planned:
            remaining.append((planned - step) * seconds_per_step)
        if train is not None and train.max_minutes:
            remaining.append(train.max_minutes * 60 - last["elapsed"])
        eta = max(0.0, min(remaining)) if remaining else None
        if train is not None:
            to_eval = (train.eval_interval - step % train.eval_interval) * seconds_per_step
    return Progress(phase=phase, step=step, planned_steps=planned, seconds_per_step=seconds_per_step,
                    seconds_to_eval=to_eval, eta_seconds=eta, tokens_per_second=speed)
