"""The machine a run trains on: device, precision, threads, allocator, compile, processes, peak FLOPs.

Presets never name hardware (they say `precision: auto`); `resolve_runtime` decides here, on the machine
at hand, and says why, and the trainer writes the decision into the run's `config.json` and status line:

    runtime = resolve_runtime(train_config)   # Runtime(device=cpu, precision="fp32",
                                              #   precision_reason="fp32: this CPU has no native bf16 (AVX2)")

Why it matters: CPUs of the same kind of machine differ. With AVX-512 BF16 (or AMX, or an ARM CPU with
BF16) bf16 matmuls can be as fast as fp32 or faster; with AVX2 only they run ~30-40x slower (measured:
50 GFLOP/s fp32 against 1.6 bf16). On a CPU `auto` picks bf16 only where the CPU has native bf16 *and* a
short calibration (training steps of the run's own model shape in each, alternating pair by pair, cached per
machine and shape in `cache_dir()`) measured it faster: the ratio depends on the shape (on an AMX CPU a 2 x 256 model at
vocabulary 4,096 measured 0.96x, `seed` at GPT-2's 50,257 tokens 1.9x). Everything else the recipe
runs in low precision follows the same decision (Muon's orthogonalisation, `gpt/optim.py`).
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` makes an
AVX-512 machine behave like an AVX2 one: `torch.backends.cpu.get_cpu_capability()` then says AVX2 and the
decision follows.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from gpt.errors import UserInputError

if TYPE_CHECKING:
    from gpt.config import TrainConfig
    from gpt.model import GPTConfig

T = TypeVar("T")

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by GPU name, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12,
              "A10": 125e12, "RTX PRO 6000": 503e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12,
              "T4": 65e12}
# bf16 must beat fp32 by this factor in the calibration to be chosen (noise on a loaded machine is ~10%).
BF16_MIN_SPEEDUP = 1.15
CACHE_ENV = "GPT_PLAYGROUND_CACHE"


# -- device ---------------------------------------------------------------------------------------
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
        raise UserInputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps", field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device cuda was asked for but no CUDA GPU is available; use --device cpu",
                             field="device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserInputError(f"there is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                             field="device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("device mps was asked for but Apple's Metal backend is not available", field="device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps", field="device")
    return device


# -- CPU bf16 -------------------------------------------------------------------------------------
def cpu_capability() -> str:
    """What PyTorch's CPU kernels use here: "AVX512", "AVX2", "DEFAULT", ... (honours ATEN_CPU_CAPABILITY)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_flags() -> set[str]:
    """The CPU feature flags /proc/cpuinfo lists (x86 "flags", ARM "Features"); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(capability: str | None = None, flags: set[str] | None = None,
                        machine: str | None = None) -> tuple[bool, str]:
    """Whether the CPU has bf16 instructions PyTorch's kernels can use, and the evidence in words."""
    capability = capability or cpu_capability()
    flags = cpu_flags() if flags is None else flags
    machine = machine or platform.machine()
    if machine in ("aarch64", "arm64"):
        if "bf16" in flags or machine == "arm64":  # Apple M2+ and ARMv8.6 report bf16; Linux lists it in Features
            return True, "this ARM CPU has bf16 instructions"
        return False, "this ARM CPU has no bf16 instructions"
    native = {"avx512_bf16", "amx_bf16"} & flags
    if not native:
        return False, f"this CPU has no native bf16 ({capability})"
    if not capability.startswith("AVX512"):
        return False, (f"PyTorch's CPU kernels run at {capability} here (ATEN_CPU_CAPABILITY?), which has no "
                       "bf16 instructions")
    return True, f"this CPU has {', '.join(sorted(native))} ({capability})"


def cache_dir() -> Path:
    """Where per-machine measurements are kept (`$GPT_PLAYGROUND_CACHE`, else ~/.cache/gpt-playground)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gpt-playground")


def _machine_key() -> str:
    flags = " ".join(sorted(cpu_flags()))
    parts = [platform.machine(), cpu_capability(), torch.__version__, str(torch.get_num_threads()),
             os.environ.get("ONEDNN_MAX_CPU_ISA", ""), os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""), flags]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def matmul_bf16_speedup(size: tuple[int, int, int] = (512, 384, 384)) -> float:
    """fp32 time / bf16 time of one matmul (a fraction of a second even where bf16 is emulated)."""
    m, k, n = size
    a, b = torch.randn(m, k), torch.randn(k, n)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        start = time.perf_counter()
        x @ y
        times[dtype] = time.perf_counter() - start
    return times[torch.float32] / max(times[torch.bfloat16], 1e-9)


# The model the calibration trains when no run's shape is given (2 x 256 wide, vocabulary 4,096).
CALIBRATION_MODEL = {"vocab_size": 4096, "context_length": 128, "n_layer": 2, "n_head": 4, "n_embd": 256}
# The calibration's batch: 8 windows of at most this many tokens (a step of GPT-2 small stays ~seconds).
CALIBRATION_MAX_CONTEXT = 256


@contextlib.contextmanager
def _step_timer(model_config: GPTConfig, batch_size: int, device: torch.device, context: int | None = None,
                train_config: TrainConfig | None = None, accum_steps: int = 1
                ) -> Iterator[Callable[[torch.dtype | None], float]]:
    """A fresh `model_config` model in training mode (dropout as configured) on `device` and a batch of
    `batch_size` windows of `context` tokens (default: the full context); yields a function that times
    `accum_steps` forward + backward passes of it, in seconds, under autocast to the dtype given (None: fp32),
    and with `train_config` then the gradient clipping and the step of that config's optimizers (Muon
    orthogonalising as a run in that dtype does: `orthogonalisation_dtype`). Weights, data and dropout draws
    are seeded, so the caller's random state is left as it was."""
    from gpt.model import GPT
    from gpt.optim import configure_optimizers

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = GPT(model_config).to(device).train()
        context = min(context or model_config.context_length, model_config.context_length)
        x = torch.randint(0, model_config.vocab_size, (batch_size, context), device=device)
        optimizers: dict[torch.dtype | None, list[torch.optim.Optimizer]] = {}

        def timed_step(autocast_dtype: torch.dtype | None) -> float:
            if train_config is not None and autocast_dtype not in optimizers:
                optimizers[autocast_dtype] = configure_optimizers(
                    model, train_config, device, ortho_dtype=orthogonalisation_dtype(device, autocast_dtype))
            start = time.perf_counter()
            for _ in range(accum_steps):
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    _, loss = model(x, x, return_logits=False)
                loss.backward()
            if train_config is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip or math.inf)
                for optimizer in optimizers[autocast_dtype]:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        yield timed_step


def time_training_step(model_config: GPTConfig, batch_size: int, device: torch.device,
                       autocast_dtype: torch.dtype | None = None, context: int | None = None, repeat: int = 5,
                       train_config: TrainConfig | None = None, accum_steps: int = 1) -> float:
    """Median seconds of `accum_steps` forward + backward passes of a fresh `model_config` model (see
    `_step_timer`) at `batch_size` windows of `context` tokens, under autocast to `autocast_dtype` when given,
    and with `train_config` of the step of its optimizers too: one optimizer step (Muon's is ~20% of
    quick-cpu's step on 2 CPU cores, which a run's dropout decision must not leave out)."""
    with _step_timer(model_config, batch_size, device, context, train_config, accum_steps) as timed_step:
        for _ in range(2):  # warm up (allocations, oneDNN primitive cache, CUDA kernels): the first is slowest
            timed_step(autocast_dtype)
        return statistics.median(timed_step(autocast_dtype) for _ in range(repeat))


def _paired_step_times(model_config: GPTConfig, pairs: int = 5) -> list[tuple[float, float]]:
    """The calibration's measurement: (fp32 seconds, bf16 seconds) of `pairs` pairs of training steps of
    `model_config`'s model with dropout off, batch 8 x at most `CALIBRATION_MAX_CONTEXT` tokens, on the CPU.

    The two precisions alternate step by step (and which goes first), as `bench/train_speed.py` does: a
    change in the machine's load (a neighbour, a busy moment) then slows both steps of a pair alike instead
    of one precision's whole block. (Measured in blocks, a fresh machine once cached 0.95x for the quick-cpu
    shape, which measured 1.8-2.3x in bf16 every time after.)"""
    from gpt.model import GPTConfig

    timed = GPTConfig.from_dict(_timed_shape(model_config))
    with _step_timer(timed, 8, torch.device("cpu"), CALIBRATION_MAX_CONTEXT) as timed_step:
        for _ in range(2):  # warm up both paths
            timed_step(None)
            timed_step(torch.bfloat16)
        times = []
        for pair in range(pairs):
            if pair % 2:
                bf16 = timed_step(torch.bfloat16)
                fp32 = timed_step(None)
            else:
                fp32 = timed_step(None)
                bf16 = timed_step(torch.bfloat16)
            times.append((fp32, bf16))
    return times


def _timed_shape(model_config: GPTConfig) -> dict:
    """What the calibration trains and what its cache entry is keyed on: the config with dropout off (so
    shapes that differ only in dropout share one entry)."""
    return {**model_config.to_dict(), "dropout": 0.0, "attention_dropout": True}


def _calibration_key(model_config: GPTConfig | None) -> str:
    """The cache entry: this machine, and the shape measured (none: the small default model)."""
    if model_config is None:
        return _machine_key()
    shape = json.dumps(_timed_shape(model_config), sort_keys=True)
    return f"{_machine_key()}-{hashlib.sha256(shape.encode()).hexdigest()[:12]}"


def _calibration_entries() -> dict:
    """The cached calibrations (key -> {"speedup", "fp32_s", "bf16_s", "pairs"}); empty when unreadable."""
    try:
        cached = json.loads((cache_dir() / "cpu-bf16.json").read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def cached_bf16_speedup(model_config: GPTConfig | None = None) -> float | None:
    """The calibration's result for this machine (and shape) when it was measured before, else None.

    Entries written before the precisions alternated (without "pairs") are measured again."""
    entry = _calibration_entries().get(_calibration_key(model_config))
    return float(entry["speedup"]) if isinstance(entry, dict) and {"speedup", "pairs"} <= entry.keys() else None


def cpu_bf16_speedup(use_cache: bool = True, model_config: GPTConfig | None = None) -> float:
    """fp32 time / bf16 time of a training step on this CPU (>1: bf16 is faster), of the run's own model
    when `model_config` is given (the ratio depends on the shape: on an AMX CPU 0.96x for 2 x 256 wide at
    vocabulary 4,096, 1.9x for 6 x 384 at GPT-2's 50,257), measured once per machine and shape and cached."""
    cached = cached_bf16_speedup(model_config)
    if use_cache and cached is not None:
        return cached
    from gpt.model import GPTConfig

    times = _paired_step_times(model_config or GPTConfig(**CALIBRATION_MODEL))
    speedup = statistics.median(fp32 / max(bf16, 1e-9) for fp32, bf16 in times)
    fp32, bf16 = (statistics.median(column) for column in zip(*times, strict=True))
    # one entry per key, so processes with other thread counts or shapes never evict each other's
    entries, path = _calibration_entries(), cache_dir() / "cpu-bf16.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries[_calibration_key(model_config)] = {"speedup": speedup, "fp32_s": fp32, "bf16_s": bf16,
                                                   "pairs": len(times)}
        path.write_text(json.dumps(entries))
    except OSError:
        pass  # a read-only home: measure again next time
    return speedup


def _calibrated_model(model_config: GPTConfig | None, measure: bool) -> GPTConfig | None:
    """The model whose calibration a decision reads: `model_config`, except that without `measure` (a plan
    shown while a person edits fields) a shape never measured falls back to the default model (None)."""
    if model_config is not None and not measure and cached_bf16_speedup(model_config) is None:
        return None
    return model_config


def cpu_bf16_decision(use_cache: bool = True, model_config: GPTConfig | None = None,
                      measure: bool = True) -> tuple[bool, str]:
    """(bf16 is fast on this CPU, why): native bf16 and a calibration (of `model_config`'s model, when
    given) that measured it faster than fp32. `measure=False` (a plan shown while a person edits fields)
    never runs this model's calibration: without a cached one it reads the small default model's."""
    native, evidence = cpu_has_native_bf16()
    if not native:
        return False, evidence
    calibrated = _calibrated_model(model_config, measure)
    later = " (this model's own calibration runs when training starts)" if calibrated is not model_config else ""
    speedup = cpu_bf16_speedup(use_cache, calibrated)
    step = "a bf16 training step" + (" of this model" if calibrated is not None else "")
    if speedup < BF16_MIN_SPEEDUP:
        return False, f"{evidence}, but {step} measured {speedup:.2f}x the speed of fp32 here{later}"
    return True, f"{evidence}; {step} measured {speedup:.2f}x faster than fp32{later}"


# -- precision ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16 | fp16
    reason: str
    warning: str | None = None


def resolve_precision(requested: str, device: torch.device, use_cache: bool = True,
                      model_config: GPTConfig | None = None, measure: bool = True) -> PrecisionChoice:
    """`auto`: bf16 on GPUs that support it, else fp16 (with a gradient scaler); on a CPU bf16 only where
    `cpu_bf16_decision` says it is fast for `model_config`'s model (a small default one when None), else
    fp32. An explicit choice is honoured when it can run, with a
    warning where it is slow; fp16 needs CUDA and bf16 on CUDA needs a GPU that supports it."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            if bf16_ok:
                return PrecisionChoice("bf16", "bf16: this GPU supports it")
            return PrecisionChoice("fp16", "fp16 with a gradient scaler: this GPU has no bf16")
        if requested == "bf16" and not bf16_ok:
            raise UserInputError(f"{torch.cuda.get_device_name(device)} does not support bf16; use --precision fp16 "
                                 "(with a gradient scaler) or fp32", field="precision")
        return PrecisionChoice(requested, f"{requested}: asked for")
    if requested == "fp16":
        raise UserInputError(f"fp16 training needs a CUDA GPU (this run is on {device.type}); use bf16 or fp32",
                             field="precision")
    if device.type != "cpu":
        return PrecisionChoice("fp32" if requested == "auto" else requested,
                               f"{'fp32' if requested == 'auto' else requested}: {device.type} default")
    if requested == "fp32":  # nothing to decide: no calibration run (seconds on a loaded machine)
        return PrecisionChoice("fp32", "fp32: asked for")
    fast, why = cpu_bf16_decision(use_cache, model_config, measure)
    if requested == "auto":
        return PrecisionChoice("bf16" if fast else "fp32", f"{'bf16' if fast else 'fp32'}: {why}")
    if requested == "bf16" and not fast:
        native, _ = cpu_has_native_bf16()
        calibrated = _calibrated_model(model_config, measure)
        speedup = cpu_bf16_speedup(use_cache, calibrated) if native else matmul_bf16_speedup()
        slower = f"{1 / speedup:.0f}x slower" if 0 < speedup < 0.5 else "no faster"
        return PrecisionChoice("bf16", f"bf16: asked for ({why})",
                               warning=f"bf16 on this CPU is {slower} than fp32 (measured here); "
                                       "--precision auto would pick fp32")
    return PrecisionChoice(requested, f"{requested}: asked for")


def low_precision_dtype(precision: str) -> torch.dtype:
    """The dtype a run's low-precision work uses (autocast, Muon's orthogonalisation): fp32 unless bf16/fp16."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def orthogonalisation_dtype(device: torch.device, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype Muon orthogonalises in for a run that autocasts to `autocast_dtype` (None: fp32): bf16 on a GPU,
    and on a CPU the run's own precision, so bf16 only where the runtime found it fast."""
    return torch.bfloat16 if device.type == "cuda" else (autocast_dtype or torch.float32)


# -- compile --------------------------------------------------------------------------------------
def check_compile(device: torch.device, on_zerogpu: bool = False) -> None:
    """Refuse `compile=True` where it cannot work, before anything is built."""
    if on_zerogpu:
        raise UserInputError("torch.compile is not supported on ZeroGPU; turn compile off", field="compile")
    if device.type == "mps":
        raise UserInputError("torch.compile is not supported on Apple's mps backend here; turn compile off",
                             field="compile")
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise UserInputError("torch.compile on a GPU needs the triton package (pip install triton), or turn "
                                 "compile off", field="compile") from None
    if device.type == "cpu" and not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "g++"), "g++",
                                                                          "clang++")):
        raise UserInputError("torch.compile on a CPU needs a C++ compiler (g++ or clang++) on PATH, or turn "
                             "compile off", field="compile")


# -- memory allocator, threads --------------------------------------------------------------------
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


# -- processes ------------------------------------------------------------------------------------
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


def start_process_group(info: DistInfo, device: torch.device) -> None:
    """Join torchrun's process group (NCCL on CUDA, gloo on a CPU) unless this is one process or it is joined."""
    if info.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def decided_by_main(value: T, info: DistInfo) -> T:
    """`value` as rank 0 has it, on every process of a torchrun job (after `start_process_group`); `value`
    itself for one process.

    Run-time decisions (precision from a calibration, dropout from a timed step) are measured by each rank
    on its own, and near a threshold two ranks can measure either side of it: one run trains one recipe, the
    one its config.json (written by rank 0) records."""
    if not info.enabled:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class BatchSplit:
    """How one optimizer step's windows are shared among processes."""

    batch_size: int  # windows per micro-batch, per process
    accum_steps: int  # micro-batches per process
    note: str | None  # what was changed from the config, for one printed line (None: nothing)

    def global_windows(self, world_size: int) -> int:
        return self.batch_size * self.accum_steps * world_size


def split_batch(batch_size: int, grad_accum_steps: int, world_size: int) -> BatchSplit:
    """Share batch_size x grad_accum_steps windows among `world_size` processes.

    The rule: keep the global batch. When the processes divide the accumulation, each runs
    grad_accum_steps / N micro-batches of batch_size. Otherwise each runs the largest accumulation that
    lets the global batch split evenly, with a smaller micro-batch. Only when the global batch cannot be
    split evenly at all (e.g. 7 windows on 2 processes) is the per-process batch kept and the global batch
    grows to N x batch_size x grad_accum_steps."""
    if grad_accum_steps % world_size == 0:
        return BatchSplit(batch_size, grad_accum_steps // world_size, None)
    total = batch_size * grad_accum_steps
    if total % world_size == 0:
        per_process = total // world_size
        accum = max(a for a in range(1, grad_accum_steps + 1) if per_process % a == 0 and a <= grad_accum_steps)
        return BatchSplit(per_process // accum, accum,
                          f"{world_size} processes do not divide grad_accum_steps {grad_accum_steps}: each runs "
                          f"{accum} micro-batch(es) of {per_process // accum} windows (the global batch stays "
                          f"{total} windows)")
    return BatchSplit(batch_size, grad_accum_steps,
                      f"the global batch of {total} windows does not split over {world_size} processes: each runs "
                      f"{grad_accum_steps} micro-batch(es) of {batch_size} windows (global batch "
                      f"{total * world_size} windows)")


# -- peak FLOPs -----------------------------------------------------------------------------------
def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense bf16/fp16 peak in FLOP/s when known (GPUs only), for MFU."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


# -- the whole decision ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Runtime:
    """Everything decided for the machine, recorded in config.json as `runtime`."""

    device: str
    precision: str
    precision_reason: str
    cpu_capability: str
    threads: int
    world_size: int
    warning: str | None = None
    dropout_reason: str | None = None  # set by the trainer when the recipe decides dropout by planned epochs

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return f"{self.device}, {self.precision_reason}, {self.threads} thread(s)"


def resolve_runtime(device_name: str, precision: str, *, compile_model: bool = False, on_zerogpu: bool = False,
                    world_size: int = 1, use_cache: bool = True, model_config: GPTConfig | None = None
                    ) -> tuple[torch.device, Runtime]:
    """Decide device and precision (for `model_config`'s model; see `resolve_precision`) and check compile
    for this machine; raises `UserInputError` for combinations that cannot run."""
    device = resolve_device(device_name)
    choice = resolve_precision(precision, device, use_cache, model_config)
    if compile_model:
        check_compile(device, on_zerogpu)
    runtime = Runtime(device=str(device), precision=choice.precision, precision_reason=choice.reason,
                      cpu_capability=cpu_capability(), threads=torch.get_num_threads(), world_size=world_size,
                      warning=choice.warning)
    return device, runtime
