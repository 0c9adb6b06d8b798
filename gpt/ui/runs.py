"""Runs as the app shows them: the app's list of runs, choices for dropdowns, the runs table, and zip
download / upload.

Dropdown values are run names, never server paths; `known_run` turns a value back into a folder only
through the app's own list, so a handler can never be pointed at a folder the app did not list.

An uploaded run is untrusted: only its JSON, text and safetensors files are kept (never a pickle such
as `trainer_state.pt`), member paths cannot leave the upload folder, sizes are capped, and the weights
must load into the model its `config.json` describes before the run is registered.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from gpt.card import final_evaluation
from gpt.errors import UserInputError
from gpt.run import CONFIG_FILE, DEFAULT_RUN, LAST_FILE, Run, list_runs
from gpt.ui.common import AppDirs, error_text, safe_name
from gpt.ui.jobs import JOBS

MAX_UPLOAD_BYTES = 2 * 1024**3
# Files of a run folder an upload may contain; anything else is left out (and reported).
ALLOWED = re.compile(
    r"^(config\.json|model\.safetensors|best\.safetensors|metrics\.jsonl|samples\.jsonl|README\.md|train\.log"
    r"|snapshots/step_\d+\.safetensors)$"
)
TABLE_COLUMNS = ["run", "status", "step", "train loss", "val loss", "val ppl", "bits/byte", "scored on", "parameters",
                 "data"]


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
    """The run folder a dropdown value names; only runs the app lists are accepted (no arbitrary paths).
    The value is a run name (a listed run's folder path is accepted too, for older clients)."""
    for run in all_runs(dirs):
        if value and value in (run.name, str(run)):
            return run
    shown = Path(str(value)).name if value else value
    raise UserInputError(f"unknown run {shown!r}: choose one of the listed runs (press ↻ to refresh the list)")


def default_run_value(dirs: AppDirs) -> str | None:
    runs = all_runs(dirs)
    return runs[0].name if runs else None


def _number(value, digits: int = 4):
    return round(float(value), digits) if isinstance(value, int | float) and math.isfinite(value) else None


def run_state(run: Run) -> str:
    """The run's state as the app sees it: this server's job counts as running here."""
    job = JOBS.current()
    running_here = job is not None and job.run_dir.resolve() == run.dir.resolve() and job.is_running()
    return run.state(running_here=running_here)


def runs_table(dirs: AppDirs) -> pd.DataFrame:
    """One row per run: status and final metrics. The validation figures are the final whole-split
    evaluation when the run has one, else the last in-training estimate (marked "est.")."""
    rows = []
    for path in all_runs(dirs):
        try:
            run = Run.open(path)
            parameters = run.config.model.num_parameters()
        except UserInputError as error:
            rows.append([run_label(path), f"unreadable: {error_text(error)}", None, None, None, None, None, None,
                         "", ""])
            continue
        metrics = run.metrics()
        trains = [row for row in metrics if row.get("kind") == "train"]
        evals = [row for row in metrics if row.get("kind") == "eval"]
        final = final_evaluation(evals)
        shown = final or (evals[-1] if evals else {})
        rows.append([
            run_label(path),
            run_state(run),
            max((row.get("step", 0) for row in metrics), default=None),
            _number(trains[-1].get("train_loss")) if trains else None,
            _number(shown.get("val_loss")),
            _number(shown.get("perplexity"), 2),
            _number(shown.get("bits_per_byte")),
            "whole split" if final else ("estimate" if shown else ""),
            parameters,
            Path(run.config.data.dir).name,
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
                Run.open(staging).load("last")
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
