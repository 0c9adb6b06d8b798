"""Training: `TrainConfig` and the `Trainer` that turns a data folder into a run folder.

    trainer = Trainer(GPTConfig.from_preset("tiny"), TrainConfig(max_steps=500), "data/shakespeare",
                      "checkpoints/my-run")
    trainer.run()                                  # to the end (max_steps / max_minutes / epochs)
    trainer.run(max_seconds=50)                    # or in bursts: at most 50 s now, continue later
    Trainer.resume("checkpoints/my-run").run()     # continue a stopped run where it stopped

One optimizer step = `grad_accum_steps` micro-batches of `batch_size` windows of `context_length` tokens.
With `torchrun --nproc_per_node=N` (DistributedDataParallel) each process runs `grad_accum_steps / N` of
those micro-batches, so the global batch, the learning-rate schedule and even the data (micro-batch g of
step s is drawn from the same seed whichever process runs it) are the same as on one process.

The schedule is linear warmup then cosine decay to `min_lr_ratio * learning_rate` over the planned steps
(`max_steps`, or the steps that make `epochs`, whichever is fewer); a run bounded only by `max_minutes`
decays over elapsed time instead. AdamW decays only tensors of 2 or more dimensions (matrices and
embedding tables), not biases or norm gains. With `optimizer="muon"` the weight matrices inside the blocks
are trained by `torch.optim.Muon` (orthogonalised momentum; peak `muon_learning_rate`, same schedule shape)
and everything else by AdamW: on the 5-minute CPU speedrun it is the biggest single lever (README).

What a run writes is described in `gpt/checkpoint.py`; the rows of `metrics.jsonl`:
    train:  step, tokens, epoch, train_loss (mean since the last row), lr, grad_norm (before clipping),
            tokens_per_second, elapsed (s, wall clock of training, summed over bursts), mfu (GPU only)
    eval:   step, tokens, val_loss (nats/token), perplexity, bits_per_byte, eval_tokens, elapsed, best
    sample: step, prompt, text
    status: step, status (running | stopped | finished | diverged | failed), message, elapsed
Resuming on the same device with dropout 0 reproduces the losses of an uninterrupted run exactly on CPU:
the trainer state holds the fp32 weights, optimizer moments, step, counters and random states, and batches
are a pure function of (seed, step, micro-batch).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from gpt import checkpoint as ckpt
from gpt.data import get_batch, iter_eval_batches, load_split, read_meta, split_token_counts, token_id_map
from gpt.errors import UserInputError, is_int, is_number
from gpt.model import GPT, GPTConfig
from gpt.sampling import SamplingConfig, generate
from gpt.tokenizer import GPT2_BYTE_TOKENS, Tokenizer, gpt2_tokenizer

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WANDB_MODES = ("off", "offline", "online")
VOCABS = ("full", "compact")
OPTIMIZERS = ("adamw", "muon")
STATUSES = ("running", "stopped", "finished", "diverged", "failed")
DIVERGED_HINT = "lower the learning rate (e.g. halve --learning-rate), or use bf16 instead of fp16"

# Training defaults per model preset (the model shapes are in gpt/model.py PRESETS).
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": {"batch_size": 16, "learning_rate": 2e-3, "warmup_steps": 50, "max_steps": 1000, "eval_interval": 100},
    # 5 minutes on 2 CPU cores (bench/speedrun_cpu.py; each choice measured in the README's lever table):
    # compact vocabulary, Muon for the block matrices, bf16 autocast, cosine schedule over the wall clock.
    "quick-cpu": {"batch_size": 8, "learning_rate": 5e-3, "warmup_steps": 20, "max_minutes": 5.0,
                  "eval_interval": 100, "eval_batches": 8, "snapshots": 4, "vocab": "compact",
                  "optimizer": "muon", "muon_learning_rate": 0.02, "precision": "bf16"},
    "seed": {"batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 100, "max_steps": 2000, "eval_interval": 200},
    "gpt2": {"batch_size": 8, "grad_accum_steps": 8, "learning_rate": 6e-4, "warmup_steps": 700,
             "max_steps": 5000, "eval_interval": 250},
}


def default_preset(device: torch.device) -> str:
    """The preset the app offers first: the 5-minute CPU recipe on a CPU, `seed` on an accelerator."""
    return "quick-cpu" if device.type == "cpu" else "seed"


# Dense bf16/fp16 tensor-core peaks (FLOP/s) by GPU name, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12,
              "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


@dataclass
class TrainConfig:
    """How to train. Validated at construction (`UserInputError` says which field and what to change).

    At least one of `max_steps`, `max_minutes`, `epochs` bounds the run; the first one reached stops it.
    `batch_size` is per process and micro-batch; the global batch is batch_size x grad_accum_steps windows.
    """

    batch_size: int = 16
    grad_accum_steps: int = 1
    max_steps: int | None = None
    max_minutes: float | None = None
    epochs: float | None = None
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    log_interval: int = 10
    sample_prompt: str = "The"
    sample_tokens: int = 64
    sample_temperature: float = 0.8
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    snapshots: int = 4
    save_dtype: str = "float32"
    wandb: str = "off"
    wandb_project: str = "gpt-playground"
    vocab: str = "full"
    optimizer: str = "adamw"
    muon_learning_rate: float = 0.02

    def __post_init__(self) -> None:
        positive_ints = ("batch_size", "grad_accum_steps", "eval_interval", "log_interval")
        for name in positive_ints:
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise UserInputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_batches", "sample_tokens", "snapshots", "seed"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise UserInputError(f"{name} must be an integer >= 0, got {value!r}")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps <= 0):
            raise UserInputError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        for name in ("max_minutes", "epochs"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or value <= 0):
                raise UserInputError(f"{name} must be a positive number, got {value!r}")
        if self.max_steps is None and self.max_minutes is None and self.epochs is None:
            raise UserInputError("say when to stop: set max_steps, max_minutes or epochs")
        if not is_number(self.learning_rate) or self.learning_rate <= 0:
            raise UserInputError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        for name in ("min_lr_ratio", "beta1", "beta2"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= 1 or (name != "min_lr_ratio" and value == 1):
                raise UserInputError(f"{name} must be in [0, 1{']' if name == 'min_lr_ratio' else ')'}, "
                                     f"got {value!r}")
        for name in ("weight_decay", "grad_clip", "sample_temperature"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise UserInputError(f"{name} must be a number >= 0 (0 turns it off), got {value!r}")
        if self.precision not in PRECISIONS:
            raise UserInputError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.save_dtype not in ckpt.SAVE_DTYPES:
            raise UserInputError(f"unknown save_dtype {self.save_dtype!r}; choose one of: "
                                 f"{', '.join(ckpt.SAVE_DTYPES)}")
        if self.wandb not in WANDB_MODES:
            raise UserInputError(f"unknown wandb mode {self.wandb!r}; choose one of: {', '.join(WANDB_MODES)}")
        if not isinstance(self.device, str) or not self.device:
            raise UserInputError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if not isinstance(self.compile, bool):
            raise UserInputError(f"compile must be true or false, got {self.compile!r}")
        if self.vocab not in VOCABS:
            raise UserInputError(f"unknown vocab {self.vocab!r}; choose one of: {', '.join(VOCABS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserInputError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not is_number(self.muon_learning_rate) or self.muon_learning_rate <= 0:
            raise UserInputError(f"muon_learning_rate must be a positive number, got {self.muon_learning_rate!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise UserInputError(f"unknown training option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> TrainConfig:
        """The preset's training defaults with `overrides`; giving any stop condition replaces the preset's."""
        if name not in TRAIN_PRESETS:
            raise UserInputError(f"unknown preset {name!r}; choose one of: {', '.join(TRAIN_PRESETS)}")
        base = dict(TRAIN_PRESETS[name])
        stops = ("max_steps", "max_minutes", "epochs")
        if any(overrides.get(key) is not None for key in stops):
            for key in stops:
                base.pop(key, None)
        return cls.from_dict({**base, **overrides})


def compact_tokenizer(data_dir: str | os.PathLike) -> Tokenizer:
    """The compact vocabulary of `vocab="compact"`: every GPT-2 id that occurs in the data folder's token
    files, train or validation (as character-level recipes build their alphabet from the whole text).

    Only the set of ids comes from the validation split, never its text; a validation-only token keeps its
    own row (untrained: it gets almost no probability), so validation is scored token by token exactly as
    with the full vocabulary instead of folding unseen tokens into a shared id. The 256 single-byte tokens
    are always kept, so any later prompt can be spelled with them (see `Tokenizer.from_gpt2`)."""
    seen = (split_token_counts(data_dir, "train") + split_token_counts(data_dir, "val")) > 0
    seen[:GPT2_BYTE_TOKENS] = True
    return Tokenizer(np.flatnonzero(seen).tolist())


# -- device, precision, distributed ------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserInputError(f"there is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("device mps was asked for but Apple's Metal backend is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on GPUs that support it, fp16 (with a gradient scaler) on other GPUs, fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserInputError(f"fp16 training needs a CUDA GPU (this run is on {device.type}); use bf16 or fp32")
    return precision


def reuse_freed_cpu_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system (process-wide; for a
    training process). By default every tensor over 32 MB (the logits of a step, their gradient) is a fresh
    mmap whose pages the kernel zeroes on first touch and unmaps on free, every step: on 2 CPU cores that is
    15-20% of a `seed` step (bench/train_speed.py). Returns False where glibc's mallopt is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        # mallopt parameters: M_MMAP_MAX = -4 (0: never mmap), M_TRIM_THRESHOLD = -1 (never give memory back)
        return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2**30))
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Rank and world size as torchrun sets them (RANK, LOCAL_RANK, WORLD_SIZE); one process otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense bf16/fp16 peak in FLOP/s when known (GPUs only), for MFU."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


# -- optimizer and schedule ------------------------------------------------------------------------------
def configure_optimizers(model: torch.nn.Module, config: TrainConfig,
                         device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW (fused kernels on CUDA and CPU) with weight decay on tensors of 2+ dimensions only; with
    `optimizer="muon"`, Muon for the blocks' weight matrices and AdamW for the rest (embeddings, norms, biases).

    Every parameter group has an `lr_scale`: its peak learning rate over `learning_rate`, so one schedule
    drives all groups."""
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
        optimizers.append(torch.optim.Muon([{"params": matrices, "lr_scale": scale}],
                                           lr=config.muon_learning_rate, weight_decay=config.weight_decay))
    return optimizers


def cosine_lr(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from the peak down to min_lr_ratio x peak.

    `progress` in [0, 1] is how far the decay has gone (by steps or by time, see the module docstring)."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    low = peak * config.min_lr_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - low)


# -- evaluation ---------------------------------------------------------------------------------------
def planned_steps(train: TrainConfig, model: GPTConfig, train_tokens: int | None) -> int | None:
    """Optimizer steps a run will take when bounded by steps or epochs (None when only by minutes)."""
    tokens_per_step = train.batch_size * train.grad_accum_steps * model.context_length
    candidates = []
    if train.max_steps is not None:
        candidates.append(train.max_steps)
    if train.epochs is not None and train_tokens:
        candidates.append(max(1, math.ceil(train.epochs * train_tokens / tokens_per_step)))
    return min(candidates) if candidates else None


def bits_per_byte(loss: float, meta: dict, split: str = "val") -> float | None:
    """loss (nats/token) x tokens / (bytes x ln 2) with the split's token and byte counts from meta.json."""
    tokens, size = meta.get(f"{split}_tokens"), meta.get(f"{split}_bytes")
    if not tokens or not size:
        return None
    return loss * tokens / (size * math.log(2))


@torch.no_grad()
def evaluate(
    model: GPT,
    tokens: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    max_batches: int = 0,
    id_map: np.ndarray | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, int]:
    """Mean cross-entropy (nats/token) and the number of predicted tokens over non-overlapping windows of
    the model's context: the whole split, or its first `max_batches` batches. Deterministic."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = iter_eval_batches(tokens, model.config.context_length, batch_size, device=device, id_map=id_map,
                                max_windows=max_batches * batch_size if max_batches else None)
    for x, y in batches:
        with autocast():
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                                 reduction="sum").item()
        count += int((y != -1).sum())
    model.train(was_training)
    if count == 0:
        raise UserInputError(f"the split has too few tokens ({len(tokens)}) for one window of "
                             f"{model.config.context_length}")
    return total / count, count


def evaluate_run(run: str | Path, data_dir: str | Path, *, batch_size: int = 8, device: str = "auto",
                 checkpoint: str = "last", split: str = "val") -> dict:
    """Deterministic loss, perplexity and bits per byte of a run's model over a whole split (the `eval` CLI)."""
    loaded = ckpt.load_run(run, checkpoint=checkpoint, device=resolve_device(device))
    meta = read_meta(data_dir)
    tokens = load_split(data_dir, split)
    dev = loaded.model.token_embedding.weight.device
    loss, count = evaluate(loaded.model, tokens, batch_size=batch_size, device=dev,
                           id_map=token_id_map(loaded.tokenizer))
    return {"val_loss": loss, "perplexity": math.exp(loss), "bits_per_byte": bits_per_byte(loss, meta, split),
            "tokens": count, "split": split, "step": loaded.step, "checkpoint": loaded.checkpoint}


# -- W&B -------------------------------------------------------------------------------------------
class WandbLogger:
    """Mirrors metrics rows to Weights & Biases; samples go into one growing table."""

    def __init__(self, mode: str, project: str, name: str, config: dict, run_dir: Path) -> None:
        import wandb

        self.wandb = wandb
        self.samples: list[list] = []
        try:
            self.run = wandb.init(project=project, name=name, config=config, mode=mode, dir=os.environ.get(
                "WANDB_DIR", str(run_dir)), reinit="finish_previous")
        except Exception as error:  # wandb raises several types (UsageError, CommError, AuthenticationError)
            if mode == "online":
                raise UserInputError(
                    "W&B online logging needs an account: run `wandb login` (or set WANDB_API_KEY) first, "
                    f"or use --wandb offline / off ({type(error).__name__})"
                ) from None
            raise UserInputError(f"W&B could not start in {mode} mode: {type(error).__name__}: {error}") from None

    def log(self, row: dict) -> None:
        kind, step = row.get("kind"), row.get("step", 0)
        if kind == "sample":
            self.samples.append([step, row["prompt"], row["text"]])
            self.run.log({"samples": self.wandb.Table(columns=["step", "prompt", "text"], data=self.samples)},
                         step=step)
        elif kind in ("train", "eval"):
            values = {f"{kind}/{k}": v for k, v in row.items()
                      if k not in ("kind", "step") and isinstance(v, int | float) and not isinstance(v, bool)}
            self.run.log(values, step=step)
        elif kind == "status":
            self.run.summary["status"] = row["status"]

    def finish(self) -> None:
        self.run.finish()


# -- the trainer ------------------------------------------------------------------------------------
@dataclass
class _Window:
    """Running sums between two train rows."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


class Trainer:
    """Trains one run. Build it (all checks happen here, before any compute), then call `run()`."""

    def __init__(
        self,
        model_config: GPTConfig,
        train_config: TrainConfig,
        data_dir: str | Path,
        out_dir: str | Path,
        *,
        tokenizer: Tokenizer | None = None,
        command: str | None = None,
        on_row: Callable[[dict], None] | None = None,
        _state: dict | None = None,
    ) -> None:
        self.config = train_config
        self.data_dir = Path(data_dir)
        self.run_dir = Path(out_dir)
        self.on_row = on_row
        self.dist = dist_info_from_env()
        self._stop_requested = False
        self.status = "running"
        self._started = False
        self._resumed = _state is not None
        self.wandb: WandbLogger | None = None

        # Checks before any compute.
        if _state is None and (self.run_dir / ckpt.CONFIG_FILE).exists():
            raise UserInputError(f"{self.run_dir} already holds a run: resume it with --resume {self.run_dir}, "
                                 "or choose another --out")
        if train_config.grad_accum_steps % self.dist.world_size:
            raise UserInputError(
                f"grad_accum_steps ({train_config.grad_accum_steps}) must be a multiple of the number of processes "
                f"({self.dist.world_size}) so the global batch stays batch_size x grad_accum_steps"
            )
        self.local_accum = train_config.grad_accum_steps // self.dist.world_size
        self.meta = read_meta(self.data_dir)
        self.train_tokens = load_split(self.data_dir, "train")
        self.val_tokens = load_split(self.data_dir, "val")
        if tokenizer is None and train_config.vocab == "compact":
            tokenizer = compact_tokenizer(self.data_dir)
        self.tokenizer = tokenizer or gpt2_tokenizer()
        if model_config.vocab_size != self.tokenizer.vocab_size:
            model_config = GPTConfig.from_dict({**model_config.to_dict(), "vocab_size": self.tokenizer.vocab_size})
        self.model_config = model_config
        self._check_data_fits()
        self.device = self._pick_device()
        self.precision = resolve_precision(train_config.precision, self.device)
        self.tokens_per_step = train_config.batch_size * train_config.grad_accum_steps * model_config.context_length
        self.planned_steps = self._planned_steps()
        if self.dist.is_main and train_config.wandb != "off":
            self.wandb = WandbLogger(train_config.wandb, train_config.wandb_project, self.run_dir.name,
                                     self._config_dict(command), self.run_dir)

        # Model, optimizer and state.
        torch.manual_seed(train_config.seed)
        self.model = GPT(model_config)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.best_val_loss, self.best_step = math.inf, -1
        self.next_snapshot = 0
        if _state is not None:
            self.model.load_state_dict(_state["model"])
        self.model.to(self.device)
        self.optimizers = configure_optimizers(self.model, train_config, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        if _state is not None:
            self._load_state(_state)
        self.id_map = token_id_map(self.tokenizer)
        self.peak_flops = peak_flops(self.device, self.precision)
        self.generator = torch.Generator(device="cpu")
        self.train_model: torch.nn.Module = self.model
        if train_config.compile:
            self.train_model = torch.compile(self.model)
        if self.dist.enabled:
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)
        self.model.train()
        self._window = _Window()
        self._last_grad_norm = 0.0
        self._last_eval_step = -1
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if _state is None:
                ckpt.atomic_write_json(self.run_dir / ckpt.CONFIG_FILE, self._config_dict(command))
            else:  # record the training options the run continues with (e.g. a raised max_steps)
                saved = ckpt.read_config(self.run_dir)
                saved["train"] = train_config.to_dict()
                ckpt.atomic_write_json(self.run_dir / ckpt.CONFIG_FILE, saved)
            self._ensure_best_file()

    # -- construction helpers -------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, *, on_row: Callable[[dict], None] | None = None,
               data_dir: str | Path | None = None, **train_overrides: object) -> Trainer:
        """Continue a run from its trainer state; `train_overrides` may change e.g. max_steps to train longer."""
        run_dir = ckpt.resolve_run_dir(run_dir)
        config = ckpt.read_config(run_dir)
        state = ckpt.load_trainer_state(run_dir)
        train_config = TrainConfig.from_dict({**config["train"], **train_overrides})
        return cls(GPTConfig.from_dict(config["model"]), train_config, data_dir or config["data"]["dir"], run_dir,
                   tokenizer=Tokenizer.from_dict(config.get("tokenizer")), command=config.get("command"),
                   on_row=on_row, _state=state)

    def _pick_device(self) -> torch.device:
        device = resolve_device(self.config.device)
        if self.dist.enabled and device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        return device

    def _check_data_fits(self) -> None:
        context, batch = self.model_config.context_length, self.config.batch_size
        n_train, n_val = len(self.train_tokens), len(self.val_tokens)
        if n_train < context + 1:
            raise UserInputError(f"the training split has {n_train} tokens, fewer than one window of context_length "
                                 f"{context} + 1; lower --context-length or add data")
        if n_val < context + 1:
            raise UserInputError(f"the validation split has {n_val} tokens, fewer than one window of context_length "
                                 f"{context} + 1; lower --context-length or use a larger validation fraction")
        if batch * context > n_train:
            raise UserInputError(f"one batch ({batch} x {context} = {batch * context} tokens) is larger than the "
                                 f"training split ({n_train} tokens); lower --batch-size or --context-length")

    def _planned_steps(self) -> int | None:
        return planned_steps(self.config, self.model_config, len(self.train_tokens))

    def _config_dict(self, command: str | None) -> dict:
        return {"model": self.model_config.to_dict(), "train": self.config.to_dict(),
                "data": {"dir": str(self.data_dir), "meta": self.meta}, "tokenizer": self.tokenizer.to_dict(),
                "command": command}

    def _load_state(self, state: dict) -> None:
        saved = state["optimizer"]
        for optimizer, optimizer_state in zip(self.optimizers, saved if isinstance(saved, list) else [saved],
                                              strict=True):
            optimizer.load_state_dict(optimizer_state)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens, self.elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed"])
        self.best_val_loss, self.best_step = float(state["best_val_loss"]), int(state["best_step"])
        self.next_snapshot = int(state["next_snapshot"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def _ensure_best_file(self) -> None:
        """A finished run whose best was its last step keeps no best.safetensors; bring it back before
        training on overwrites model.safetensors."""
        best, last = self.run_dir / ckpt.BEST_FILE, self.run_dir / ckpt.LAST_FILE
        if self.best_step >= 0 and not best.exists() and last.exists():
            ckpt.atomic_write(best, lambda tmp: shutil.copyfile(last, tmp))

    # -- control --------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current step, save, and mark the run stopped (safe to call from a signal handler)."""
        self._stop_requested = True

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """While inside, SIGINT and SIGTERM request a graceful stop (a second SIGINT interrupts at once).
        Outside the main thread this does nothing (call `request_stop` instead)."""
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return

        def handler(signum: int, frame: object) -> None:
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.request_stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def close(self) -> None:
        """Release the distributed wrapper, then the process group, in that order. Freed the other way round,
        the DDP reducer drops the last reference to the gloo group, whose destructor joins a worker thread
        that waits for the GIL the freeing thread holds: the rank never exits."""
        if not self.dist.enabled:
            return
        self.train_model = self.model
        gc.collect()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, max_seconds: float | None = None, max_steps: int | None = None) -> str:
        """Train until the run ends, or for at most `max_seconds` / `max_steps` in this call (a burst).

        Returns the status: "running" when a burst ended with training left, else "finished", "stopped" or
        "diverged". A stop request or signal also ends a burst, with "stopped"."""
        if self.status != "running":
            return self.status
        burst_start, burst_steps = time.perf_counter(), 0
        clock = time.perf_counter()
        try:
            if not self._started:
                self._start()
            while True:
                now = time.perf_counter()
                self.elapsed += now - clock
                clock = now
                requested, time_up = self._sync_flags()
                if self._finished_by_count() or time_up:
                    return self._end("finished", self._finish_message())
                if requested:
                    return self._end("stopped", "stop requested")
                if (max_steps is not None and burst_steps >= max_steps) or (
                    max_seconds is not None and now - burst_start >= max_seconds
                ):
                    return "running"
                loss = self._train_step()
                step_seconds = time.perf_counter() - clock
                if not math.isfinite(loss):
                    return self._diverge(loss)
                self.step += 1
                burst_steps += 1
                self.tokens += self.tokens_per_step
                self._window.loss += loss
                self._window.steps += 1
                self._window.tokens += self.tokens_per_step
                self._window.seconds += step_seconds
                if self.step % self.config.log_interval == 0:
                    self.elapsed += time.perf_counter() - clock
                    clock = time.perf_counter()
                    self._log_train()
                if self.step % self.config.eval_interval == 0:
                    self.elapsed += time.perf_counter() - clock
                    self._evaluate_and_save()
                    clock = time.perf_counter()  # evaluation and saving are not training time
                self._maybe_snapshot()
        except torch.OutOfMemoryError:
            message = (f"out of GPU memory at batch_size {self.config.batch_size} x context_length "
                       f"{self.model_config.context_length}: lower --batch-size (raise --grad-accum-steps to keep "
                       "the global batch) or --context-length")
            self._write_status("failed", message)
            self._close()
            raise UserInputError(message) from None

    def _start(self) -> None:
        """First call: a status row; for a new run also the step-0 evaluation, sample and snapshot."""
        self._started = True
        params = self.model.num_parameters()
        what = f"resumed at step {self.step}, " if self._resumed else ""
        self._write_status("running", f"{what}training {params:,} parameters on {self.device} ({self.precision}), "
                                      f"{self.dist.world_size} process(es), {self.tokens_per_step:,} tokens/step")
        if not self._resumed:
            self._evaluate_and_save()
            self._maybe_snapshot()

    def _micro_batch(self, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `micro` of this process at the current step, a pure function of (seed, step, g)
        where g is its index among all processes' micro-batches."""
        global_index = self.dist.rank * self.local_accum + micro
        seed = (self.config.seed * 1_000_003 + self.step) * 1_009 + global_index
        self.generator.manual_seed(seed % (2**63))
        return get_batch(self.train_tokens, self.config.batch_size, self.model_config.context_length,
                         self.generator, device=self.device, id_map=self.id_map)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _train_step(self) -> float:
        """One optimizer step; returns the loss averaged over micro-batches and processes (NaN/inf as is).
        A non-finite loss leaves the weights untouched."""
        lr = cosine_lr(self.config, self.step, self._progress(for_schedule=True))
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
        total = torch.zeros((), device=self.device)
        for micro in range(self.local_accum):
            x, y = self._micro_batch(micro)
            sync = micro == self.local_accum - 1 or not self.dist.enabled
            context = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with context:
                with self._autocast():
                    _, loss = self.train_model(x, y)
                loss = loss / self.local_accum
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        if self.dist.enabled:
            dist.all_reduce(total)
            total /= self.dist.world_size
        loss_value = total.item()
        if math.isfinite(loss_value):
            for optimizer in self.optimizers:
                self.scaler.unscale_(optimizer)
            clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
            self._last_grad_norm = norm
            if not math.isfinite(norm) and self.precision != "fp16":
                loss_value = math.nan  # fp32/bf16 gradients should never overflow: treat as divergence
            else:
                for optimizer in self.optimizers:
                    self.scaler.step(optimizer)
                self.scaler.update()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return loss_value

    def _progress(self, for_schedule: bool = False) -> float:
        """Fraction of the run done (0..1): by planned steps when known, else by time."""
        fractions = []
        if self.planned_steps is not None:
            fractions.append(self.step / self.planned_steps)
        if self.config.max_minutes is not None and (not for_schedule or self.planned_steps is None):
            fractions.append(self.elapsed / (60 * self.config.max_minutes))
        return max(fractions)

    def _finished_by_count(self) -> bool:
        return self.planned_steps is not None and self.step >= self.planned_steps

    def _finish_message(self) -> str:
        if self._finished_by_count():
            if self.config.max_steps is not None and self.step >= self.config.max_steps:
                return f"reached max_steps {self.config.max_steps}"
            return f"trained {self.config.epochs} epoch(s) ({self.tokens:,} tokens)"
        return f"reached max_minutes {self.config.max_minutes}"

    def _sync_flags(self) -> tuple[bool, bool]:
        """(stop requested, time is up), agreed by all processes: rank 0's clock is everyone's `elapsed`,
        so time-based schedules and stops stay identical across processes."""
        if self.dist.enabled:
            flags = torch.tensor([float(self._stop_requested), self.elapsed if self.dist.is_main else 0.0],
                                 dtype=torch.float64, device=self.device)
            dist.all_reduce(flags)
            self._stop_requested, self.elapsed = bool(flags[0] > 0), float(flags[1])
        time_up = self.config.max_minutes is not None and self.elapsed >= 60 * self.config.max_minutes
        return self._stop_requested, time_up

    # -- rows, evaluation, checkpoints --------------------------------------------------------------------
    def _emit(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        ckpt.append_metrics(self.run_dir, row)
        if self.wandb is not None:
            self.wandb.log(row)
        if self.on_row is not None:
            self.on_row(row)

    def _write_status(self, status: str, message: str) -> None:
        self.status = status
        self._emit({"kind": "status", "step": self.step, "status": status, "message": message,
                    "elapsed": round(self.elapsed, 3), "time": time.time()})

    def _log_train(self) -> None:
        window = self._window
        if window.steps == 0:
            return
        tokens_per_second = window.tokens / max(window.seconds, 1e-9)
        row = {"kind": "train", "step": self.step, "tokens": self.tokens,
               "epoch": self.tokens / len(self.train_tokens), "train_loss": window.loss / window.steps,
               "lr": self.optimizers[0].param_groups[0]["lr"], "grad_norm": self._last_grad_norm,
               "tokens_per_second": tokens_per_second, "elapsed": round(self.elapsed, 3), "time": time.time()}
        if self.peak_flops:
            row["mfu"] = self.model_config.flops_per_token() * tokens_per_second / self.peak_flops
        self._window = _Window()
        self._emit(row)

    def _evaluate_and_save(self) -> None:
        """Validation loss, a sample, and the last (and maybe best) checkpoint. Rank 0 only."""
        if self._last_eval_step == self.step:
            return
        self._last_eval_step = self.step
        if not self.dist.is_main:
            return
        loss, count = evaluate(self.model, self.val_tokens, batch_size=self.config.batch_size, device=self.device,
                               max_batches=self.config.eval_batches, id_map=self.id_map, autocast=self._autocast)
        improved = loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = loss, self.step
        self._emit({"kind": "eval", "step": self.step, "tokens": self.tokens, "val_loss": loss,
                    "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": bits_per_byte(loss, self.meta),
                    "eval_tokens": count, "elapsed": round(self.elapsed, 3), "best": improved})
        self._sample()
        self._save(best=improved)

    def _sample(self) -> None:
        if self.config.sample_tokens == 0:
            return
        sampling = SamplingConfig(temperature=self.config.sample_temperature, max_new_tokens=self.config.sample_tokens,
                                  seed=self.config.seed, stop_at_eot=False)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            text = generate(self.model, self.tokenizer, self.config.sample_prompt, sampling)
        self.model.train()
        self._emit({"kind": "sample", "step": self.step, "prompt": self.config.sample_prompt, "text": text})

    def state_dict(self) -> dict:
        """The trainer state (weights-only loadable): fp32 weights, optimizer, counters, random states."""
        state = {"version": 1, "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                 "optimizer": [optimizer.state_dict() for optimizer in self.optimizers],
                 "scaler": self.scaler.state_dict(),
                 "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                 "best_val_loss": self.best_val_loss, "best_step": self.best_step,
                 "next_snapshot": self.next_snapshot, "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save(self, best: bool = False) -> None:
        """Write model.safetensors (+ best.safetensors) and trainer_state.pt, each atomically. Rank 0 only."""
        if not self.dist.is_main:
            return
        dtype = self.config.save_dtype
        ckpt.save_weights(self.model, self.run_dir / ckpt.LAST_FILE, step=self.step, dtype=dtype)
        if best:
            ckpt.save_weights(self.model, self.run_dir / ckpt.BEST_FILE, step=self.step, dtype=dtype)
        ckpt.save_trainer_state(self.run_dir, self.state_dict())

    def save(self) -> None:
        """Save a checkpoint now (e.g. at the end of a burst)."""
        self._save()

    def _maybe_snapshot(self) -> None:
        """Snapshot k of `snapshots` when the run is k/snapshots of the way through (step 0 is the first)."""
        n = self.config.snapshots
        while self.next_snapshot < n and self._progress() >= self.next_snapshot / n:
            if self.dist.is_main:
                ckpt.save_weights(self.model, ckpt.snapshot_path(self.run_dir, self.step), step=self.step,
                                  dtype=self.config.save_dtype)
            self.next_snapshot += 1

    def _end(self, status: str, message: str) -> str:
        """Final evaluation and checkpoint, model card, status row."""
        self._log_train()
        self._evaluate_and_save()
        if self.dist.is_main and status == "finished" and self.best_step == self.step:
            (self.run_dir / ckpt.BEST_FILE).unlink(missing_ok=True)
        self._write_status(status, message)
        self._write_card()
        self._close()
        return status

    def _diverge(self, loss: float) -> str:
        last_saved = self._last_eval_step
        message = (f"loss became {loss} at step {self.step + 1}; the last good checkpoint (step {last_saved}) is "
                   f"kept. Hint: {DIVERGED_HINT}")
        self._write_status("diverged", message)
        self._write_card()
        self._close()
        return "diverged"

    def _write_card(self) -> None:
        if self.dist.is_main:
            config = ckpt.read_config(self.run_dir)
            ckpt.write_model_card(self.run_dir, config, status=ckpt.run_status(self.run_dir))

    def _close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

