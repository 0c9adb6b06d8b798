"""Uploaded runs under attack: models claimed bigger than their weights, zip bombs (small on disk: a
deflate stream of zeros repeated, with the size its zip entry declares), zip entries that lie, damaged
headers and snapshots; and what the app reads of long metrics files, downloads, and states."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from gpt import run as runs
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import Tokenizer
from gpt.ui import runs as ui_runs
from gpt.ui.common import AppDirs

ROOT = Path(__file__).resolve().parent.parent
SMALL = GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=2, n_embd=8)
MB = 1024**2


def make_run(run_dir: Path, steps: tuple[int, ...] = (0, 5)) -> Path:
    """A small trained-looking run: config, snapshots, best, last, metrics, card."""
    torch.manual_seed(0)
    model = GPT(SMALL)
    runs.create_run(run_dir, runs.RunConfig(model=SMALL, train=None, data=runs.DataRef(),
                                            tokenizer=Tokenizer(list(range(299))), command="test"))
    for step in steps:
        runs.save_weights(model, runs.snapshot_path(run_dir, step), step=step)
    runs.save_weights(model, run_dir / runs.BEST_FILE, step=steps[-1])
    runs.save_weights(model, run_dir / runs.LAST_FILE, step=steps[-1])
    runs.append_metrics(run_dir, {"kind": "eval", "step": steps[-1], "val_loss": 5.0, "scope": "full"})
    runs.append_metrics(run_dir, {"kind": "status", "step": steps[-1], "status": "finished", "message": "done"})
    (run_dir / runs.CARD_FILE).write_text("# run\n")
    return run_dir


def zero_stream(megabytes: int) -> bytes:
    """A raw deflate stream that unpacks to `megabytes` MB of zeros, made in milliseconds: one fully
    flushed block of 1 MB of zeros (it refers to nothing before it) repeated, then an empty final block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * megabytes + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def add_raw(archive: zipfile.ZipFile, name: str, deflated: bytes, declared_size: int, crc: int = 0) -> None:
    """A member whose compressed bytes and declared size are given as they are (a bomb, or a lie)."""
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.file_size, info.compress_size, info.CRC = declared_size, len(deflated), crc
    info.header_offset = archive.fp.tell()
    archive.fp.write(info.FileHeader())
    archive.fp.write(deflated)
    archive.filelist.append(info)
    archive.NameToInfo[name] = info
    archive.start_dir = archive.fp.tell()
    archive._didModify = True


def zip_run(run_dir: Path, zip_path: Path, *, replace: dict[str, bytes] | None = None,
            drop: tuple[str, ...] = (), raw: dict[str, tuple[bytes, int]] | None = None) -> Path:
    """Zip a run folder as the app's download does, with members replaced, dropped or added raw."""
    replace, raw = replace or {}, raw or {}
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(run_dir.rglob("*")):
            name = path.relative_to(run_dir).as_posix()
            if path.is_file() and name not in replace and name not in drop and name not in raw:
                archive.write(path, f"{run_dir.name}/{name}")
        for name, data in replace.items():
            archive.writestr(f"{run_dir.name}/{name}", data)
        for name, (deflated, size) in raw.items():
            add_raw(archive, f"{run_dir.name}/{name}", deflated, size)
    return zip_path


@pytest.fixture
def dirs(tmp_path: Path) -> AppDirs:
    return AppDirs(data=tmp_path / "app" / "data", runs=tmp_path / "app" / "runs")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_run(tmp_path / "src" / "my-run")


def config_with(run_dir: Path, **model: object) -> bytes:
    data = json.loads((run_dir / runs.CONFIG_FILE).read_text())
    data["model"].update(model)
    return json.dumps(data).encode()


# -- 1. claimed models --------------------------------------------------------------------------------
RSS_CHECK = r"""
import json, resource, sys, zipfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_reliability_uploads import config_with, make_run, zip_run
from gpt.errors import UserInputError
from gpt.ui.common import AppDirs
from gpt.ui.runs import import_run_zip

tmp = Path(sys.argv[2])
dirs = AppDirs(data=tmp / "data", runs=tmp / "runs")
source = make_run(tmp / "src" / "run")
import_run_zip(zip_run(source, tmp / "warm-up.zip"), dirs)  # every import and first-use cost paid here
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB: the peak so far
messages = []
for claim in json.loads(sys.argv[3]):
    path = zip_run(source, tmp / "claim.zip", replace={"config.json": config_with(source, **claim)})
    try:
        import_run_zip(path, dirs)
        messages.append(None)
    except UserInputError as error:
        messages.append(str(error))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": after - before, "messages": messages}))
"""
CLAIMS = [{"n_layer": 1000}, {"n_layer": 10000}, {"n_layer": 90}, {"n_embd": 65536, "n_head": 1},
          {"context_length": 10**8, "position": "rope"}, {"vocab_size": 300, "n_layer": 1, "n_embd": 16}]


def test_an_upload_claiming_a_huge_model_is_refused_without_building_it(tmp_path: Path) -> None:
    """The server's peak memory does not grow with what config.json claims (the issue: n_layer=1000 in a
    7.6 MB zip took the server from 590 MB to 2.3 GB; n_layer=10000 was on its way to 17.7 GB)."""
    result = subprocess.run([sys.executable, "-c", RSS_CHECK, str(ROOT / "tests"), str(tmp_path), json.dumps(CLAIMS)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    messages = report["messages"]
    assert "1,000 layers; an uploaded run may have at most 96" in messages[0]
    assert "10,000 layers" in messages[1]
    assert "model.safetensors lacks weights for blocks.1." in messages[2]  # within the caps: the header decides
    assert "parameters; an uploaded run may have at most 500,000,000" in messages[3]
    assert "context of 100,000,000 tokens" in messages[4]
    assert "has shape (8,), the model expects (16,)" in messages[5]
    assert all(message.startswith("claim.zip: ") for message in messages)
    assert report["grew_kb"] < 8 * 1024, report  # a few MB at most, whatever the claim


# -- 2. sizes, bombs and lies ---------------------------------------------------------------------------
def test_a_valid_upload_keeps_every_file_and_the_permissions_of_a_trained_run(dirs: AppDirs, source: Path,
                                                                             tmp_path: Path) -> None:
    target, notes = ui_runs.import_run_zip(zip_run(source, tmp_path / "my-run.zip"), dirs)
    assert notes == [] and target == dirs.runs / "my-run"
    names = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    trained_here = dirs.runs / "trained-here"
    make_run(trained_here)
    assert (target.stat().st_mode & 0o777) == (trained_here.stat().st_mode & 0o777) == 0o755
    assert (target / "snapshots").stat().st_mode & 0o777 == 0o755
    assert [info.name for info in runs.Run.open(target).checkpoints()] == ["snapshot:0", "snapshot:5", "best", "last"]


def test_a_gigabyte_readme_and_an_oversized_metrics_file_are_left_out_unread(
        dirs: AppDirs, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[str] = []
    copy = ui_runs._copy_member

    def recording_copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, target: Path) -> None:
        copied.append(name)
        copy(archive, info, name, target)

    monkeypatch.setattr(ui_runs, "_copy_member", recording_copy)
    bomb = zero_stream(1024)
    metrics = zlib.compressobj(9, zlib.DEFLATED, -15)
    line = b'{"kind": "train", "step": 1, "train_loss": 3.0}\n'
    lines = 60 * MB // len(line)
    big_metrics = metrics.compress(line * lines) + metrics.flush()
    path = zip_run(source, tmp_path / "bomb.zip", raw={"README.md": (bomb, 1024 * MB),
                                                        "metrics.jsonl": (big_metrics, lines * len(line))})
    assert path.stat().st_size < 2 * MB
    target, notes = ui_runs.import_run_zip(path, dirs)
    assert any(note.startswith("left out README.md: it is 1,073,741,824 bytes") for note in notes), notes
    assert any(note.startswith("left out metrics.jsonl: it is 62,9") for note in notes), notes
    assert "README.md" not in copied and "metrics.jsonl" not in copied
    assert not (target / "README.md").exists() and runs.Run.open(target).load().step == 5


def test_a_zero_filled_model_is_refused_before_anything_is_unpacked(dirs: AppDirs, source: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[str] = []
    monkeypatch.setattr(ui_runs, "_copy_member", lambda *args: copied.append(args[2]))
    path = zip_run(source, tmp_path / "zeros.zip", raw={"model.safetensors": (zero_stream(1536), 1536 * MB)})
    with pytest.raises(UserInputError, match=r"^zeros.zip: model.safetensors is not a readable .safetensors file "
                                             r"\(its header claims 0 bytes\)"):
        ui_runs.import_run_zip(path, dirs)
    assert copied == [] and list(dirs.runs.iterdir()) == []


def test_bad_snapshots_and_best_are_left_out_with_a_note(dirs: AppDirs, source: Path, tmp_path: Path) -> None:
    good = (source / runs.LAST_FILE).read_bytes()
    other = GPTConfig(**{**SMALL.to_dict(), "n_embd": 16})
    runs.save_weights(GPT(other), tmp_path / "other.safetensors", step=7)
    path = zip_run(source, tmp_path / "mixed.zip", replace={
        "snapshots/step_0000005.safetensors": good[:200],                       # truncated
        "snapshots/step_0000007.safetensors": (tmp_path / "other.safetensors").read_bytes(),  # another model
        "snapshots/step_0000009.safetensors": good,                             # named 9, holds step 5
        "best.safetensors": b"\x00" * 64,
    }, raw={"snapshots/step_0000011.safetensors": (zero_stream(1024), 1024 * MB)})
    target, notes = ui_runs.import_run_zip(path, dirs)
    kept = ": left out, the rest of the run is kept"
    assert sorted(notes) == sorted([
        f"best.safetensors is not a readable .safetensors file (its header claims 0 bytes){kept}",
        "snapshots/step_0000005.safetensors is not a readable .safetensors file (its header is damaged)" + kept,
        f"snapshots/step_0000007.safetensors: blocks.0.attn.proj.bias has shape (16,), the model expects (8,){kept}",
        f"snapshots/step_0000009.safetensors is named after step 9 but its metadata says step 5{kept}",
        f"snapshots/step_0000011.safetensors is not a readable .safetensors file (its header claims 0 bytes){kept}",
    ]), notes
    run = runs.Run.open(target)
    assert [info.name for info in run.checkpoints()] == ["snapshot:0", "last"]  # the run stays usable
    assert run.load("snapshot:0").step == 0


def test_a_zip_entry_that_lies_about_its_size_is_cut_off(dirs: AppDirs, source: Path, tmp_path: Path) -> None:
    """The zip directory says 1,000 bytes; the stream holds 20 MB. Nothing beyond the declared size is
    written, and the upload is refused with a clear message (not an internal error)."""
    path = zip_run(source, tmp_path / "lies.zip", raw={"train.log": (zero_stream(20), 1000)})
    with pytest.raises(UserInputError, match=r"lies.zip: the run does not load \(train.log cannot be unpacked"):
        ui_runs.import_run_zip(path, dirs)
    assert list(dirs.runs.iterdir()) == []  # the staging folder is gone
    path = zip_run(source, tmp_path / "short.zip", raw={"train.log": (zero_stream(1), 5 * MB)})
    with pytest.raises(UserInputError, match="train.log cannot be unpacked|train.log ends after"):
        ui_runs.import_run_zip(path, dirs)


@pytest.mark.parametrize(("change", "message"), [
    ({"drop": ("config.json",)}, "it is not a run: it needs config.json and model.safetensors"),
    ({"replace": {"config.json": b"[1, 2]"}}, "config.json is not a run config"),
    ({"replace": {"config.json": b"{}"}}, "config.json is not a run config"),
    ({"replace": {"config.json": b"\xff\xfe"}}, "config.json is not valid JSON"),
    ({"replace": {"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"}},
     "model.safetensors is not a readable .safetensors file"),
    ({"raw": {"config.json": (zero_stream(8), 8 * MB)}}, "config.json is 8,388,608 bytes; at most 4,194,304"),
])
def test_uploads_that_are_not_runs_are_refused_clearly(dirs: AppDirs, source: Path, tmp_path: Path, change: dict,
                                                       message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        ui_runs.import_run_zip(zip_run(source, tmp_path / "bad.zip", **change), dirs)
    assert list(dirs.runs.iterdir()) == []


def test_too_many_entries_are_refused_from_the_directory(dirs: AppDirs, source: Path, tmp_path: Path) -> None:
    path = zip_run(source, tmp_path / "many.zip")
    with zipfile.ZipFile(path, "a") as archive:
        for index in range(ui_runs.MAX_UPLOAD_MEMBERS):
            archive.writestr(f"my-run/junk/{index}.txt", b"")
    with pytest.raises(UserInputError, match="holds 1,0.. entries; a run zip may hold at most 1,000"):
        ui_runs.import_run_zip(path, dirs)


def test_the_staging_folder_is_never_listed(dirs: AppDirs, source: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """While an upload is checked its folder (`.upload-*`, holding a complete run) is not a run of the app."""
    seen = {}
    unpack = ui_runs._unpack

    def look(*args):
        notes = unpack(*args)
        seen["staging"] = [p.name for p in dirs.runs.iterdir()]
        seen["listed"] = [name for _, name in ui_runs.run_choices(dirs)]
        seen["table"] = list(ui_runs.runs_table(dirs)["run"])
        return notes

    monkeypatch.setattr(ui_runs, "_unpack", look)
    ui_runs.import_run_zip(zip_run(source, tmp_path / "my-run.zip"), dirs)
    assert len(seen["staging"]) == 1 and seen["staging"][0].startswith(".upload-")
    assert not any(name.startswith(".") for name in seen["listed"] + seen["table"])
    with pytest.raises(UserInputError, match="unknown run"):
        ui_runs.known_run(dirs, seen["staging"][0])


# -- the runs table and app start with a 60 MB metrics file --------------------------------------------------
def long_metrics(run_dir: Path, megabytes: int = 60) -> int:
    """Append ~`megabytes` MB of train rows (and an eval every 1,000 steps) to a run's metrics; returns rows."""
    template = ('{{"kind": "train", "step": {0}, "tokens": {1}, "epoch": 0.5, "train_loss": 3.25, "lr": 0.0003, '
                '"grad_norm": 0.5, "tokens_per_second": 12345.6, "seconds_per_step": 0.01, "elapsed": {0}.5, '
                '"time": 1700000000.0}}\n')
    lines, size, step = [], 0, 0
    while size < megabytes * MB:
        step += 1
        line = template.format(step, step * 512)
        if step % 1000 == 0:
            line += f'{{"kind": "eval", "step": {step}, "val_loss": 3.5, "scope": "estimate"}}\n'
        lines.append(line)
        size += len(line)
    with open(run_dir / runs.METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write("".join(lines))
    return step


def test_the_runs_table_reads_a_60_mb_metrics_file_once_and_then_only_its_tail(
        dirs: AppDirs, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(dirs.runs / "long")
    runs.atomic_write_text(run / runs.METRICS_FILE, "")
    runs.append_metrics(run, {"kind": "status", "step": 0, "status": "running", "message": "go"})
    steps = long_metrics(run)
    parsed: list[int] = []
    parse = runs._parse_row
    monkeypatch.setattr(runs, "_parse_row", lambda line: (parsed.append(len(line)), parse(line))[1])
    table = ui_runs.runs_table(dirs)
    row = table[table["run"] == "long"].iloc[0]
    assert row["step"] == steps and row["train loss"] == 3.25 and row["val loss"] == 3.5
    assert row["scored on"] == "estimate"
    assert sum(parsed) < 100_000, f"{sum(parsed):,} bytes parsed of a {(run / runs.METRICS_FILE).stat().st_size:,}"
    parsed.clear()
    for _ in range(3):
        ui_runs.runs_table(dirs)
    assert parsed == []  # unchanged files are not read again
    runs.append_metrics(run, {"kind": "eval", "step": steps, "val_loss": 3.0, "scope": "full"})
    table = ui_runs.runs_table(dirs)
    assert len(parsed) == 1 and table[table["run"] == "long"].iloc[0]["scored on"] == "whole split"


@pytest.mark.slow
def test_app_start_does_not_parse_a_60_mb_metrics_file(tmp_path: Path) -> None:
    """build_demo (every tab's start-up reads) parses a few rows of a run with a 60 MB metrics file."""
    script = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_reliability_uploads import long_metrics, make_run
from gpt import run as runs
run = make_run(Path(sys.argv[2]) / "runs" / "long")
long_metrics(run)
parsed = []
parse = runs._parse_row
runs._parse_row = lambda line: (parsed.append(len(line)), parse(line))[1]
from gpt.ui.app import build_demo
build_demo(data_dir=Path(sys.argv[2]) / "data", runs_dir=Path(sys.argv[2]) / "runs")
print(json.dumps({"bytes": sum(parsed), "lines": len(parsed)}))
"""
    result = subprocess.run([sys.executable, "-c", script, str(ROOT / "tests"), str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bytes"] < 200_000, report


# -- 8. downloads and states ------------------------------------------------------------------------------
def test_downloads_keep_one_zip_per_run(dirs: AppDirs, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "downloads"
    first = ui_runs.export_run_zip(source, out)
    (source / ".model.safetensors.x.tmp").write_bytes(b"a write in progress")
    runs.append_metrics(source, {"kind": "train", "step": 6})
    second = ui_runs.export_run_zip(source, out)
    assert first == second == out / "my-run.zip" and sorted(p.name for p in out.iterdir()) == ["my-run.zip"]
    with zipfile.ZipFile(second) as archive:
        names = archive.namelist()
        assert "my-run/model.safetensors" in names and not any("/." in name for name in names)
        assert archive.getinfo("my-run/model.safetensors").compress_type == zipfile.ZIP_STORED
        assert b'"step": 6' in archive.read("my-run/metrics.jsonl")
    target, _ = ui_runs.import_run_zip(second, dirs)  # what is downloaded uploads again
    assert runs.Run.open(target).load().step == 5
    assert ui_runs.downloads_dir().parent == Path(__import__("gradio").utils.get_upload_folder())


def test_a_killed_job_reads_failed_in_the_table_and_in_the_train_tab(dirs: AppDirs, monkeypatch) -> None:
    """A SIGKILLed training process leaves a `running` status row: the runs table said "running elsewhere"
    while the Train tab said "failed — [running] step 0". Both say failed, with the reason."""
    from gpt.ui import jobs, train_tab

    run = make_run(dirs.runs / "killed")
    runs.append_metrics(run, {"kind": "status", "step": 0, "status": "running", "message": "training"})
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    monkeypatch.setattr(ui_runs.JOBS, "_job", jobs.ProcessJob(run_dir=run, process=process))
    table = ui_runs.runs_table(dirs)
    assert table[table["run"] == "killed"].iloc[0]["status"] == "failed"
    line = train_tab.run_progress(run, runs.read_metrics(run))
    assert line.startswith("**killed: failed** — the training process was killed (SIGKILL)"), line
    assert runs.Run.open(run).state() == "running elsewhere"  # what the folder alone says, for a minute


def test_messages_quote_only_a_short_part_of_what_was_sent(dirs: AppDirs) -> None:
    with pytest.raises(UserInputError) as error:
        ui_runs.known_run(dirs, "x" * 1_000_000)
    assert len(str(error.value)) < 300 and "1,000,002 characters" in str(error.value)
    make_run(dirs.runs / "listed")
    from gpt.ui.models import get_run

    with pytest.raises(UserInputError) as error:
        get_run(dirs.runs / "listed", "/" + "y" * 100_000)
    assert len(str(error.value)) < 300
    with pytest.raises(UserInputError, match="has no checkpoint"):
        get_run(dirs.runs / "listed", ["last"])  # not a string: refused, not a crash
