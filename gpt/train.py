"""The trainer: turns a data folder and a complete config into a run folder.

    trainer = Trainer(GPTConfig.from_preset("tiny"), TrainConfig(max_steps=500), "data/shakespeare",
                      "checkpoints/my-run")
    trainer.run()                                  # to the end (max_steps / max_minutes / epochs)
    trainer.run(max_seconds=50)                    # or in bursts: at most 50 s now, continue later
    Trainer.from_config("checkpoints/my-run/config.json").run()   # a run whose config.json was written first
    Trainer.resume("checkpoints/my-run").run()     # continue a stopped run where it stopped

One optimizer step = `grad_accum_steps` micro-batches of `batch_size` windows of `context_length` tokens.
With `torchrun --nproc_per_node=N` (DistributedDataParallel) the step's windows are shared among the
processes by `gpt.runtime.split_batch` (the global batch is kept; one printed line says what changed when
N does not divide the accumulation), so the learning-rate schedule and even the data (micro-batch g of step
s is drawn from the same seed whichever process runs it) are the same as on one process when N divides it.

The machine decides precision (`gpt/runtime.py`); optimizers and schedule are in `gpt/optim.py`,
evaluation in `gpt/evaluate.py`, the run folder in `gpt/run.py`. The rows of `metrics.jsonl`:
    phase:  step, phase (loading data | building the model | compiling | evaluating | training), time
    train:  step, tokens, epoch, train_loss (mean since the last row), lr, grad_norm (before clipping),
            tokens_per_second, seconds_per_step, elapsed (s, wall clock of training, summed over bursts),
            mfu (GPU only). Written every `log_interval` steps and at least every `log_seconds`.
    eval:   step, tokens, val_loss (nats/token), perplexity, bits_per_byte, eval_tokens, elapsed, best,
            scope ("estimate": the first `eval_batches` batches; "full": the whole split, at the end)
    sample: step, prompt, text
    heads:  step, per-head scores (layer x head lists) and the in-context learning score on a fixed probe
            (`gpt.inspection.score_probe`), at each evaluation when `head_scores` is on
    status: step, status (running | stopped | finished | diverged | failed), message, elapsed
A run diverges when the loss or the gradient norm is NaN/inf, when the weights hold NaN/inf before a save,
or when an evaluation is NaN/inf or more than `DIVERGED_EVAL_MARGIN` nats above the best: it stops with
the `diverged` status, without sampling from the broken model, and names the checkpoint it keeps; a
checkpoint is written only after a healthy evaluation (or weights check), so that one is good.
Resuming on the same device with dropout 0 reproduces the losses of an uninterrupted run exactly on CPU:
the trainer state holds the fp32 weights, optimizer moments, step, counters and random states, and batches
are a pure function of (seed, step, micro-batch).
"""

from __future__ import annotations

import contextlib
import gc
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gpt import run as runs
from gpt.averaging import weight_average
from gpt.config import TrainConfig
from gpt.data.folder import get_batch, load_split, model_tokens, read_meta
from gpt.errors import UserInputError
from gpt.evaluate import bits_per_byte, check_split_tokens, evaluate
from gpt.inspection import Probe, probe_for_run, score_probe
from gpt.model import GPT, GPTConfig
from gpt.optim import configure_optimizers, scheduled_lr, window_length, window_stages
from gpt.plan import DropoutChoice, decide_dropout, dropout_rule_applies, planned_steps
from gpt.run import DataRef, RunConfig
from gpt.runtime import (
    decided_by_main,
    dist_info_from_env,
    low_precision_dtype,
    orthogonalisation_dtype,
    peak_flops,
    resolve_runtime,
    split_batch,
    start_process_group,
    time_training_step,
)
from gpt.sampling import SamplingConfig, generate
from gpt.tokenizer import Tokenizer
from gpt.tracking import WandbLogger
from gpt.vocab import tokenizer_for

STATUSES = ("running", "stopped", "finished", "diverged", "failed")
DIVERGED_HINT = "lower the learning rate (e.g. halve --learning-rate), or use bf16 instead of fp16"
# An evaluation this many nats above the best one so far (20x the perplexity) means the run diverged,
# even while the numbers stay finite; a healthy run's estimates move by tenths of a nat.
DIVERGED_EVAL_MARGIN = 3.0
# The end of a run scores the whole validation split when it is at most this many tokens (seconds on a
# CPU for the bundled corpus); a larger split is scored on its first this-many tokens and labelled so.
FINAL_EVAL_MAX_TOKENS = 2_000_000


class _Divergence(Exception):
    """Raised inside the loop when the loss, the gradient, the weights or an evaluation went bad; `run`
    turns it into the `diverged` status. Every process raises it at the same step."""


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
        preset: str | None = None,
        on_row: Callable[[dict], None] | None = None,
        on_zerogpu: bool = False,
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
        self.notes: list[str] = []  # one-line notices for the person (printed by the CLI, in the status row)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0

        # Checks before any compute.
        if _state is None and runs.has_checkpoint(self.run_dir):
            raise UserInputError(f"{self.run_dir} already holds a run: resume it with --resume {self.run_dir}, "
                                 "or choose another --out")
        self.split = split_batch(train_config.batch_size, train_config.grad_accum_steps, self.dist.world_size)
        if self.split.note:
            self.notes.append(self.split.note)
        self.meta = read_meta(self.data_dir)
        self.train_tokens = load_split(self.data_dir, "train")
        self.val_tokens = load_split(self.data_dir, "val")
        for split in ("train", "val"):  # ids the model can represent, before a compact vocabulary is made
            check_split_tokens(self.data_dir, split, tokenizer)
        self.tokenizer = tokenizer or tokenizer_for(train_config.vocab, self.data_dir, train_config.vocab_limit)
        # Model ids: mapped per batch (id_map), or spelled once here for a vocabulary cut to frequent tokens.
        self.train_tokens, self.id_map = model_tokens(self.train_tokens, self.tokenizer)
        self.val_tokens, _ = model_tokens(self.val_tokens, self.tokenizer)
        if model_config.vocab_size != self.tokenizer.vocab_size:
            model_config = GPTConfig.from_dict({**model_config.to_dict(), "vocab_size": self.tokenizer.vocab_size})
        self.model_config = model_config
        self._check_data_fits()
        self.device, self.runtime = resolve_runtime(train_config.device, train_config.precision,
                                                    compile_model=train_config.compile, on_zerogpu=on_zerogpu,
                                                    world_size=self.dist.world_size, model_config=model_config)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        start_process_group(self.dist, self.device)
        self.runtime = decided_by_main(self.runtime, self.dist)
        self.precision = self.runtime.precision
        if self.runtime.warning:
            self.notes.append(self.runtime.warning)
        self.tokens_per_step = self.split.global_windows(self.dist.world_size) * model_config.context_length
        if _state is None:
            model_config = self._apply_dropout(model_config, decided_by_main(self._dropout_choice(model_config),
                                                                             self.dist))
            self.model_config = model_config
        else:  # a resumed run keeps the dropout its config.json holds, and why
            decided = (runs.read_config(self.run_dir).runtime or {}).get("dropout_reason")
            self.runtime = replace(self.runtime, dropout_reason=decided)
        self.planned_steps = planned_steps(train_config, model_config, len(self.train_tokens))
        self.run_config = RunConfig(model=model_config, train=train_config,
                                    data=DataRef(str(self.data_dir), self.meta), tokenizer=self.tokenizer,
                                    command=command, preset=preset, runtime=self.runtime.to_dict())
        if self.dist.is_main and train_config.wandb != "off":
            self.wandb = WandbLogger(train_config.wandb, train_config.wandb_project, self.run_dir.name,
                                     self.run_config.to_json(), self.run_dir)
            self.notes.append("{}: {}".format(*self.wandb.where()))

        # The run folder: a new run's config.json, or the options a resumed run continues with.
        if self.dist.is_main:
            if _state is None:
                runs.create_run(self.run_dir, self.run_config)
            else:
                runs.remove_temporary_files(self.run_dir)
                runs.truncate_metrics(self.run_dir, int(_state["step"]))  # no step is logged twice
                self.run_config.write(self.run_dir)
        if _state is not None:
            self.step = int(_state["step"])
        self._phase("building the model")

        # Model, optimizer and state.
        torch.manual_seed(train_config.seed)
        self.model = GPT(model_config)
        self.best_val_loss, self.best_step = math.inf, -1
        self.next_snapshot = 0
        if _state is not None:
            try:
                self.model.load_state_dict(_state["model"])
            except RuntimeError as error:
                raise UserInputError(f"{runs.STATE_FILE} of {self.run_dir.name} does not match its config.json "
                                     f"({str(error).splitlines()[0][:200]})") from None
        self._saved_step = int(_state["step"]) if _state is not None else -1  # the last checkpoint written
        self.model.to(self.device)
        self.optimizers = configure_optimizers(self.model, train_config, self.device,
                                               ortho_dtype=orthogonalisation_dtype(self.device, self._autocast_dtype))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        # Weight averaging (gpt/averaging.py): the averaged copy is what the run evaluates, samples from and saves.
        self.averaged = weight_average(self.model, train_config)
        if _state is not None:
            self._load_state(_state)
        self.peak_flops = peak_flops(self.device, self.precision)
        self.generator = torch.Generator(device="cpu")
        self.train_model: torch.nn.Module = self.model
        if train_config.compile:
            self.train_model = torch.compile(self.model)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)
        self.model.train()
        self._window = _Window()
        self._last_grad_norm = 0.0
        self._last_eval_step = -1
        self._last_log_time = time.perf_counter()
        self.probe = self._make_probe() if self.dist.is_main and train_config.head_scores else None
        if self.dist.is_main:
            self._ensure_best_file()

    # -- construction helpers -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config_path: str | Path, *, out_dir: str | Path | None = None,
                    on_row: Callable[[dict], None] | None = None, on_zerogpu: bool = False,
                    model_overrides: dict | None = None, train_overrides: dict | None = None) -> Trainer:
        """Train the run a config.json describes: into its own folder when that folder holds no checkpoint
        yet (the app writes the file, then starts `python -m gpt train --config RUN/config.json`), or into
        `out_dir` (train a run again, optionally with some fields changed)."""
        config_path = Path(config_path)
        config = RunConfig.read(config_path)
        if config.train is None:
            raise UserInputError(f"{config_path} records no training options (imported weights?): train a new "
                                 "run with --data and --preset instead")
        model = GPTConfig.from_dict({**config.model.to_dict(), **(model_overrides or {})})
        train = TrainConfig.from_dict({**config.train.to_dict(), **(train_overrides or {})})
        target = Path(out_dir) if out_dir else config_path.parent
        if not config.data.dir:
            raise UserInputError(f"{config_path} names no data folder")
        same_vocab = model.vocab_size == config.model.vocab_size and train.vocab == config.train.vocab
        command = config.command if target == config_path.parent else None
        return cls(model, train, config.data.dir, target, tokenizer=config.tokenizer if same_vocab else None,
                   command=command, preset=config.preset, on_row=on_row, on_zerogpu=on_zerogpu)

    @classmethod
    def resume(cls, run_dir: str | Path, *, on_row: Callable[[dict], None] | None = None,
               data_dir: str | Path | None = None, on_zerogpu: bool = False,
               **train_overrides: object) -> Trainer:
        """Continue a run from its trainer state; `train_overrides` may change e.g. max_steps to train longer."""
        opened = runs.Run.open(run_dir)
        config = opened.config
        if config.train is None:
            raise UserInputError(f"{opened.name} was not trained here (imported weights): it cannot be resumed")
        state = opened.trainer_state()
        train_config = TrainConfig.from_dict({**config.train.to_dict(), **train_overrides})
        return cls(config.model, train_config, data_dir or config.data.dir, opened.dir, tokenizer=config.tokenizer,
                   command=config.command, preset=config.preset, on_row=on_row, on_zerogpu=on_zerogpu,
                   _state=state)

    @property
    def weights(self) -> GPT:
        """The weights the run evaluates, samples from and saves: the averaged copy when averaging, else the model."""
        return self.averaged.module if self.averaged is not None else self.model

    def _make_probe(self) -> Probe | None:
        """The fixed head-score probe of this run (drawn from its seed, so a resumed run scores the same
        inputs); None, with a note, where the model or the data cannot take one."""
        try:
            return probe_for_run(self.run_config)
        except UserInputError as error:
            self.notes.append(f"no head scores: {error}")
            return None

    def _check_data_fits(self) -> None:
        context, batch = self.model_config.context_length, self.split.batch_size
        n_train, n_val = len(self.train_tokens), len(self.val_tokens)
        if n_train < context + 1:
            raise UserInputError(f"the training split has {n_train} tokens, fewer than one window of context_length "
                                 f"{context} + 1; lower --context-length or add data", field="context_length")
        if n_val < context + 1:
            raise UserInputError(f"the validation split has {n_val} tokens, fewer than one window of context_length "
                                 f"{context} + 1; lower --context-length or use a larger validation fraction",
                                 field="context_length")
        window_stages(self.config, context)  # raises where the context does not divide into short windows
        if batch * context > n_train:
            raise UserInputError(f"one batch ({batch} x {context} = {batch * context} tokens) is larger than the "
                                 f"training split ({n_train} tokens); lower --batch-size or --context-length",
                                 field="batch_size")

    def _dropout_choice(self, model_config: GPTConfig) -> DropoutChoice:
        """The dropout `gpt.plan.decide_dropout` chooses for this run, timing an optimizer step of its model and
        optimizers (every micro-batch's forward and backward passes, then the step) first when the run is
        bounded by time."""
        seconds_per_step = None
        train = self.config
        if dropout_rule_applies(model_config, train) and train.max_minutes is not None:
            seconds_per_step = time_training_step(model_config, self.split.batch_size, self.device,
                                                  self._autocast_dtype, train_config=train,
                                                  accum_steps=self.split.accum_steps)
        return decide_dropout(model_config, train, len(self.train_tokens), self.tokens_per_step, seconds_per_step)

    def _apply_dropout(self, model_config: GPTConfig, choice: DropoutChoice) -> GPTConfig:
        """`model_config` with the chosen dropout; the reason goes into the runtime decision and the status line."""
        if choice.reason is None:
            return model_config
        self.runtime = replace(self.runtime, dropout_reason=choice.reason)
        self.notes.append(choice.reason)
        return GPTConfig.from_dict({**model_config.to_dict(), "dropout": choice.dropout})

    def _load_state(self, state: dict) -> None:
        saved = state["optimizer"]
        for optimizer, optimizer_state in zip(self.optimizers, saved if isinstance(saved, list) else [saved],
                                              strict=True):
            optimizer.load_state_dict(optimizer_state)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens, self.elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed"])
        self.best_val_loss, self.best_step = float(state["best_val_loss"]), int(state["best_step"])
        self.next_snapshot = int(state["next_snapshot"])
        if self.averaged is not None and "ema" in state:
            self.averaged.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def _ensure_best_file(self) -> None:
        """A finished run whose best was its last step keeps no best.safetensors; bring it back before
        training on overwrites model.safetensors."""
        best, last = self.run_dir / runs.BEST_FILE, self.run_dir / runs.LAST_FILE
        if self.best_step >= 0 and not best.exists() and last.exists():
            runs.atomic_write(best, lambda tmp: shutil.copyfile(last, tmp))

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
                clock = time.perf_counter()  # the step-0 evaluation is not training time
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
                if self.step == 0 or burst_steps == 0:
                    self._phase("compiling" if self.config.compile and burst_steps == 0 else "training")
                loss = self._train_step()
                step_seconds = time.perf_counter() - clock
                if not math.isfinite(loss):
                    raise _Divergence(f"loss became {loss} at step {self.step + 1}")
                self.step += 1
                burst_steps += 1
                self.tokens += self.tokens_per_step
                self._window.loss += loss
                self._window.steps += 1
                self._window.tokens += self.tokens_per_step
                self._window.seconds += step_seconds
                if self._log_due():
                    self.elapsed += time.perf_counter() - clock
                    clock = time.perf_counter()
                    self._log_train()
                if self.step % self.config.eval_interval == 0 and not self._finished_by_count():
                    self.elapsed += time.perf_counter() - clock
                    self._evaluate_and_save()
                    clock = time.perf_counter()  # evaluation and saving are not training time
                self._maybe_snapshot()  # (the last step's evaluation is the whole-split one of `_end`)
        except _Divergence as divergence:
            return self._diverge(str(divergence))
        except torch.OutOfMemoryError:
            message = (f"out of GPU memory at batch_size {self.split.batch_size} x context_length "
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
        notes = "".join(f"; {note}" for note in self.notes)
        self._write_status("running", f"{what}training {params:,} parameters on {self.device} ({self.precision}), "
                                      f"{self.dist.world_size} process(es), {self.tokens_per_step:,} tokens/step; "
                                      f"precision {self.runtime.precision_reason}{notes}")
        if not self._resumed:
            self._evaluate_and_save()
            self._maybe_snapshot()

    def _phase(self, phase: str) -> None:
        self._emit({"kind": "phase", "step": self.step, "phase": phase, "time": time.time()})

    def _micro_batch(self, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `micro` of this process at the current step, a pure function of (seed, step, g)
        where g is its index among all processes' micro-batches, in windows of the length
        `gpt.optim.window_length` gives at this point of the run (shorter windows come more to a batch)."""
        global_index = self.dist.rank * self.split.accum_steps + micro
        seed = (self.config.seed * 1_000_003 + self.step) * 1_009 + global_index
        self.generator.manual_seed(seed % (2**63))
        context = self.model_config.context_length
        length = window_length(self.config, context, self._progress(for_schedule=True))
        return get_batch(self.train_tokens, self.split.batch_size * context // length, length,
                         self.generator, device=self.device, id_map=self.id_map)

    @property
    def _autocast_dtype(self) -> torch.dtype | None:
        """What training autocasts to: None in fp32 (no autocast)."""
        return None if self.precision == "fp32" else low_precision_dtype(self.precision)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def _train_step(self) -> float:
        """One optimizer step; returns the loss averaged over micro-batches and processes (NaN/inf as is).
        A non-finite loss leaves the weights untouched; so does a non-finite gradient norm (fp32/bf16), which
        raises `_Divergence` (with fp16 the gradient scaler skips such a step and lowers its scale)."""
        progress = self._progress(for_schedule=True)
        lr = scheduled_lr(self.config, self.step, progress)
        # late dropout: none before its share of the run (setting p costs ~0.1 ms a step on quick-cpu's shape)
        self.model.set_dropout(self.model_config.dropout if progress >= self.config.dropout_start_fraction else 0.0)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
        accum = self.split.accum_steps
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self._micro_batch(micro)
            sync = micro == accum - 1 or not self.dist.enabled
            context = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with context:
                with self._autocast():
                    _, loss = self.train_model(x, y, return_logits=False)
                loss = loss / accum
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
            if not math.isfinite(norm) and self.precision != "fp16":  # fp32/bf16 gradients never overflow
                raise _Divergence(f"the gradient norm became {norm} at step {self.step + 1}")
            else:
                for optimizer in self.optimizers:
                    self.scaler.step(optimizer)
                self.scaler.update()
                if self.averaged is not None:
                    self.averaged.update_parameters(self.model)
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

    def _log_due(self) -> bool:
        """A train row every `log_interval` steps, after the first step, and at least every `log_seconds`."""
        return (self.step % self.config.log_interval == 0 or self.step == 1
                or time.perf_counter() - self._last_log_time >= self.config.log_seconds)

    # -- rows, evaluation, checkpoints --------------------------------------------------------------------
    def _emit(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        runs.append_metrics(self.run_dir, row)
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
        self._last_log_time = time.perf_counter()
        if window.steps == 0:
            return
        tokens_per_second = window.tokens / max(window.seconds, 1e-9)
        row = {"kind": "train", "step": self.step, "tokens": self.tokens,
               "epoch": self.tokens / len(self.train_tokens), "train_loss": window.loss / window.steps,
               "lr": self.optimizers[0].param_groups[0]["lr"], "grad_norm": self._last_grad_norm,
               "tokens_per_second": tokens_per_second, "seconds_per_step": window.seconds / window.steps,
               "elapsed": round(self.elapsed, 3), "time": time.time()}
        if self.peak_flops:
            row["mfu"] = self.model_config.flops_per_token() * tokens_per_second / self.peak_flops
        self._window = _Window()
        self._emit(row)

    def _evaluate_and_save(self, final: bool = False) -> None:
        """Validation loss, a sample, and the last (and maybe best) checkpoint; raises `_Divergence` (on every
        process) when the evaluation is NaN/inf or far above the best, before sampling or saving anything.
        `final`: score the whole validation split (up to FINAL_EVAL_MAX_TOKENS) instead of an estimate."""
        if self._last_eval_step == self.step and not final:
            return
        self._last_eval_step = self.step
        problem = self._evaluate(final) if self.dist.is_main else ""
        if self.dist.enabled:  # rank 0 evaluates; every rank must stop together
            flag = torch.tensor([float(bool(problem))], device=self.device)
            dist.broadcast(flag, src=0)
            problem = problem or ("the evaluation on rank 0 went bad" if flag.item() else "")
        if problem:
            raise _Divergence(problem)
        self._check_weights()
        if not self.dist.is_main:
            return
        if self.probe is not None:
            self._emit({**score_probe(self.weights, self.probe), "step": self.step})
        self._sample()
        self._save(best=self.best_step == self.step)
        self._phase("training")

    def _evaluate(self, final: bool) -> str:
        """Rank 0: the eval row; returns what is wrong with it ("" when it is healthy)."""
        self._phase("evaluating")
        batch = self.split.batch_size
        if final:
            windows = math.ceil(FINAL_EVAL_MAX_TOKENS / self.model_config.context_length)
            whole = len(self.val_tokens) <= FINAL_EVAL_MAX_TOKENS
            max_batches = 0 if whole else max(1, windows // batch)
            scope = "full" if whole else "first tokens"
        else:
            max_batches, scope = self.config.eval_batches, "estimate" if self.config.eval_batches else "full"
        loss, count = evaluate(self.weights, self.val_tokens, batch_size=batch, device=self.device,
                               max_batches=max_batches, id_map=self.id_map, autocast=self._autocast,
                               pad_id=self.tokenizer.eot_id)
        problem = ""
        if not math.isfinite(loss):
            problem = f"the validation loss became {loss} at step {self.step}"
        elif loss > self.best_val_loss + DIVERGED_EVAL_MARGIN:
            problem = (f"the validation loss rose to {loss:.4f} at step {self.step}, more than "
                       f"{DIVERGED_EVAL_MARGIN:g} nats above the best ({self.best_val_loss:.4f} at step "
                       f"{self.best_step})")
        improved = not problem and loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = loss, self.step
        bpb = bits_per_byte(loss, self.meta, tokens=len(self.val_tokens))
        self._emit({"kind": "eval", "step": self.step, "tokens": self.tokens, "val_loss": loss,
                    "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": bpb,
                    "eval_tokens": count, "elapsed": round(self.elapsed, 3), "best": improved, "scope": scope})
        return problem

    def _check_weights(self) -> None:
        """Raise `_Divergence` when a weight is NaN or inf (checked before every save; the same on every
        process, whose weights are equal)."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.weights.parameters()]).all()
        if not bool(finite):
            raise _Divergence(f"the weights hold NaN or inf values at step {self.step}")

    def _sample(self) -> None:
        if self.config.sample_tokens == 0:
            return
        sampling = SamplingConfig(temperature=self.config.sample_temperature, max_new_tokens=self.config.sample_tokens,
                                  seed=self.config.seed, stop_at_eot=False)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            text = generate(self.weights, self.tokenizer, self.config.sample_prompt, sampling)
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
        if self.averaged is not None:
            state["ema"] = {k: v.detach().cpu() for k, v in self.averaged.state_dict().items()}  # key of any rule
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save(self, best: bool = False) -> None:
        """Write trainer_state.pt, then best.safetensors (when `best`), then model.safetensors, each
        atomically: model.safetensors last, so its presence marks a complete checkpoint. Rank 0 only;
        callers check the weights first (`_check_weights`)."""
        if not self.dist.is_main:
            return
        dtype = self.config.save_dtype
        runs.save_trainer_state(self.run_dir, self.state_dict())
        if best:
            runs.save_weights(self.weights, self.run_dir / runs.BEST_FILE, step=self.step, dtype=dtype)
        runs.save_weights(self.weights, self.run_dir / runs.LAST_FILE, step=self.step, dtype=dtype)
        self._saved_step = self.step

    def save(self) -> None:
        """Save a checkpoint now (e.g. at the end of a burst); a run whose weights went bad is marked
        diverged instead, keeping its last good checkpoint."""
        try:
            self._check_weights()
        except _Divergence as divergence:
            self._diverge(str(divergence))
            return
        self._save()

    def _maybe_snapshot(self) -> None:
        """Snapshot k of `snapshots` when the run is k/snapshots of the way through (step 0 is the first)."""
        n = self.config.snapshots
        while self.next_snapshot < n and self._progress() >= self.next_snapshot / n:
            self._check_weights()
            if self.dist.is_main:
                runs.save_weights(self.weights, runs.snapshot_path(self.run_dir, self.step), step=self.step,
                                  dtype=self.config.save_dtype)
            self.next_snapshot += 1

    def _end(self, status: str, message: str) -> str:
        """Final whole-split evaluation and checkpoint, model card, status row."""
        self._log_train()
        self._evaluate_and_save(final=True)
        if self.dist.is_main and status == "finished" and self.best_step == self.step:
            (self.run_dir / runs.BEST_FILE).unlink(missing_ok=True)
        self._write_status(status, message)
        self._write_card()
        self._close()
        return status

    def _diverge(self, problem: str) -> str:
        """Mark the run diverged, naming the checkpoint that is kept (written only after a healthy
        evaluation) and the command that resumes from it."""
        if self._saved_step >= 0:
            lower = f"--learning-rate {self.config.learning_rate / 2:g}"
            if self.config.optimizer == "muon":
                lower += f" --muon-learning-rate {self.config.muon_learning_rate / 2:g}"
            kept = (f"the last good checkpoint is kept: {runs.LAST_FILE} and {runs.STATE_FILE} at step "
                    f"{self._saved_step} (resume from it: python -m gpt train --resume {self.run_dir} {lower})")
        else:
            kept = "no checkpoint had been saved yet"
        self._write_status("diverged", f"{problem}; {kept}. Hint: {DIVERGED_HINT}")
        self._write_card()
        self._close()
        return "diverged"

    def _write_card(self) -> None:
        if self.dist.is_main:
            from gpt.card import write_model_card

            links = [self.wandb.where()] if self.wandb is not None else []
            write_model_card(self.run_dir, self.run_config, status=runs.run_status(self.run_dir), links=links)

    def _close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
