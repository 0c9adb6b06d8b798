"""The machine decides: precision on both kinds of CPU (the one we are not on is simulated), Muon's
orthogonalisation dtype, the batch split under torchrun, and the refusals for what cannot run."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from gpt import runtime
from gpt.config import TrainConfig
from gpt.errors import UserInputError
from gpt.optim import Muon, orthogonalise

ROOT = Path(__file__).resolve().parent.parent
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))


def test_native_bf16_detection_on_each_kind_of_cpu() -> None:
    assert runtime.cpu_has_native_bf16("AVX512", {"avx512f", "avx512_bf16"}, "x86_64")[0]
    assert runtime.cpu_has_native_bf16("AVX512", {"amx_bf16"}, "x86_64")[0]
    native, why = runtime.cpu_has_native_bf16("AVX2", {"avx2", "fma"}, "x86_64")
    assert not native and why == "this CPU has no native bf16 (AVX2)"
    # AVX-512 BF16 present, but PyTorch's kernels limited to AVX2 (ATEN_CPU_CAPABILITY=avx2): no bf16 kernels
    native, why = runtime.cpu_has_native_bf16("AVX2", {"avx512_bf16"}, "x86_64")
    assert not native and "AVX2" in why
    assert runtime.cpu_has_native_bf16("DEFAULT", {"bf16", "asimd"}, "aarch64")[0]
    assert not runtime.cpu_has_native_bf16("DEFAULT", {"asimd"}, "aarch64")[0]


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, native: bool, speedup: float) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16",
                        lambda: (native, "this CPU has avx512_bf16 (AVX512)" if native
                                 else "this CPU has no native bf16 (AVX2)"))
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda use_cache=True, model_config=None: speedup)
    monkeypatch.setattr(runtime, "matmul_bf16_speedup", lambda: speedup)


def test_auto_picks_fp32_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cpu(monkeypatch, native=False, speedup=0.03)
    choice = runtime.resolve_precision("auto", torch.device("cpu"))
    assert choice.precision == "fp32" and choice.reason == "fp32: this CPU has no native bf16 (AVX2)"
    forced = runtime.resolve_precision("bf16", torch.device("cpu"))  # still runs, with a measured warning
    assert forced.precision == "bf16" and "33x slower than fp32" in forced.warning


def test_auto_picks_bf16_only_where_it_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cpu(monkeypatch, native=True, speedup=1.6)
    choice = runtime.resolve_precision("auto", torch.device("cpu"))
    assert choice.precision == "bf16" and "1.60x faster" in choice.reason
    _fake_cpu(monkeypatch, native=True, speedup=0.9)
    choice = runtime.resolve_precision("auto", torch.device("cpu"))
    assert choice.precision == "fp32" and "0.90x the speed of fp32" in choice.reason
    assert runtime.resolve_precision("fp32", torch.device("cpu")).warning is None


def test_fp16_on_a_cpu_is_refused() -> None:
    with pytest.raises(UserInputError, match="fp16 training needs a CUDA GPU") as caught:
        runtime.resolve_precision("fp16", torch.device("cpu"))
    assert caught.value.field == "precision"


def test_the_calibration_is_measured_once_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a smaller default model: where bf16 is emulated (an AVX2 CI machine) the real one's steps take seconds
    monkeypatch.setattr(runtime, "CALIBRATION_MODEL", {**runtime.CALIBRATION_MODEL, "n_embd": 64, "vocab_size": 512})
    first = runtime.cpu_bf16_speedup()
    cache = tmp_path / "cache" / "cpu-bf16.json"
    assert cache.is_file() and first > 0
    cache.write_text(cache.read_text().replace(str(first), "123.0", 1))
    assert runtime.cpu_bf16_speedup() == 123.0  # read back, not measured again
    entries = json.loads(cache.read_text())
    del entries[next(iter(entries))]["pairs"]  # as written before the precisions alternated
    cache.write_text(json.dumps(entries))
    assert runtime.cached_bf16_speedup() is None and runtime.cpu_bf16_speedup() != 123.0  # measured again


def test_the_calibration_is_measured_per_model_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bf16/fp32 ratio depends on the model (on an AMX CPU 0.96x for a 2 x 256 model, 1.9x for `seed`):
    each shape gets its own measured, cached entry, and a plan (`measure=False`) never runs one."""
    from gpt.model import GPTConfig

    measured: list[int] = []

    def fake_pairs(model_config: GPTConfig, pairs: int = 5) -> list[tuple[float, float]]:
        measured.append(model_config.n_embd)
        return [(1.0, model_config.n_embd / 256)] * pairs  # 64 wide: 4x faster in bf16; 256: the same
    monkeypatch.setattr(runtime, "_paired_step_times", fake_pairs)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: (True, "this CPU has amx_bf16 (AVX512)"))
    small = GPTConfig(vocab_size=512, context_length=32, n_layer=1, n_head=2, n_embd=64)
    default = GPTConfig(**runtime.CALIBRATION_MODEL)

    shown = runtime.resolve_precision("auto", torch.device("cpu"), model_config=small, measure=False)
    assert measured == [256] and shown.precision == "fp32"
    assert "this model's own calibration runs when training starts" in shown.reason
    chosen = runtime.resolve_precision("auto", torch.device("cpu"), model_config=small)
    assert measured == [256, 64] and chosen.precision == "bf16"
    assert "a bf16 training step of this model measured 4.00x faster" in chosen.reason
    assert runtime.cached_bf16_speedup(small) == 4.0 and runtime.cached_bf16_speedup(default) is None
    assert runtime.cached_bf16_speedup() == 1.0  # the default model's entry, kept beside it
    again = runtime.resolve_precision("auto", torch.device("cpu"), model_config=small, measure=False)
    assert measured == [256, 64] and again.reason == chosen.reason  # read back, nothing measured
    wider = GPTConfig.from_dict({**small.to_dict(), "n_embd": 128})
    assert runtime.cpu_bf16_speedup(model_config=wider) == 2.0 and measured[-1] == 128


def test_the_calibration_alternates_precisions_so_a_load_change_cannot_tip_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 steps take half as long as fp32 ones, and from the middle of the measurement on every step takes
    three times as long (the machine got busy): measured in blocks (fp32, then bf16) bf16 would read 1.5x
    slower; alternating, every pair but the one the change falls in reads 2x faster, and so does the median."""
    calls: list[torch.dtype | None] = []

    @contextlib.contextmanager
    def fake_timer(model_config: object, batch_size: int, device: torch.device,
                   context: int | None = None) -> Iterator[Callable[[torch.dtype | None], float]]:
        def timed_step(autocast_dtype: torch.dtype | None) -> float:
            calls.append(autocast_dtype)
            busy = 3.0 if len(calls) > 7 else 1.0
            return busy * (0.5 if autocast_dtype is torch.bfloat16 else 1.0)
        yield timed_step

    monkeypatch.setattr(runtime, "_step_timer", fake_timer)
    assert runtime.cpu_bf16_speedup(use_cache=False) == 2.0
    timed = calls[4:]  # after two warm-up pairs
    assert timed.count(torch.bfloat16) == timed.count(None) == 5
    assert all(set(timed[i:i + 2]) == {None, torch.bfloat16} for i in range(0, 10, 2))  # one of each per pair
    assert timed[0] is None and timed[2] is torch.bfloat16  # who goes first alternates


def test_a_real_calibration_of_a_model_shape_is_cached() -> None:
    from gpt.model import GPTConfig

    small = GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=2, n_embd=32, qk_norm=True)
    first = runtime.cpu_bf16_speedup(model_config=small)
    assert first > 0 and runtime.cached_bf16_speedup(small) == first


def test_the_simulated_avx2_cpu_resolves_to_fp32_in_a_fresh_process(tmp_path: Path) -> None:
    """The real decision under ATEN_CPU_CAPABILITY=avx2 (the stand-in for an AVX2-only CPU)."""
    code = ("import torch; from gpt.runtime import resolve_precision, cpu_capability; "
            "c = resolve_precision('auto', torch.device('cpu')); print(cpu_capability(), c.precision, c.reason)")
    env = {**os.environ, **AVX2_ENV, runtime.CACHE_ENV: str(tmp_path / "avx2-cache")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    capability, precision, reason = done.stdout.split(" ", 2)
    assert capability == "AVX2" and precision == "fp32" and "bf16" in reason


def test_compile_is_refused_where_it_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserInputError, match="not supported on ZeroGPU"):
        runtime.check_compile(torch.device("cpu"), on_zerogpu=True)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    with pytest.raises(UserInputError, match="needs a C\\+\\+ compiler"):
        runtime.check_compile(torch.device("cpu"))


@pytest.mark.parametrize(("batch", "accum", "world", "expected"), [
    (16, 1, 1, (16, 1, False)),
    (16, 4, 2, (16, 2, False)),  # N divides the accumulation: as before
    (16, 1, 2, (8, 1, True)),  # tiny under torchrun -n 2: two micro-batches of 8, same 16 windows
    (8, 3, 2, (4, 3, True)),  # 24 windows: 3 micro-batches of 4 per process
    (7, 1, 2, (7, 1, True)),  # cannot split 7 windows: per-process batch kept, global batch 14
])
def test_batch_split_keeps_the_global_batch(batch: int, accum: int, world: int, expected: tuple) -> None:
    split = runtime.split_batch(batch, accum, world)
    assert (split.batch_size, split.accum_steps, split.note is not None) == expected
    if expected != (7, 1, True):
        assert split.global_windows(world) == batch * accum


def test_own_newton_schulz_in_bf16_is_the_library_one_and_fp32_is_close() -> None:
    from torch.optim._muon import _zeropower_via_newtonschulz

    torch.manual_seed(0)
    for shape in ((48, 16), (16, 48)):
        update = torch.randn(*shape)
        theirs = _zeropower_via_newtonschulz(update, (3.4445, -4.775, 2.0315), 5, 1e-7)
        ours = orthogonalise(update, ((3.4445, -4.775, 2.0315),) * 5, 1e-7, torch.bfloat16)
        assert torch.equal(ours, theirs)
        fp32 = orthogonalise(update, ((3.4445, -4.775, 2.0315),) * 5, 1e-7, torch.float32)
        assert fp32.dtype == torch.float32 and torch.allclose(fp32, theirs.float(), atol=0.05)


def test_muon_in_fp32_steps_like_the_library_in_bf16() -> None:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(32, 16)) for _ in range(2)]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    ours, theirs = Muon(weights, lr=0.02, ortho_dtype=torch.float32), torch.optim.Muon(copies, lr=0.02)
    for _ in range(3):
        grads = [torch.randn(32, 16) for _ in weights]
        for w, c, g in zip(weights, copies, grads, strict=True):
            w.grad, c.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for w, c in zip(weights, copies, strict=True):
        assert torch.allclose(w, c, atol=2e-3)
    assert set(ours.state_dict()["state"][0]) == set(theirs.state_dict()["state"][0])  # resumable either way


def test_train_config_fields_validate_from_their_metadata() -> None:
    with pytest.raises(UserInputError, match="log_seconds must be a positive number") as caught:
        TrainConfig(max_steps=1, log_seconds=0)
    assert caught.value.field == "log_seconds"
    with pytest.raises(UserInputError, match="seed must be an integer in \\[0, ") as caught:
        TrainConfig(max_steps=1, seed=2**70)
    assert caught.value.field == "seed"


@pytest.mark.slow
def test_the_apps_first_cpu_preset_trains_at_least_as_fast_as_fp32(data_dir: Path, tmp_path: Path) -> None:
    """A ratio on this machine, steps alternating in one process: `auto` must never pick a slower precision."""
    import statistics
    import time

    from gpt.config import default_preset, resolve_preset
    from gpt.train import Trainer

    preset = default_preset("cpu")
    trainers = {}
    for precision in ("auto", "fp32"):
        model, train = resolve_preset(preset, {}, {"precision": precision, "device": "cpu", "max_steps": 100,
                                                   "sample_tokens": 0, "snapshots": 0})
        trainers[precision] = Trainer(model, train, data_dir, tmp_path / precision)
        trainers[precision]._train_step()  # warm up (allocations, kernel choice)
    times: dict[str, list[float]] = {"auto": [], "fp32": []}
    for _ in range(4):
        for precision, trainer in trainers.items():
            start = time.perf_counter()
            trainer._train_step()
            times[precision].append(time.perf_counter() - start)
    ratio = statistics.median(times["auto"]) / statistics.median(times["fp32"])
    assert ratio < 1.3, (trainers["auto"].runtime.precision_reason, times)


def test_a_timed_training_step_leaves_the_callers_random_state_as_it_was() -> None:
    from gpt.model import GPTConfig

    config = GPTConfig(vocab_size=61, context_length=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    seconds = runtime.time_training_step(config, 2, torch.device("cpu"), repeat=2)
    assert seconds > 0
    assert torch.equal(torch.rand(4), expected)


def test_a_timed_optimizer_step_runs_every_micro_batch_and_the_runs_own_optimizers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The dropout decision times what a training step costs: Muon's step is ~20% of quick-cpu's on 2 CPU cores.
    from gpt import optim
    from gpt.config import TrainConfig
    from gpt.model import GPT, GPTConfig

    made, passes = [], []
    configure = optim.configure_optimizers
    monkeypatch.setattr(optim, "configure_optimizers", lambda *args, **kwargs: made.extend(configure(*args, **kwargs))
                        or made)
    forward = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, *args, **kw: passes.append(1) or forward(self, *args, **kw))
    config = GPTConfig(vocab_size=61, context_length=16, n_layer=1, n_head=2, n_embd=16)
    train = TrainConfig(optimizer="muon", max_steps=1)
    runtime.time_training_step(config, 2, torch.device("cpu"), repeat=2, train_config=train, accum_steps=3)
    assert len(passes) == (2 + 2) * 3  # two warm-up and two timed steps of three micro-batches each
    assert [type(optimizer).__name__ for optimizer in made] == ["AdamW", "Muon"]
    adamw_steps = {int(state["step"]) for state in made[0].state.values()}
    assert adamw_steps == {4} and made[1].state  # every step took the optimizers' step
