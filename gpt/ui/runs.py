"""Runs as the app shows them: choices for dropdowns, the runs table, and zip download / upload.

An uploaded run is untrusted: only its JSON, text and safetensors files are kept (never a pickle such
as `trainer_state.pt`), member paths cannot leave the upload folder, sizes are capped, and the weights
must load into the model its `config.json` describes before the run is registered.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd

from gpt.checkpoint import (
    CONFIG_FILE,
    DEFAULT_RUN,
    LAST_FILE,
    METRICS_FILE,
    list_runs,
    load_run,
    read_config,
    read_metrics,
    run_status,
)
from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.ui.common import AppDirs, error_text, safe_name
from gpt.ui.jobs import JOBS

MAX_UPLOAD_BYTES = 2 * 1024**3
# Files of a run folder an upload may contain; anything else is left out (and reported).
ALLOWED = re.compile(
    r"^(config\.json|model\.safetensors|best\.safetensors|metrics\.jsonl|samples\.jsonl|README\.md|train\.log"
    r"|snapshots/step_\d+\.safetensors)$"
)
TABLE_COLUMNS = ["run", "status", "step", "train loss", "val loss", "val ppl", "bits/byte", "parameters", "data"]


def all_runs(dirs: AppDirs) -> list[Path]:
    """The shipped default run (when present) first, then the runs in the app's runs folder, newest first."""
    runs = [DEFAULT_RUN] if (DEFAULT_RUN / LAST_FILE).is_file() else []
    return runs + [run for run in list_runs(dirs.runs) if run.resolve() != DEFAULT_RUN.resolve()]


def run_label(run_dir: Path) -> str:
    return f"{run_dir.name} (shipped)" if run_dir.resolve() == DEFAULT_RUN.resolve() else run_dir.name


def run_choices(dirs: AppDirs) -> list[tuple[str, str]]:
    """(label, folder path) pairs for a run dropdown."""
    return [(run_label(run), str(run)) for run in all_runs(dirs)]


def known_run(dirs: AppDirs, value: str | None) -> Path:
    """The run folder a dropdown value names; only runs the app lists are accepted (no arbitrary paths)."""
    for run in all_runs(dirs):
        if value and str(run) == str(value):
            return run
    raise UserInputError(f"unknown run {value!r}: choose one of the listed runs (press ↻ to refresh the list)")


def default_run_value(dirs: AppDirs) -> str | None:
    runs = all_runs(dirs)
    return str(runs[0]) if runs else None


def _number(value, digits: int = 4):
    return round(float(value), digits) if isinstance(value, int | float) and math.isfinite(value) else None


def recently_written(run_dir: Path, seconds: float = 120.0) -> bool:
    """Whether the run's metrics changed lately (a `running` run trained by another process, e.g. the CLI)."""
    metrics = run_dir / METRICS_FILE
    return metrics.is_file() and time.time() - metrics.stat().st_mtime < seconds


def runs_table(dirs: AppDirs) -> pd.DataFrame:
    """One row per run: status and final metrics."""
    job = JOBS.current()
    rows = []
    for run in all_runs(dirs):
        try:
            config = read_config(run)
            parameters = GPTConfig.from_dict(config["model"]).num_parameters()
        except (UserInputError, KeyError, TypeError) as error:
            rows.append([run_label(run), f"unreadable: {error_text(error)}", None, None, None, None, None, None, ""])
            continue
        metrics = read_metrics(run)
        trains = [row for row in metrics if row.get("kind") == "train"]
        evals = [row for row in metrics if row.get("kind") == "eval"]
        status = run_status(run) or {}
        state = status.get("status", "")
        if job is not None and job.run_dir.resolve() == run.resolve() and job.is_running():
            state = "running"
        elif state == "running":
            state = "running elsewhere" if recently_written(run) else "interrupted"
        last_eval = evals[-1] if evals else {}
        rows.append([
            run_label(run),
            state,
            max((row.get("step", 0) for row in metrics), default=None),
            _number(trains[-1].get("train_loss")) if trains else None,
            _number(last_eval.get("val_loss")),
            _number(last_eval.get("perplexity"), 2),
            _number(last_eval.get("bits_per_byte")),
            parameters,
            Path(str((config.get("data") or {}).get("dir", ""))).name,
        ])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def export_run_zip(run_dir: str | Path) -> Path:
    """A zip of the whole run folder in a fresh temporary folder (the file the browser downloads)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserInputError(f"{run_dir.name} is not a run folder (no {CONFIG_FILE})")
    out = Path(tempfile.mkdtemp(prefix="gpt-run-")) / run_dir.name
    return Path(shutil.make_archive(str(out), "zip", root_dir=run_dir.parent, base_dir=run_dir.name))


def _member_paths(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Member name inside the run folder -> entry; a single top-level folder in the zip is stripped."""
    files = [info for info in archive.infolist() if not info.is_dir()]
    names = [info.filename.replace("\\", "/") for info in files]
    tops = {name.split("/", 1)[0] for name in names}
    strip = len(tops) == 1 and all("/" in name for name in names)
    return {(name.split("/", 1)[1] if strip else name): info for name, info in zip(names, files, strict=True)}


def import_run_zip(zip_path: str | Path, dirs: AppDirs) -> tuple[Path, list[str]]:
    """Check an uploaded run zip and add it to the runs folder; returns (run folder, notes for the user)."""
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserInputError(f"{zip_path.name} is not a zip file: upload a run as downloaded from this app") from error
    notes = []
    with archive:
        members = _member_paths(archive)
        if CONFIG_FILE not in members or LAST_FILE not in members:
            raise UserInputError(f"{zip_path.name} is not a run: it needs {CONFIG_FILE} and {LAST_FILE}")
        if sum(info.file_size for info in members.values()) > MAX_UPLOAD_BYTES:
            raise UserInputError(f"{zip_path.name} unpacks to more than {MAX_UPLOAD_BYTES // 1024**3} GB")
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=dirs.runs))
        try:
            for name, info in members.items():
                if not ALLOWED.match(name):
                    notes.append(f"left out {name}: only the run's JSON, text and .safetensors files are accepted")
                    continue
                target = staging / name  # ALLOWED names have no '..' and no absolute paths
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
            try:
                load_run(staging, "last")
            except Exception as error:  # a corrupt file, or a config that describes no valid model
                raise UserInputError(f"{zip_path.name}: the run does not load ({error_text(error)})") from error
            name = safe_name(zip_path.stem, default="uploaded-run")
            target = dirs.runs / name
            suffix = 2
            while target.exists():
                target = dirs.runs / f"{name}-{suffix}"
                suffix += 1
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target, notes
