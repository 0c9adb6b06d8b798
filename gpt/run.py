"""Run folders: the typed contract of everything one training run writes, and how to read it back.

A run folder `checkpoints/<run>/` holds

- `config.json`: a `RunConfig`: `{"model": GPTConfig, "train": TrainConfig, "data": {"dir", "meta"},
  "tokenizer": Tokenizer, "command": the reproduce command, "preset": name, "runtime": what the machine
  decided (`gpt/runtime.py`)}`. The app writes it first and starts `python -m gpt train --config` on it;
- `model.safetensors`: the last weights; `best.safetensors`: the best by validation loss (absent when
  the best is the last, see below); `snapshots/step_XXXXXXX.safetensors`: a few checkpoints spread
  across training (for the Inspect tab's "across training" view);
- `trainer_state.pt`: optimizer, step, random states and counters, loadable with
  `torch.load(weights_only=True)`. A checkpoint writes it first, then `best.safetensors`, then
  `model.safetensors` last, so a folder with `model.safetensors` holds a complete checkpoint: only then
  is it a run (`has_checkpoint`). A start killed before that leaves a folder `create_run` cleans and reuses;
- `metrics.jsonl`: one JSON object per line (`kind` = train | eval | sample | status | heads, and `step`),
  appended while training runs and readable at the same time with `read_metrics` (which parses only what
  was appended since its last call) and `metrics_summary` (the few rows the runs table needs). A resumed run
  first cuts it back to the rows of its checkpoint (`truncate_metrics`), so no step is logged twice;
- `README.md`: a model card (`gpt/card.py`); `train.log`: the output of an app-started job.

Every file is written atomically (a temporary file in the same folder, then `os.replace`), so a crash or a
kill at any moment leaves the previous version loadable. Weights are safetensors; the tied LM head is
stored once. `best.safetensors` is removed at the end of a run whose best evaluation is its last step
(to keep shipped runs small); loading "best" then loads `model.safetensors`.

`Run` is the one reader: `Run.open(path).config`, `.metrics(kind)`, `.status()`, `.state()`,
`.checkpoints()`, `.load(checkpoint, device)`. Nothing outside this module reads `config.json` keys or
builds run-folder paths.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gpt.config import SAVE_DTYPES, TrainConfig
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import Tokenizer

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_RUN = CHECKPOINTS_DIR / "shakespeare-5min"

CONFIG_FILE = "config.json"
LAST_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
CARD_FILE = "README.md"
SNAPSHOTS_DIR = "snapshots"
SAVE_TORCH_DTYPES = dict(zip(SAVE_DTYPES, (torch.float32, torch.float16, torch.bfloat16), strict=True))
LOG_FILE = "train.log"
# A `running` run whose metrics changed this recently is taken to be training in another process.
RUNNING_ELSEWHERE_SECONDS = 120.0
# The W&B note the trainer adds to its first status message: "; W&B run: URL" or "; W&B offline run: ..."
WANDB_NOTE = re.compile(r"(W&B run|W&B offline run): (.+?)(?=; |$)")


# -- atomic writes --------------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file next to `path`, then move it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run folders are shared and shipped
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# -- weights --------------------------------------------------------------------------------------
def _unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with tensors that share storage (the tied LM head) kept once, under the first name."""
    seen: set[tuple[int, int]] = set()
    unique = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        unique[name] = tensor
    return unique


def save_weights(model: torch.nn.Module, path: str | Path, *, step: int, dtype: str = "float32") -> Path:
    """Write the model's weights as safetensors (floating tensors cast to `dtype`), atomically."""
    if dtype not in SAVE_TORCH_DTYPES:
        raise UserInputError(f"unknown save dtype {dtype!r}; choose one of {', '.join(SAVE_DTYPES)}")
    tensors = {}
    for name, tensor in _unique_tensors(model.state_dict()).items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(SAVE_TORCH_DTYPES[dtype])
        tensors[name] = tensor.contiguous()
    metadata = {"format": "pt", "step": str(int(step)), "dtype": dtype}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Load safetensors weights into `model` (tied tensors filled through their twin); return the step."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no checkpoint at {path}")
    try:
        state = load_file(str(path))
    except Exception as error:  # truncated or foreign file
        raise UserInputError(f"{path.name} is not a readable .safetensors file ({error})") from None
    own = model.state_dict()
    loaded = {}
    for name, tensor in state.items():
        if name not in own:
            raise UserInputError(f"{path.name} holds {name!r}, which this model does not have")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise UserInputError(
                f"{path.name}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}"
            )
        loaded[name] = tensor.to(own[name].dtype)
    missing = set(own) - set(loaded)
    shared = {(t.untyped_storage().data_ptr(), t.storage_offset()) for n, t in own.items() if n in loaded}
    truly_missing = [n for n in missing if (own[n].untyped_storage().data_ptr(), own[n].storage_offset()) not in shared]
    if truly_missing:
        raise UserInputError(f"{path.name} lacks weights for {', '.join(sorted(truly_missing))}")
    model.load_state_dict(loaded, strict=False)
    return checkpoint_step(path)


def checkpoint_step(path: str | Path) -> int:
    """The training step recorded in a safetensors file's metadata (-1 when absent)."""
    with _open_safetensors(path) as handle:
        metadata = handle.metadata() or {}
    try:
        return int(metadata.get("step", -1))
    except ValueError:
        return -1


def _open_safetensors(path: str | Path):  # noqa: ANN202 - safetensors' handle type is private
    """`safe_open` with a clear message for a file that is not (or no longer) valid safetensors."""
    try:
        return safe_open(str(path), framework="pt")
    except Exception as error:  # safetensors raises SafetensorError / OSError for truncated or foreign files
        raise UserInputError(f"{Path(path).name} is not a readable .safetensors file ({error})") from None


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a model of `config` stores, computed on the meta device (no memory is used)."""
    with torch.device("meta"):
        model = GPT(config)
    kept = dict(model.named_parameters())  # a tied tensor under its first name only, as save_weights stores it
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()
            if name in kept or name not in every}


# A safetensors header lists each tensor's name, dtype, shape and offsets: ~100 bytes a tensor, so a few
# hundred KB for the largest model here. safetensors itself allows 100 MB; a longer one is refused unread.
MAX_SAFETENSORS_HEADER_BYTES = 4 * 1024**2


def safetensors_header_length(head: bytes, name: str) -> int:
    """The header length a safetensors file's first 8 bytes announce (little-endian u64), refused when it
    is not plausible: a file of zeros, or a header longer than `MAX_SAFETENSORS_HEADER_BYTES`."""
    if len(head) < 8:
        raise UserInputError(f"{name} is not a readable .safetensors file (it is {len(head)} bytes long)")
    length = int.from_bytes(head[:8], "little")
    if not 2 <= length <= MAX_SAFETENSORS_HEADER_BYTES:
        raise UserInputError(f"{name} is not a readable .safetensors file (its header claims {length:,} bytes)")
    return length


def check_shapes(name: str, shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """Compare the tensor shapes of a weights file called `name` (from its header) with `expected_shapes`
    of a model: the first difference is a UserInputError."""
    for tensor, shape in shapes.items():
        if tensor not in expected and not tensor.startswith("lm_head."):
            raise UserInputError(f"{name} holds {tensor!r}, which this model does not have")
        if tensor in expected and shape != expected[tensor]:
            raise UserInputError(f"{name}: {tensor} has shape {shape}, the model expects {expected[tensor]}")
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise UserInputError(f"{name} lacks weights for {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


def check_weights_file(path: str | Path, config: GPTConfig,
                       expected: dict[str, tuple[int, ...]] | None = None) -> None:
    """Compare a safetensors header with the model `config` describes, before building anything: a file
    whose tensors do not match (or that is truncated) is refused with the first difference. `expected`:
    `expected_shapes(config)` when the caller has it already."""
    path = Path(path)
    with open(path, "rb") as handle:
        safetensors_header_length(handle.read(8), path.name)
    with _open_safetensors(path) as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    check_shapes(path.name, shapes, expected if expected is not None else expected_shapes(config))
    size = path.stat().st_size
    needed = sum(math.prod(shape) for shape in shapes.values())  # elements; at least one byte each
    if size < needed:
        raise UserInputError(f"{path.name} is truncated ({size:,} bytes for {needed:,} values)")


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS_DIR / f"step_{int(step):07d}.safetensors"


# -- trainer state --------------------------------------------------------------------------------
def save_trainer_state(run_dir: str | Path, state: dict) -> Path:
    """Write the trainer state (tensors, numbers, strings, lists and dicts only) atomically."""
    return atomic_write(Path(run_dir) / STATE_FILE, lambda tmp: torch.save(state, tmp))


# What `Trainer.resume` reads from a trainer state; a file without them is not one.
STATE_KEYS = ("model", "optimizer", "scaler", "step", "tokens", "elapsed", "best_val_loss", "best_step",
              "next_snapshot", "torch_rng")


def load_trainer_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise UserInputError(f"{run_dir} has no {STATE_FILE}: it cannot be resumed (was it trained to the end "
                             "and shipped without its trainer state?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, foreign, or holding something weights_only refuses
        reason = str(error).split(". ")[0].splitlines()[0][:200] if str(error) else type(error).__name__
        raise UserInputError(f"{STATE_FILE} of {Path(run_dir).name} is damaged and cannot be resumed from ({reason}); "
                             f"train the run again with --config {Path(run_dir) / CONFIG_FILE} --out NEW_FOLDER"
                             ) from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserInputError(f"{STATE_FILE} of {Path(run_dir).name} is not a trainer state (it lacks "
                             f"{', '.join(missing)}); it cannot be resumed from")
    return state


# -- metrics --------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def append_metrics(run_dir: str | Path, row: dict) -> None:
    """Append one row to metrics.jsonl with a single write, so a reader sees whole lines or a partial last."""
    line = json.dumps({k: _json_safe(v) for k, v in row.items()}, ensure_ascii=False) + "\n"
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


# Readers keep what they parsed: rows of at most this many bytes of metrics files in all (the runs being
# viewed or compared), and summaries of any number of runs (the runs table).
MAX_CACHED_METRICS_BYTES = 64 * 1024**2
MAX_CACHED_SUMMARIES = 1024
# A line longer than this is not a metrics row (an upload's, or a torn write): it is skipped, never held whole.
MAX_METRICS_LINE_BYTES = 1024**2
_READ_CHUNK = 1024**2
# Rows the summary leaves unparsed: frequent (train, phase) or large (sample text, head scores).
_SKIPPED_KINDS = (b'{"kind": "train"', b'{"kind": "phase"', b'{"kind": "sample"', b'{"kind": "heads"')


def _parse_row(line: bytes) -> dict | None:
    """One metrics line as a row; None for a broken line or anything but a JSON object."""
    try:
        row = json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


class _MetricsReader:
    """What has been read of one metrics.jsonl: only complete lines, and only those appended since the last
    `update` (keyed by the file's identity, size and modification time). A file that was replaced (another
    inode, or the same inode number reused by a new file: its first bytes differ) or got shorter is read
    again from its start."""

    def __init__(self) -> None:
        self.identity: tuple[int, int] | None = None
        self.stamp: tuple[int, int] | None = None
        self.offset = 0  # bytes of complete lines consumed
        self.head = b""  # the file's first bytes when it was first read
        self.reset()

    def reset(self) -> None:
        self.offset, self.head = 0, b""

    def add(self, line: bytes) -> None:
        raise NotImplementedError

    def update(self, path: Path) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            self.identity, self.stamp = None, None
            self.reset()
            return
        identity, stamp = (stat.st_dev, stat.st_ino), (stat.st_size, stat.st_mtime_ns)
        if (identity, stamp) == (self.identity, self.stamp):
            return
        if identity != self.identity or stat.st_size < self.offset:
            self.reset()
        self.identity, self.stamp = identity, stamp
        with open(path, "rb") as handle:
            if self.offset and handle.read(len(self.head)) != self.head:
                self.reset()
            if not self.head:
                self.head = handle.read(256)
            handle.seek(self.offset)
            pending = b""
            while chunk := handle.read(_READ_CHUNK):
                data = pending + chunk
                end = data.rfind(b"\n") + 1
                for line in data[:end].split(b"\n")[:-1]:
                    if len(line) <= MAX_METRICS_LINE_BYTES:
                        self.add(line)
                self.offset += end
                pending = data[end:]
                if len(pending) > MAX_METRICS_LINE_BYTES:  # no row is this long: skip it (its end parses as broken)
                    self.offset += len(pending)
                    pending = b""


class _MetricsRows(_MetricsReader):
    def reset(self) -> None:
        super().reset()
        self.rows: list[dict] = []

    def add(self, line: bytes) -> None:
        row = _parse_row(line)
        if row is not None:
            self.rows.append(row)


@dataclass(frozen=True)
class MetricsSummary:
    """The rows of a run's metrics the runs table and the run's state need: the last status, train and
    eval rows, the last whole-split evaluation, and the highest step logged (None when absent)."""

    status: dict | None = None
    train: dict | None = None
    eval: dict | None = None
    final_eval: dict | None = None
    step: int | None = None


class _MetricsSummaryReader(_MetricsReader):
    """Parses only status and eval rows (and the last train row), so a long run's summary costs a scan of
    its file once and then only what is appended."""

    def reset(self) -> None:
        super().reset()
        self.last: dict[str, dict] = {}
        self.final_eval: dict | None = None
        self.step: int | None = None
        self.train_line: bytes | None = None

    def add(self, line: bytes) -> None:
        if line.startswith(_SKIPPED_KINDS):
            if line.startswith(_SKIPPED_KINDS[0]):
                self.train_line = line
            return
        row = _parse_row(line)
        if row is None:
            return
        self._count(row)
        self.last[str(row.get("kind"))] = row
        if row.get("kind") == "eval" and row.get("scope") == "full":
            self.final_eval = row

    def _count(self, row: dict) -> None:
        step = row.get("step")
        if isinstance(step, int) and (self.step is None or step > self.step):
            self.step = step

    def summary(self) -> MetricsSummary:
        train = _parse_row(self.train_line) if self.train_line is not None else None
        if train is not None:
            self._count(train)
            self.last["train"], self.train_line = train, None
        return MetricsSummary(status=self.last.get("status"), train=self.last.get("train"),
                              eval=self.last.get("eval"), final_eval=self.final_eval, step=self.step)


_metrics_rows: OrderedDict[str, _MetricsRows] = OrderedDict()
_metrics_summaries: OrderedDict[str, _MetricsSummaryReader] = OrderedDict()
_metrics_lock = threading.Lock()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """All rows of metrics.jsonl (only those of `kind` when given). A partial or broken line is skipped,
    so this is safe to call while a training process appends; only lines appended since the last call
    are parsed. The rows are shared between callers: read them, never change them."""
    path = Path(run_dir) / METRICS_FILE
    key = os.path.abspath(path)
    with _metrics_lock:
        reader = _metrics_rows.pop(key, None) or _MetricsRows()
        reader.update(path)
        _metrics_rows[key] = reader  # most recently used last
        while len(_metrics_rows) > 1 and sum(r.offset for r in _metrics_rows.values()) > MAX_CACHED_METRICS_BYTES:
            _metrics_rows.popitem(last=False)
        rows = reader.rows
        return list(rows) if kind is None else [row for row in rows if row.get("kind") == kind]


def metrics_summary(run_dir: str | Path) -> MetricsSummary:
    """The last status / train / eval rows, the last whole-split evaluation and the highest step, parsing
    only status and eval rows once and then only what is appended."""
    path = Path(run_dir) / METRICS_FILE
    key = os.path.abspath(path)
    with _metrics_lock:
        reader = _metrics_summaries.pop(key, None) or _MetricsSummaryReader()
        reader.update(path)
        _metrics_summaries[key] = reader
        while len(_metrics_summaries) > MAX_CACHED_SUMMARIES:
            _metrics_summaries.popitem(last=False)
        return reader.summary()


def run_status(run_dir: str | Path) -> dict | None:
    """The last `status` row of a run (status: running | stopped | finished | diverged | failed), or None."""
    return metrics_summary(run_dir).status


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Cut metrics.jsonl back to the rows of a checkpoint at `step` before a resumed run appends: rows of
    later steps (logged after the checkpoint by the process that stopped or died) and broken or torn lines
    go, so no step is logged twice and the next row starts on a line of its own. Status rows stay (the
    run's history: e.g. where it diverged before it was resumed). Returns the rows removed; the file is
    rewritten (atomically) only when something goes."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    removed = 0
    with open(path, "rb") as handle:
        for line in handle:
            row = _parse_row(line) if line.endswith(b"\n") and len(line) <= MAX_METRICS_LINE_BYTES else None
            if row is None or _after(row, step):
                removed += 1
    if removed == 0:
        return 0

    def write(tmp: Path) -> None:
        with open(path, "rb") as source, open(tmp, "wb") as sink:
            for line in source:
                row = _parse_row(line) if line.endswith(b"\n") and len(line) <= MAX_METRICS_LINE_BYTES else None
                if row is not None and not _after(row, step):
                    sink.write(line)

    atomic_write(path, write)
    return removed


def _after(row: dict, step: int) -> bool:
    value = row.get("step")
    return row.get("kind") != "status" and isinstance(value, int | float) and value > step


# -- the config file ------------------------------------------------------------------------------
@dataclass
class DataRef:
    """The prepared data folder a run trained on, and its meta.json as it was then."""

    dir: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    """A run's `config.json`: everything needed to train it again, or to load and describe it.

    `train` is None for runs that were not trained here (imported Hugging Face weights)."""

    model: GPTConfig
    train: TrainConfig | None
    data: DataRef
    tokenizer: Tokenizer
    command: str | None = None
    preset: str | None = None
    runtime: dict | None = None

    def to_json(self) -> dict:
        return {"model": self.model.to_dict(), "train": self.train.to_dict() if self.train else {},
                "data": {"dir": self.data.dir, "meta": self.data.meta}, "tokenizer": self.tokenizer.to_dict(),
                "command": self.command, "preset": self.preset, "runtime": self.runtime}

    @classmethod
    def from_json(cls, data: Any, where: str = "config.json") -> RunConfig:
        """Parse a config.json object (also those written before `preset`/`runtime` existed)."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise UserInputError(f"{where} is not a run config: it needs a JSON object with a \"model\" object")
        train = data.get("train") or None
        raw_data = data.get("data") or {}
        if not isinstance(raw_data, dict) or not isinstance(raw_data.get("meta") or {}, dict):
            raise UserInputError(f"{where}: \"data\" must be an object with \"dir\" and \"meta\"")
        tokenizer = data.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, dict):
            raise UserInputError(f"{where}: \"tokenizer\" must be an object")
        try:
            return cls(model=GPTConfig.from_dict(data["model"]),
                       train=TrainConfig.from_dict(train) if train is not None else None,
                       data=DataRef(str(raw_data.get("dir") or ""), dict(raw_data.get("meta") or {})),
                       tokenizer=Tokenizer.from_dict(tokenizer), command=data.get("command"),
                       preset=data.get("preset"), runtime=data.get("runtime"))
        except UserInputError as error:
            raise UserInputError(f"{where}: {error}", field=error.field) from None
        except (TypeError, ValueError) as error:
            raise UserInputError(f"{where} does not describe a run: {error}") from None

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserInputError(f"no config file at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserInputError(f"{path.name} is not valid JSON: {error}") from None
        return cls.from_json(data, where=path.name)

    def write(self, run_dir: str | Path) -> Path:
        return atomic_write_json(Path(run_dir) / CONFIG_FILE, self.to_json())


def train_command(run_dir: str | Path, config: RunConfig) -> str:
    """The one command line that trains this run again: `python -m gpt train --data D --preset P --out RUN`
    plus a flag for every field that differs from the preset (the model card's "Reproduce")."""
    from gpt.config import FIELD_GROUPS, get_preset

    preset = get_preset(config.preset or "tiny")
    base = {**GPTConfig.from_dict(preset.model).to_dict(), **TrainConfig.from_dict(preset.train).to_dict()}
    values = {**config.model.to_dict(), **(config.train.to_dict() if config.train else {})}
    values.pop("vocab_size")
    # a group with any field changed is given whole, since giving one of its fields replaces the others
    given_whole = {key for group in FIELD_GROUPS if any(values.get(k) != base.get(k) for k in group) for key in group}
    parts = ["python", "-m", "gpt", "train", "--data", config.data.dir, "--preset", preset.name, "--out", str(run_dir)]
    for name, value in values.items():
        changed = value != base.get(name) or name in given_whole
        if not changed or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif str(value).startswith("-"):
            parts.append(f"{flag}={value}")  # `--sample-prompt -x` would read -x as a flag
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def create_run(run_dir: str | Path, config: RunConfig) -> Path:
    """Write a new run's config.json (the trainer, `import-hf` and tests start runs here). A folder that
    already holds a trained run (a checkpoint) is refused; one with only a config or leftovers of a start
    killed before its first checkpoint is cleaned and reused."""
    run_dir = Path(run_dir)
    if has_checkpoint(run_dir):
        raise UserInputError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                             "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in (METRICS_FILE, CARD_FILE, STATE_FILE, BEST_FILE):  # of a start killed mid-checkpoint
        (run_dir / leftover).unlink(missing_ok=True)
    for snapshot in (run_dir / SNAPSHOTS_DIR).glob("step_*.safetensors"):
        snapshot.unlink(missing_ok=True)
    remove_temporary_files(run_dir)
    if config.command is None and config.train is not None:
        config.command = train_command(run_dir, config)
    config.write(run_dir)
    return run_dir


def log_path(run_dir: str | Path) -> Path:
    """The output of an app-started training job (`train.log`)."""
    return Path(run_dir) / LOG_FILE


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a complete checkpoint exists: model.safetensors is written last of a checkpoint (after the
    trainer state and best.safetensors), so a folder counts as a run only once it has one."""
    return (Path(run_dir) / LAST_FILE).is_file()


def remove_temporary_files(run_dir: str | Path) -> int:
    """Delete `.*.tmp` files an interrupted atomic write left behind; returns how many."""
    run_dir = Path(run_dir)
    removed = 0
    for folder in (run_dir, run_dir / SNAPSHOTS_DIR):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


# -- reading runs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    """One loadable checkpoint of a run: `name` is what `Run.load(checkpoint=...)` accepts."""

    name: str
    step: int
    path: Path


@dataclass
class LoadedRun:
    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    run_dir: Path
    step: int
    checkpoint: str


RUN_STATES = ("new", "running", "running elsewhere", "interrupted", "stopped", "finished", "diverged", "failed",
              "ready")


def resolve_run_dir(run: str | Path) -> Path:
    """A run folder given as a path, or as a name under `CHECKPOINTS_DIR`."""
    path = Path(run)
    if not path.is_dir() and not path.is_absolute() and (CHECKPOINTS_DIR / path).is_dir():
        path = CHECKPOINTS_DIR / path
    if not (path / CONFIG_FILE).is_file():
        raise UserInputError(f"{run} is not a run folder (no {CONFIG_FILE}); runs live in {CHECKPOINTS_DIR}")
    return path


class Run:
    """One run folder, read through its typed config. `Run.open("shakespeare-5min")`."""

    def __init__(self, run_dir: Path, config: RunConfig) -> None:
        self.dir = run_dir
        self.config = config

    @classmethod
    def open(cls, run: str | Path) -> Run:
        run_dir = resolve_run_dir(run)
        return cls(run_dir, RunConfig.read(run_dir / CONFIG_FILE))

    @property
    def name(self) -> str:
        return self.dir.name

    def metrics(self, kind: str | None = None) -> list[dict]:
        return read_metrics(self.dir, kind)

    def status(self) -> dict | None:
        """The last status row (status: running | stopped | finished | diverged | failed), or None."""
        return run_status(self.dir)

    def summary(self) -> MetricsSummary:
        """The last status / train / eval rows and the highest step (`metrics_summary`)."""
        return metrics_summary(self.dir)

    def wandb_link(self) -> tuple[str, str] | None:
        """(label, text) of the W&B run page (or offline folder + `wandb sync` command) of the latest
        training start, read from its first status row, where the trainer puts `WandbLogger.where()`."""
        for row in reversed(self.metrics("status")):
            found = WANDB_NOTE.search(str(row.get("message", "")))
            if found:
                return found.group(1), found.group(2)
        return None

    def state(self, running_here: bool = False) -> str:
        """One of `RUN_STATES`. `running_here`: this server's job trains the run now. A `running` status
        with no process here is "running elsewhere" while its metrics keep changing (the command line, a
        second server), else "interrupted" (the process died without a final status)."""
        if running_here:
            return "running"
        status = (self.status() or {}).get("status")
        if status is None:
            return "ready" if has_checkpoint(self.dir) else "new"
        if status == "running":
            return "running elsewhere" if self.recently_written() else "interrupted"
        return status

    def recently_written(self, seconds: float = RUNNING_ELSEWHERE_SECONDS) -> bool:
        metrics = self.dir / METRICS_FILE
        return metrics.is_file() and time.time() - metrics.stat().st_mtime < seconds

    def last_modified(self) -> float:
        for name in (METRICS_FILE, LAST_FILE, CONFIG_FILE):
            if (self.dir / name).is_file():
                return (self.dir / name).stat().st_mtime
        return 0.0

    def has_trainer_state(self) -> bool:
        return (self.dir / STATE_FILE).is_file()

    def trainer_state(self) -> dict:
        return load_trainer_state(self.dir)

    @property
    def log_path(self) -> Path:
        return log_path(self.dir)

    def checkpoints(self) -> list[CheckpointInfo]:
        """Snapshots in step order, then `best` (when stored apart from the last), then `last`."""
        infos = []
        for path in (self.dir / SNAPSHOTS_DIR).glob("step_*.safetensors"):
            step = path.stem.removeprefix("step_")  # the step is in the name (`snapshot_path`): no file is opened
            if step.isdigit():
                infos.append(CheckpointInfo(f"snapshot:{int(step)}", int(step), path))
        infos.sort(key=lambda info: info.step)
        for name, file in (("best", BEST_FILE), ("last", LAST_FILE)):
            if (self.dir / file).is_file():
                infos.append(CheckpointInfo(name, checkpoint_step(self.dir / file), self.dir / file))
        return infos

    def checkpoint_path(self, checkpoint: str) -> tuple[str, Path]:
        """(name, file) of "last", "best" or "snapshot:STEP"."""
        text = str(checkpoint)
        if text == "last":
            return "last", self.dir / LAST_FILE
        if text == "best":
            best = self.dir / BEST_FILE
            return "best", best if best.is_file() else self.dir / LAST_FILE
        if text.startswith("snapshot:"):
            try:
                step = int(text.split(":", 1)[1])
            except ValueError:
                raise UserInputError(f"bad checkpoint {text!r}: use snapshot:STEP with an integer step") from None
            path = snapshot_path(self.dir, step)
            if not path.is_file():
                steps = [info.step for info in self.checkpoints() if info.name.startswith("snapshot:")]
                raise UserInputError(f"{self.name} has no snapshot at step {step}; it has steps {steps}")
            return text, path
        raise UserInputError(f"unknown checkpoint {text!r}: use last, best or snapshot:STEP")

    def load(self, checkpoint: str | Path = "last", device: str | torch.device = "cpu") -> LoadedRun:
        """The model (eval mode, on `device`) and tokenizer of a checkpoint: "last", "best",
        "snapshot:STEP", or a path to a .safetensors file (for the command line)."""
        if isinstance(checkpoint, Path) or str(checkpoint).endswith(".safetensors"):
            name, path = str(checkpoint), Path(checkpoint)
            if not path.is_file():
                raise UserInputError(f"no checkpoint at {path}")
        else:
            name, path = self.checkpoint_path(str(checkpoint))
        if not path.is_file():
            raise UserInputError(f"{self.name} has no weights yet ({path.name} is missing): has training saved "
                                 "a step?")
        tokenizer = self.config.tokenizer
        if tokenizer.vocab_size != self.config.model.vocab_size:
            raise UserInputError(f"{self.name}: tokenizer has {tokenizer.vocab_size} tokens but the model "
                                 f"{self.config.model.vocab_size}")
        check_weights_file(path, self.config.model)
        model = GPT(self.config.model)
        step = load_weights(model, path)
        model.to(device).eval()
        return LoadedRun(model=model, tokenizer=tokenizer, config=self.config, run_dir=self.dir, step=step,
                         checkpoint=name)


def load_run(run_dir: str | Path, checkpoint: str | Path = "last", device: str | torch.device = "cpu") -> LoadedRun:
    """`Run.open(run_dir).load(checkpoint, device)`."""
    return Run.open(run_dir).load(checkpoint, device)


def list_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    return Run.open(run_dir).checkpoints()


def read_config(run_dir: str | Path) -> RunConfig:
    return RunConfig.read(resolve_run_dir(run_dir) / CONFIG_FILE)


def list_runs(root: str | Path = CHECKPOINTS_DIR) -> list[Path]:
    """Run folders under `root` that have weights, newest first (by last modification of their metrics).
    Hidden folders (an upload being checked) are not runs."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_FILE).is_file()
            and has_checkpoint(p)]

    def modified(run: Path) -> float:
        metrics = run / METRICS_FILE
        return (metrics if metrics.is_file() else run / LAST_FILE).stat().st_mtime

    return sorted(runs, key=modified, reverse=True)
