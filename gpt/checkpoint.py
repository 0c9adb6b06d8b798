"""Run folders: everything one training run writes, and how to read it back.

A run folder `checkpoints/<run>/` holds

- `config.json`: `{"model": GPTConfig dict, "train": TrainConfig dict, "data": {"dir", "meta"},
  "tokenizer": Tokenizer dict, "command": "..."}`;
- `model.safetensors`: the last weights; `best.safetensors`: the best by validation loss (absent when
  the best is the last, see below); `snapshots/step_XXXXXXX.safetensors`: a few checkpoints spread
  across training (for the Inspect tab's "across training" view);
- `trainer_state.pt`: optimizer, step, random states and counters, loadable with
  `torch.load(weights_only=True)`;
- `metrics.jsonl`: one JSON object per line (`kind` = train | eval | sample | status, and `step`),
  appended while training runs and readable at the same time with `read_metrics`;
- `README.md`: a model card.

Every file is written atomically (a temporary file in the same folder, then `os.replace`), so a crash or a
kill at any moment leaves the previous version loadable. Weights are safetensors; the tied LM head is
stored once. `best.safetensors` is removed at the end of a run whose best evaluation is its last step
(to keep shipped runs small); `load_run(..., "best")` then loads `model.safetensors`.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gpt.data import CleanConfig
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
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    if dtype not in SAVE_DTYPES:
        raise UserInputError(f"unknown save dtype {dtype!r}; choose one of {', '.join(SAVE_DTYPES)}")
    tensors = {}
    for name, tensor in _unique_tensors(model.state_dict()).items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(SAVE_DTYPES[dtype])
        tensors[name] = tensor.contiguous()
    metadata = {"format": "pt", "step": str(int(step)), "dtype": dtype}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Load safetensors weights into `model` (tied tensors filled through their twin); return the step."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no checkpoint at {path}")
    state = load_file(str(path))
    own = model.state_dict()
    loaded = {}
    for name, tensor in state.items():
        if name not in own:
            raise UserInputError(f"{path} holds {name!r}, which this model does not have")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise UserInputError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}"
            )
        loaded[name] = tensor.to(own[name].dtype)
    missing = set(own) - set(loaded)
    shared = {(t.untyped_storage().data_ptr(), t.storage_offset()) for n, t in own.items() if n in loaded}
    truly_missing = [n for n in missing if (own[n].untyped_storage().data_ptr(), own[n].storage_offset()) not in shared]
    if truly_missing:
        raise UserInputError(f"{path} lacks weights for {', '.join(sorted(truly_missing))}")
    model.load_state_dict(loaded, strict=False)
    return checkpoint_step(path)


def checkpoint_step(path: str | Path) -> int:
    """The training step recorded in a safetensors file's metadata (-1 when absent)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return int(metadata.get("step", -1))


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS_DIR / f"step_{int(step):07d}.safetensors"


# -- trainer state --------------------------------------------------------------------------------
def save_trainer_state(run_dir: str | Path, state: dict) -> Path:
    """Write the trainer state (tensors, numbers, strings, lists and dicts only) atomically."""
    return atomic_write(Path(run_dir) / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_trainer_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise UserInputError(f"{run_dir} has no {STATE_FILE}: it cannot be resumed (was it trained to the end "
                             "and shipped without its trainer state?)")
    return torch.load(path, map_location="cpu", weights_only=True)


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


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """All rows of metrics.jsonl (only those of `kind` when given). A partial or broken line is skipped,
    so this is safe to call while a training process appends."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and (kind is None or row.get("kind") == kind):
                rows.append(row)
    return rows


def run_status(run_dir: str | Path) -> dict | None:
    """The last `status` row of a run (status: running | stopped | finished | diverged | failed), or None."""
    statuses = read_metrics(run_dir, kind="status")
    return statuses[-1] if statuses else None


# -- reading runs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    """One loadable checkpoint of a run: `name` is what `load_run(checkpoint=...)` accepts."""

    name: str
    step: int
    path: Path


@dataclass
class LoadedRun:
    model: GPT
    tokenizer: Tokenizer
    config: dict
    run_dir: Path
    step: int
    checkpoint: str


def resolve_run_dir(run: str | Path) -> Path:
    """A run folder given as a path, or as a name under `CHECKPOINTS_DIR`."""
    path = Path(run)
    if not path.is_dir() and not path.is_absolute() and (CHECKPOINTS_DIR / path).is_dir():
        path = CHECKPOINTS_DIR / path
    if not (path / CONFIG_FILE).is_file():
        raise UserInputError(f"{run} is not a run folder (no {CONFIG_FILE}); runs live in {CHECKPOINTS_DIR}")
    return path


def read_config(run_dir: str | Path) -> dict:
    path = resolve_run_dir(run_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} is not valid JSON: {error}") from error


def list_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Snapshots in step order, then `best` (when stored apart from the last), then `last`."""
    run_dir = resolve_run_dir(run_dir)
    infos = [
        CheckpointInfo(f"snapshot:{checkpoint_step(p)}", checkpoint_step(p), p)
        for p in sorted((run_dir / SNAPSHOTS_DIR).glob("step_*.safetensors"))
    ]
    infos.sort(key=lambda info: info.step)
    for name, file in (("best", BEST_FILE), ("last", LAST_FILE)):
        if (run_dir / file).is_file():
            infos.append(CheckpointInfo(name, checkpoint_step(run_dir / file), run_dir / file))
    return infos


def _checkpoint_path(run_dir: Path, checkpoint: str | Path) -> tuple[str, Path]:
    text = str(checkpoint)
    if text == "last":
        return "last", run_dir / LAST_FILE
    if text == "best":
        best = run_dir / BEST_FILE
        return ("best", best) if best.is_file() else ("best", run_dir / LAST_FILE)
    if text.startswith("snapshot:"):
        try:
            step = int(text.split(":", 1)[1])
        except ValueError:
            raise UserInputError(f"bad checkpoint {text!r}: use snapshot:STEP with an integer step") from None
        path = snapshot_path(run_dir, step)
        if not path.is_file():
            steps = [info.step for info in list_checkpoints(run_dir) if info.name.startswith("snapshot:")]
            raise UserInputError(f"{run_dir.name} has no snapshot at step {step}; it has steps {steps}")
        return text, path
    path = Path(text)
    if path.suffix != ".safetensors" or not path.is_file():
        raise UserInputError(f"unknown checkpoint {text!r}: use last, best, snapshot:STEP or a .safetensors path")
    return text, path


def model_from_config(config: dict) -> GPT:
    """A freshly initialised model with the architecture recorded in a run's config.json."""
    return GPT(GPTConfig.from_dict(config["model"]))


def load_run(run_dir: str | Path, checkpoint: str | Path = "last", device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run's model (in eval mode, on `device`) and tokenizer.

    `checkpoint`: "last", "best", "snapshot:STEP" (see `list_checkpoints`) or a path to a .safetensors file.
    """
    run_dir = resolve_run_dir(run_dir)
    config = read_config(run_dir)
    name, path = _checkpoint_path(run_dir, checkpoint)
    if not path.is_file():
        raise UserInputError(f"{run_dir} has no weights yet ({path.name} is missing): has training saved a step?")
    model = model_from_config(config)
    step = load_weights(model, path)
    model.to(device).eval()
    tokenizer = Tokenizer.from_dict(config.get("tokenizer"))
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserInputError(
            f"{run_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model {model.config.vocab_size}"
        )
    return LoadedRun(model=model, tokenizer=tokenizer, config=config, run_dir=run_dir, step=step, checkpoint=name)


def list_runs(root: str | Path = CHECKPOINTS_DIR) -> list[Path]:
    """Run folders under `root` that have weights, newest first (by last modification of their metrics)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / CONFIG_FILE).is_file() and (p / LAST_FILE).is_file()]

    def modified(run: Path) -> float:
        metrics = run / METRICS_FILE
        return (metrics if metrics.is_file() else run / LAST_FILE).stat().st_mtime

    return sorted(runs, key=modified, reverse=True)


# -- model card -----------------------------------------------------------------------------------
def _table(rows: Iterable[tuple[str, Any]]) -> str:
    lines = ["| field | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _prepare_command(data: dict) -> list[str]:
    """The `prepare` command that rebuilds the run's data folder, when its meta.json says enough."""
    meta = data.get("meta") or {}
    if not meta.get("inputs") or not data.get("dir"):
        return []
    command = shlex.join(["python", "-m", "gpt", "prepare", *meta["inputs"], "--out", data["dir"]])
    if meta.get("cleaning") not in (None, CleanConfig().to_dict()):
        command += f"  # with the cleaning options in {data['dir']}/meta.json"
    return [command]


def write_model_card(run_dir: str | Path, config: dict, *, status: dict | None = None) -> Path:
    """A human-readable README.md: what was trained on what, how well, and the command that reproduces it."""
    run_dir = Path(run_dir)
    evals = read_metrics(run_dir, kind="eval")
    trains = read_metrics(run_dir, kind="train")
    samples = read_metrics(run_dir, kind="sample")
    model = GPTConfig.from_dict(config["model"])
    meta = (config.get("data") or {}).get("meta") or {}
    parts = [f"# {run_dir.name}", "", "A GPT trained from scratch with GPT Playground.", ""]
    parts += ["## Result", ""]
    result = []
    if status:
        result.append(("status", f"{status.get('status')} at step {status.get('step')}"))
    if evals:
        best = min(evals, key=lambda row: row["val_loss"] if row.get("val_loss") is not None else math.inf)
        last = evals[-1]
        result += [
            ("last validation loss (nats/token)", f"{last['val_loss']:.4f} at step {last['step']}"),
            ("last perplexity", f"{last['perplexity']:.2f}"),
            ("last bits per byte", f"{last['bits_per_byte']:.4f}" if last.get("bits_per_byte") else "n/a"),
            ("best validation loss", f"{best['val_loss']:.4f} at step {best['step']}"),
        ]
    if trains:
        last_train = trains[-1]
        result += [
            ("tokens seen", f"{last_train['tokens']:,}"),
            ("training time", f"{last_train['elapsed']:.0f} s"),
            ("throughput", f"{last_train['tokens_per_second']:.0f} tokens/s"),
        ]
    parts += [_table(result) if result else "No evaluation yet.", ""]
    parts += ["## Model", "", _table([("parameters", f"{model.num_parameters():,}"), *model.to_dict().items()]), ""]
    parts += ["## Training", "", _table((config.get("train") or {}).items()), ""]
    data = config.get("data") or {}
    parts += ["## Data", "", _table([("folder", data.get("dir")), ("tokenizer", (config.get("tokenizer") or {})
                                                                        .get("name"))]
                                    + [(k, meta[k]) for k in ("source", "train_tokens", "val_tokens",
                                                              "train_bytes", "val_bytes") if k in meta]), ""]
    if samples:
        parts += ["## Last sample", "", f"Prompt {samples[-1]['prompt']!r} at step {samples[-1]['step']}:", "",
                  "```", samples[-1]["text"], "```", ""]
    if config.get("command"):
        parts += ["## Reproduce", "", "```bash", *_prepare_command(data), config["command"], "```", ""]
    return atomic_write_text(run_dir / CARD_FILE, "\n".join(parts))
