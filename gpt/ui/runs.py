"""Runs as the app shows them: the app's list of runs, choices for dropdowns, the runs table, the state a
run is in, and zip download / upload.

Dropdown values are run names, never server paths; `known_run` turns a value back into a folder only
through the app's own list, so a handler can never be pointed at a folder the app did not list, and its
message quotes only the value it was given (shortened).

An uploaded run is untrusted, and nothing it claims costs the server more than the bytes it really holds:

- only its JSON, text and safetensors files are kept (never a pickle such as `trainer_state.pt`), and
  member paths cannot leave the upload folder;
- before anything is unpacked: at most `MAX_UPLOAD_MEMBERS` entries, each file kind within its cap and the
  total within `MAX_UPLOAD_BYTES` (sizes from the zip directory); the model its config.json describes within
  `MAX_UPLOAD_LAYERS` / `MAX_UPLOAD_CONTEXT` / `MAX_UPLOAD_PARAMETERS` (counted, not built); and every
  safetensors header read from the zip stream and compared with that model's shapes (computed on the meta
  device) and with the file's size;
- while unpacking, a member's stream is cut off at the size its entry declares (a zip directory can lie);
- after unpacking, every weights file is opened with safetensors. A bad `model.safetensors` refuses the
  upload; a bad snapshot or `best.safetensors` is left out with a note, as is a text file over its cap.

The run is checked in a hidden staging folder (`.upload-*`, never listed) and appears under its own name
only once it passed, with the same permissions as a run trained here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import tempfile
import zipfile
import zlib
from pathlib import Path

import pandas as pd
from gradio.utils import get_upload_folder

from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.run import (
    BEST_FILE,
    CONFIG_FILE,
    DEFAULT_RUN,
    LAST_FILE,
    SNAPSHOTS_DIR,
    Run,
    RunConfig,
    check_shapes,
    check_weights_file,
    expected_shapes,
    list_runs,
    safetensors_header_length,
    snapshot_path,
)
from gpt.ui.common import AppDirs, error_text, safe_name
from gpt.ui.jobs import JOBS, BurstJob, ProcessJob

MAX_UPLOAD_BYTES = 2 * 1024**3  # everything an upload unpacks to
MAX_UPLOAD_MEMBERS = 1000
# The largest model an upload may describe: GPT-2 medium is 355M parameters, 24 layers, context 1024.
MAX_UPLOAD_PARAMETERS = 500_000_000
MAX_UPLOAD_LAYERS = 96
MAX_UPLOAD_CONTEXT = 16_384
MAX_UPLOAD_SNAPSHOTS = 64
# Caps of the text files a run folder holds (bytes); a longer one is left out with a note.
TEXT_CAPS = {CONFIG_FILE: 4 * 1024**2, "metrics.jsonl": 16 * 1024**2, "samples.jsonl": 4 * 1024**2,
             "README.md": 1024**2, "train.log": 8 * 1024**2}
# Bytes per value of the dtypes a weights file may store.
WEIGHT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
# Files of a run folder an upload may contain; anything else is left out (and reported).
ALLOWED = re.compile(
    r"^(config\.json|model\.safetensors|best\.safetensors|metrics\.jsonl|samples\.jsonl|README\.md|train\.log"
    r"|snapshots/step_\d+\.safetensors)$"
)
# What reading a zip member raises for a damaged, encrypted or unsupported one (never our own UserInputError).
UNZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError)
# What messages quote of a value a client sent (a name, a prompt): enough to recognise it, never megabytes.
QUOTE_CHARS = 80
DOWNLOADS_FOLDER = "run-downloads"  # inside Gradio's cache folder, so Gradio serves the zip without a copy
TABLE_COLUMNS = ["run", "status", "step", "train loss", "val loss", "val ppl", "bits/byte", "scored on", "parameters",
                 "data"]


def quote(value: object) -> str:
    """`value` as a message quotes it: repr'd, and cut to `QUOTE_CHARS` characters."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}… ({len(text):,} characters)"


# -- the app's runs ---------------------------------------------------------------------------------
def all_runs(dirs: AppDirs) -> list[Path]:
    """The shipped default run (when present) first, then the runs in the app's runs folder, newest first."""
    runs = [DEFAULT_RUN] if (DEFAULT_RUN / LAST_FILE).is_file() else []
    return runs + [run for run in list_runs(dirs.runs) if run.resolve() != DEFAULT_RUN.resolve()]


def run_label(run_dir: Path) -> str:
    return f"{run_dir.name} (shipped)" if run_dir.resolve() == DEFAULT_RUN.resolve() else run_dir.name


def run_choices(dirs: AppDirs) -> list[tuple[str, str]]:
    """(label, run name) pairs for a run dropdown."""
    return [(run_label(run), run.name) for run in all_runs(dirs)]


def known_run(dirs: AppDirs, value: str | None) -> Path:
    """The run folder a dropdown value names; only runs the app lists now are accepted (no other paths).
    The value is a run name (a listed run's folder path is accepted too, for older clients)."""
    if value and isinstance(value, str):
        for run in all_runs(dirs):
            if value in (run.name, str(run)):
                return run
    if not value:
        raise UserInputError("choose a run (press ↻ to refresh the list)")
    raise UserInputError(f"unknown run {quote(value)}: choose one of the listed runs (press ↻ to refresh the list)")


def default_run_value(dirs: AppDirs) -> str | None:
    runs = all_runs(dirs)
    return runs[0].name if runs else None


# -- states and the runs table ------------------------------------------------------------------------
def _job_failure(job: ProcessJob | BurstJob) -> str:
    code = job.returncode()
    if isinstance(job, ProcessJob) and code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the training process was killed ({name}) before it could save a final status"
    return job.last_error() or f"the training process exited with code {code}"


def run_state_and_message(run: Run) -> tuple[str, str]:
    """The run's state as the app shows it everywhere (runs table, Train tab status), and the message that
    explains it. This server's job counts as running here; a job of this server that ended with an error,
    or was killed, makes its run "failed" with the job's reason, whatever the run's last status row says
    (a SIGKILLed process leaves a `running` row that would read as "running elsewhere")."""
    job = JOBS.current()
    is_job = job is not None and job.run_dir.resolve() == run.dir.resolve()
    message = (run.status() or {}).get("message", "")
    if is_job and job.is_running():
        return "running", message
    state = run.state()
    if is_job and job.returncode() not in (0, None) and state in ("new", "ready", "running elsewhere",
                                                                   "interrupted"):
        return "failed", _job_failure(job)
    return state, message


def run_state(run: Run) -> str:
    """The state of `run_state_and_message`."""
    return run_state_and_message(run)[0]


def _number(value, digits: int = 4):
    return round(float(value), digits) if isinstance(value, int | float) and math.isfinite(value) else None


def runs_table(dirs: AppDirs) -> pd.DataFrame:
    """One row per run: status and final metrics. The validation figures are the final whole-split
    evaluation when the run has one, else the last in-training estimate (marked "estimate"). Each run's
    metrics are summarised incrementally (`gpt.run.metrics_summary`), so a long metrics file costs one scan
    once and then only what is appended."""
    rows = []
    for path in all_runs(dirs):
        try:
            run = Run.open(path)
            parameters = run.config.model.num_parameters()
        except UserInputError as error:
            rows.append([run_label(path), f"unreadable: {error_text(error)}", None, None, None, None, None, None,
                         "", ""])
            continue
        summary = run.summary()
        shown = summary.final_eval or summary.eval or {}
        rows.append([
            run_label(path),
            run_state(run),
            summary.step,
            _number((summary.train or {}).get("train_loss")),
            _number(shown.get("val_loss")),
            _number(shown.get("perplexity"), 2),
            _number(shown.get("bits_per_byte")),
            "whole split" if summary.final_eval else ("estimate" if shown else ""),
            parameters,
            Path(run.config.data.dir).name,
        ])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


# -- download -------------------------------------------------------------------------------------------
def downloads_dir() -> Path:
    """Where run zips are made: one folder inside Gradio's cache, so the zip is served as it is (no copy)."""
    return Path(get_upload_folder()) / DOWNLOADS_FOLDER


def export_run_zip(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """A zip of the run folder (`<run>/...`, hidden and temporary files left out) as `out_dir/<run>.zip`,
    replacing the previous download of the same run, so downloads keep one zip per run, not one per click.
    Weights are stored (they do not compress), text is deflated."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserInputError(f"{run_dir.name} is not a run folder (no {CONFIG_FILE})")
    out_dir = Path(out_dir) if out_dir is not None else downloads_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{run_dir.name}.zip"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{run_dir.name}.", suffix=".zip.tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for path in sorted(run_dir.rglob("*")):
                relative = path.relative_to(run_dir)
                if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                    continue
                stored = path.suffix == ".safetensors"
                archive.write(path, f"{run_dir.name}/{relative.as_posix()}",
                              compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# -- upload ---------------------------------------------------------------------------------------------
def _member_paths(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Member name inside the run folder -> entry; a single top-level folder in the zip is stripped."""
    files = [info for info in archive.infolist() if not info.is_dir()]
    names = [info.filename.replace("\\", "/") for info in files]
    tops = {name.split("/", 1)[0] for name in names}
    strip = len(tops) == 1 and all("/" in name for name in names)
    return {(name.split("/", 1)[1] if strip else name): info for name, info in zip(names, files, strict=True)}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limit: int) -> bytes:
    """A member's bytes, at most `limit` of them (its stream is cut off there, whatever its entry says)."""
    try:
        with archive.open(info) as stream:
            data = stream.read(limit + 1)
    except UNZIP_ERRORS as error:
        raise UserInputError(f"{name} cannot be read from the zip ({error})") from None
    if len(data) > limit:
        raise UserInputError(f"{name} holds more than the {limit:,} bytes its zip entry declares")
    return data


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, target: Path) -> None:
    """Unpack one member to `target`, stopping (and refusing) as soon as its stream exceeds the size its
    entry declares, and refusing one that ends early or fails its checksum."""
    copied = 0
    try:
        with archive.open(info) as source, open(target, "wb") as sink:
            while chunk := source.read(1024**2):
                copied += len(chunk)
                if copied > info.file_size:
                    break
                sink.write(chunk)
    except UNZIP_ERRORS as error:
        raise UserInputError(f"{name} cannot be unpacked ({error})") from None
    if copied > info.file_size:
        raise UserInputError(f"{name} holds more than the {info.file_size:,} bytes its zip entry declares")
    if copied != info.file_size:
        raise UserInputError(f"{name} ends after {copied:,} of the {info.file_size:,} bytes its zip entry declares")


def check_upload_model(config: GPTConfig) -> None:
    """Refuse a model larger than an upload may describe, counted from its config (nothing is built)."""
    if config.n_layer > MAX_UPLOAD_LAYERS:
        raise UserInputError(f"config.json describes {config.n_layer:,} layers; an uploaded run may have at most "
                             f"{MAX_UPLOAD_LAYERS}")
    if config.context_length > MAX_UPLOAD_CONTEXT:
        raise UserInputError(f"config.json describes a context of {config.context_length:,} tokens; an uploaded "
                             f"run may have at most {MAX_UPLOAD_CONTEXT:,}")
    parameters = config.num_parameters()
    if parameters > MAX_UPLOAD_PARAMETERS:
        raise UserInputError(f"config.json describes {parameters:,} parameters; an uploaded run may have at most "
                             f"{MAX_UPLOAD_PARAMETERS:,}")


def _peek_weights(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str,
                  expected: dict[str, tuple[int, ...]]) -> int | None:
    """Check a weights member from its header alone, read from the zip stream before anything is unpacked:
    its tensors must be the model's (names and shapes) and its size exactly header + their data. Returns
    the step in its metadata (None when absent)."""
    try:
        with archive.open(info) as stream:
            length = safetensors_header_length(stream.read(8), name)  # refuses zeros or a huge header unread
            raw = stream.read(length)
    except UNZIP_ERRORS as error:
        raise UserInputError(f"{name} cannot be read from the zip ({error})") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if len(raw) < length or not isinstance(header, dict):
        raise UserInputError(f"{name} is not a readable .safetensors file (its header is damaged)")
    metadata = header.pop("__metadata__", None) or {}
    shapes, data_end = {}, 0
    for tensor, entry in header.items():
        entry = entry if isinstance(entry, dict) else {}
        shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
        valid = (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
                 and isinstance(offsets, list) and len(offsets) == 2
                 and all(isinstance(n, int) and n >= 0 for n in offsets) and dtype in WEIGHT_DTYPES)
        if not valid or offsets[1] - offsets[0] != math.prod(shape) * WEIGHT_DTYPES[dtype]:
            raise UserInputError(f"{name} is not a readable .safetensors file (its entry for {quote(tensor)} is "
                                 "damaged or not a floating-point tensor)")
        shapes[tensor] = tuple(shape)
        data_end = max(data_end, offsets[1])
    check_shapes(name, shapes, expected)
    if info.file_size != 8 + length + data_end:
        raise UserInputError(f"{name} is {info.file_size:,} bytes, but its header describes {8 + length + data_end:,}")
    step = metadata.get("step") if isinstance(metadata, dict) else None
    return int(step) if isinstance(step, str) and step.isdigit() else None


def _unique_target(dirs: AppDirs, stem: str) -> Path:
    name = safe_name(stem, default="uploaded-run")
    target, suffix = dirs.runs / name, 2
    while target.exists():
        target = dirs.runs / f"{name}-{suffix}"
        suffix += 1
    return target


def import_run_zip(zip_path: str | Path, dirs: AppDirs) -> tuple[Path, list[str]]:
    """Check an uploaded run zip and add it to the runs folder; returns (run folder, notes for the user).
    Everything is checked before anything is built (see the module docstring)."""
    zip_path = Path(zip_path)
    upload = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise UserInputError(f"{upload} is not a zip file: upload a run as downloaded from this app") from error
    with archive:
        if len(archive.infolist()) > MAX_UPLOAD_MEMBERS:
            raise UserInputError(f"{upload} holds {len(archive.infolist()):,} entries; a run zip may hold at most "
                                 f"{MAX_UPLOAD_MEMBERS:,}")
        try:
            kept, notes, config, expected = _plan_upload(archive, upload)
        except UserInputError as error:
            raise UserInputError(f"{upload}: {error}") from None
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=dirs.runs))  # hidden: never listed as a run
        try:
            os.chmod(staging, 0o755)  # mkdtemp makes 0700; run folders trained here are 0755
            try:
                notes += _unpack(archive, kept, staging, config.model, expected)
                Run.open(staging).checkpoints()
            except UserInputError as error:
                raise UserInputError(f"{upload}: the run does not load ({error})") from None
            target = _unique_target(dirs, zip_path.stem)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target, notes


def _plan_upload(archive: zipfile.ZipFile, upload: str
                 ) -> tuple[dict[str, zipfile.ZipInfo], list[str], RunConfig, dict[str, tuple[int, ...]]]:
    """What to unpack, from the zip directory, config.json and the weights headers only; with the run's
    config and its model's tensor shapes."""
    members = _member_paths(archive)
    if CONFIG_FILE not in members or LAST_FILE not in members:
        raise UserInputError(f"it is not a run: it needs {CONFIG_FILE} and {LAST_FILE}")
    notes: list[str] = []
    kept: dict[str, zipfile.ZipInfo] = {}
    for name, info in members.items():
        if not ALLOWED.match(name):
            shown = name if len(name) <= QUOTE_CHARS and name.isprintable() else quote(name)
            notes.append(f"left out {shown}: only the run's JSON, text and .safetensors files are accepted")
        elif name in TEXT_CAPS and info.file_size > TEXT_CAPS[name]:
            if name == CONFIG_FILE:
                raise UserInputError(f"{CONFIG_FILE} is {info.file_size:,} bytes; at most {TEXT_CAPS[name]:,} "
                                     "are accepted")
            notes.append(f"left out {name}: it is {info.file_size:,} bytes, more than the {TEXT_CAPS[name]:,} "
                         "an uploaded run may bring")
        else:
            kept[name] = info
    raw = _read_member(archive, kept[CONFIG_FILE], CONFIG_FILE, min(kept[CONFIG_FILE].file_size,
                                                                       TEXT_CAPS[CONFIG_FILE]))
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{CONFIG_FILE} is not valid JSON: {error}") from None
    config = RunConfig.from_json(data)
    check_upload_model(config.model)
    if config.tokenizer.vocab_size != config.model.vocab_size:
        raise UserInputError(f"{CONFIG_FILE}: the tokenizer has {config.tokenizer.vocab_size} tokens but the model "
                             f"{config.model.vocab_size}")
    expected = expected_shapes(config.model)  # on the meta device: nothing is allocated
    _peek_weights(archive, kept[LAST_FILE], LAST_FILE, expected)
    snapshots = 0
    for name in [name for name in kept if name == BEST_FILE or name.startswith(f"{SNAPSHOTS_DIR}/")]:
        try:
            step = _peek_weights(archive, kept[name], name, expected)
            if name != BEST_FILE:
                file_step = int(name.removeprefix(f"{SNAPSHOTS_DIR}/step_").removesuffix(".safetensors"))
                if name != f"{SNAPSHOTS_DIR}/{snapshot_path('', file_step).name}" or step != file_step:
                    raise UserInputError(f"{name} is named after step {file_step} but its metadata says "
                                         f"{'no step' if step is None else f'step {step}'}")
                snapshots += 1
                if snapshots > MAX_UPLOAD_SNAPSHOTS:
                    raise UserInputError(f"{name} is one snapshot more than the {MAX_UPLOAD_SNAPSHOTS} a run may "
                                         "bring")
        except UserInputError as error:
            del kept[name]
            notes.append(f"{error}: left out, the rest of the run is kept")
    total = sum(info.file_size for info in kept.values())
    if total > MAX_UPLOAD_BYTES:
        raise UserInputError(f"it unpacks to {total:,} bytes, more than the {MAX_UPLOAD_BYTES // 1024**3} GB an "
                             "upload may")
    return kept, notes, config, expected


def _unpack(archive: zipfile.ZipFile, kept: dict[str, zipfile.ZipInfo], staging: Path, model: GPTConfig,
            expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Unpack the planned members into `staging` and open every weights file with safetensors; returns
    notes for the weights left out (a bad model.safetensors refuses the upload)."""
    notes = []
    for name, info in kept.items():
        target = staging / name  # ALLOWED names have no '..' and no absolute paths
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_member(archive, info, name, target)
        if target.suffix != ".safetensors":
            continue
        try:
            check_weights_file(target, model, expected)
        except UserInputError as error:
            if name == LAST_FILE:
                raise
            target.unlink()
            notes.append(f"{error}: left out, the rest of the run is kept")
    return notes
