"""Run folders: atomic writes survive crashes and kills, weights round-trip (tied head, dtypes), metrics
are readable while being appended, and runs/checkpoints are listed and loaded by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt import run as ckpt
from gpt.card import write_model_card
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
SMALL = GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=2, n_embd=8)


def make_run(run_dir: Path, steps: tuple[int, ...] = (0, 5), seed: int = 0) -> GPT:
    """A run folder with snapshots at `steps` and the last weights at the last of them."""
    torch.manual_seed(seed)
    model = GPT(SMALL)
    kept = list(range(SMALL.vocab_size - 1))  # + EOT = 300 tokens
    ckpt.atomic_write_json(run_dir / ckpt.CONFIG_FILE, {
        "model": SMALL.to_dict(), "train": {}, "data": {"dir": "", "meta": {}},
        "tokenizer": Tokenizer(kept).to_dict(), "command": "make_run"})
    for step in steps:
        ckpt.save_weights(model, ckpt.snapshot_path(run_dir, step), step=step)
    ckpt.save_weights(model, run_dir / ckpt.LAST_FILE, step=steps[-1])
    return model


def test_weights_round_trip_with_the_tied_head_stored_once(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = GPT(SMALL)
    path = ckpt.save_weights(model, tmp_path / "w.safetensors", step=42)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
    assert "token_embedding.weight" in stored and "lm_head.weight" not in stored
    other = GPT(SMALL)
    assert ckpt.load_weights(other, path) == 42
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert other.lm_head.weight.data_ptr() == other.token_embedding.weight.data_ptr()


def test_half_precision_storage_halves_the_file(tmp_path: Path) -> None:
    model = GPT(SMALL)
    full = ckpt.save_weights(model, tmp_path / "full.safetensors", step=1)
    half = ckpt.save_weights(model, tmp_path / "half.safetensors", step=1, dtype="float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    other = GPT(SMALL)
    ckpt.load_weights(other, half)
    assert other.token_embedding.weight.dtype == torch.float32
    assert torch.allclose(other.token_embedding.weight, model.token_embedding.weight, atol=1e-3)


def test_loading_a_mismatched_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = ckpt.save_weights(GPT(SMALL), tmp_path / "w.safetensors", step=0)
    wider = GPT(GPTConfig(**{**SMALL.to_dict(), "n_embd": 16}))
    with pytest.raises(UserInputError, match="has shape"):
        ckpt.load_weights(wider, path)
    with pytest.raises(UserInputError, match="no checkpoint"):
        ckpt.load_weights(wider, tmp_path / "missing.safetensors")


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    model = GPT(SMALL)
    ckpt.save_weights(model, path, step=1)
    before = path.read_bytes()

    def crash(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_weights(model, path, step=2)
    assert path.read_bytes() == before
    assert ckpt.checkpoint_step(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary file left


KILL_LOOP = """
import sys, torch
from gpt import run as ckpt
from gpt.card import write_model_card
from gpt.model import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=50257, context_length=64, n_layer=2, n_head=2, n_embd=64))
step = 0
while True:
    ckpt.save_weights(model, sys.argv[1] + "/model.safetensors", step=step)
    ckpt.save_trainer_state(sys.argv[1], {"step": step, "weights": model.token_embedding.weight.detach()})
    print(step, flush=True)
    step += 1
"""


def test_a_kill_at_any_moment_leaves_loadable_files(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites a 13 MB checkpoint in a loop; what is on disk always loads."""
    process = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(tmp_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "0"  # one complete write exists
    for _ in range(2):  # kill it in the middle of later writes
        process.stdout.readline()
    time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    model = GPT(GPTConfig(vocab_size=50257, context_length=64, n_layer=2, n_head=2, n_embd=64))
    assert ckpt.load_weights(model, tmp_path / "model.safetensors") >= 0
    assert torch.load(tmp_path / ckpt.STATE_FILE, weights_only=True)["step"] >= 0


def test_read_metrics_tolerates_a_partial_last_line(tmp_path: Path) -> None:
    ckpt.append_metrics(tmp_path, {"kind": "train", "step": 1, "train_loss": 3.0})
    ckpt.append_metrics(tmp_path, {"kind": "eval", "step": 1, "val_loss": float("nan")})
    with open(tmp_path / ckpt.METRICS_FILE, "a") as handle:
        handle.write('{"kind": "train", "st')  # another process is in the middle of a write
    rows = ckpt.read_metrics(tmp_path)
    assert [row["kind"] for row in rows] == ["train", "eval"]
    assert rows[1]["val_loss"] is None  # NaN is not JSON: written as null
    assert ckpt.read_metrics(tmp_path, kind="eval") == [rows[1]]
    assert ckpt.read_metrics(tmp_path / "nothing") == []
    for line in (tmp_path / ckpt.METRICS_FILE).read_text().splitlines()[:2]:
        json.loads(line)  # strict JSON


def test_list_and_load_checkpoints_by_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = make_run(run, steps=(0, 5, 20))
    infos = ckpt.list_checkpoints(run)
    assert [(i.name, i.step) for i in infos] == [("snapshot:0", 0), ("snapshot:5", 5), ("snapshot:20", 20),
                                                  ("last", 20)]
    loaded = ckpt.load_run(run, "snapshot:5")
    assert loaded.step == 5 and loaded.checkpoint == "snapshot:5"
    assert torch.equal(loaded.model.token_embedding.weight, model.token_embedding.weight)
    assert loaded.tokenizer.is_compact and loaded.tokenizer.vocab_size == 300
    assert ckpt.load_run(run, "best").step == 20  # no best file: the last is the best
    assert ckpt.load_run(run, infos[0].path).step == 0
    with pytest.raises(UserInputError, match="no snapshot at step 7"):
        ckpt.load_run(run, "snapshot:7")
    with pytest.raises(UserInputError, match="unknown checkpoint"):
        ckpt.load_run(run, "newest")
    with pytest.raises(UserInputError, match="not a run folder"):
        ckpt.load_run(tmp_path / "nope")


def test_list_runs_finds_run_folders_newest_first(tmp_path: Path) -> None:
    make_run(tmp_path / "old")
    make_run(tmp_path / "new")
    os.utime(tmp_path / "old" / ckpt.LAST_FILE, (1, 1))
    (tmp_path / "empty").mkdir()
    assert [p.name for p in ckpt.list_runs(tmp_path)] == ["new", "old"]
    assert ckpt.list_runs(tmp_path / "missing") == []


def test_trainer_state_is_weights_only_loadable(tmp_path: Path) -> None:
    state = {"step": 3, "rng": torch.get_rng_state(), "nested": {"betas": (0.9, 0.95)}}
    ckpt.save_trainer_state(tmp_path, state)
    back = torch.load(tmp_path / ckpt.STATE_FILE, weights_only=True)
    assert back["step"] == 3 and torch.equal(back["rng"], state["rng"])
    with pytest.raises(UserInputError, match="cannot be resumed"):
        ckpt.load_trainer_state(tmp_path / "elsewhere")


def test_model_card_states_results_and_the_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run)
    ckpt.append_metrics(run, {"kind": "eval", "step": 5, "val_loss": 2.5, "perplexity": 12.18,
                              "bits_per_byte": 1.1})
    ckpt.append_metrics(run, {"kind": "sample", "step": 5, "prompt": "The", "text": " end"})
    card = write_model_card(run, ckpt.read_config(run), status={"status": "finished", "step": 5}).read_text()
    assert "2.5000 at step 5" in card and "1.1000" in card and "make_run" in card and " end" in card


def test_default_run_is_shipped_and_loads() -> None:
    loaded = ckpt.load_run(ckpt.DEFAULT_RUN)
    assert loaded.step > 0
    evals = ckpt.read_metrics(ckpt.DEFAULT_RUN, kind="eval")
    assert evals and evals[-1]["bits_per_byte"] < 3.0
    assert "python -m gpt train" in loaded.config.command


# -- metrics read incrementally, summaries, resume truncation --------------------------------------
def count_parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes of every metrics line parsed from now on (one entry per line)."""
    parsed: list[int] = []
    parse = ckpt._parse_row

    def counting(line: bytes) -> dict | None:
        parsed.append(len(line))
        return parse(line)

    monkeypatch.setattr(ckpt, "_parse_row", counting)
    return parsed


def test_read_metrics_parses_only_what_was_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = count_parsed(monkeypatch)
    for step in range(5):
        ckpt.append_metrics(tmp_path, {"kind": "train", "step": step, "train_loss": 1.0})
    assert len(ckpt.read_metrics(tmp_path)) == 5 and len(parsed) == 5
    assert len(ckpt.read_metrics(tmp_path, kind="train")) == 5 and len(parsed) == 5  # unchanged: nothing parsed
    with open(tmp_path / ckpt.METRICS_FILE, "a") as handle:
        handle.write('{"kind": "eval", "step": 5, "val_loss": 2.0}\n{"kind": "train", "st')  # + a torn last line
    assert [row["kind"] for row in ckpt.read_metrics(tmp_path)][-1] == "eval" and len(parsed) == 6
    with open(tmp_path / ckpt.METRICS_FILE, "a") as handle:
        handle.write('ep": 6, "train_loss": 0.5}\n')  # the writer finishes its line
    assert ckpt.read_metrics(tmp_path)[-1] == {"kind": "train", "step": 6, "train_loss": 0.5} and len(parsed) == 7
    ckpt.truncate_metrics(tmp_path, 2)  # replaced by a shorter file: read again from the start
    assert [row["step"] for row in ckpt.read_metrics(tmp_path)] == [0, 1, 2]


def test_a_new_file_in_the_place_of_a_read_one_is_read_from_its_start(tmp_path: Path) -> None:
    """A restarted run deletes its metrics and writes new ones, which may get the old inode number back."""
    ckpt.append_metrics(tmp_path, {"kind": "train", "step": 1, "time": 1.0})
    assert len(ckpt.read_metrics(tmp_path)) == 1
    path = tmp_path / ckpt.METRICS_FILE
    stat = path.stat()
    path.write_text('{"kind": "status", "step": 0, "time": 2.0}\n{"kind": "train", "step": 1, "time": 3.0}\n')
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same inode, longer, new content
    assert [row["kind"] for row in ckpt.read_metrics(tmp_path)] == ["status", "train"]


def test_an_endless_line_is_skipped_not_held(tmp_path: Path) -> None:
    ckpt.append_metrics(tmp_path, {"kind": "train", "step": 1})
    with open(tmp_path / ckpt.METRICS_FILE, "a") as handle:
        handle.write('{"kind": "sample", "text": "' + "x" * (3 * ckpt.MAX_METRICS_LINE_BYTES) + '"}\n')
    ckpt.append_metrics(tmp_path, {"kind": "train", "step": 2})
    assert [row["step"] for row in ckpt.read_metrics(tmp_path)] == [1, 2]


def test_summary_matches_the_full_rows_and_parses_only_status_and_eval(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt.append_metrics(tmp_path, {"kind": "status", "step": 0, "status": "running", "message": "go"})
    for step in range(1, 41):
        ckpt.append_metrics(tmp_path, {"kind": "phase", "step": step, "phase": "training"})
        ckpt.append_metrics(tmp_path, {"kind": "train", "step": step, "train_loss": 10.0 / step})
        if step % 10 == 0:
            ckpt.append_metrics(tmp_path, {"kind": "eval", "step": step, "val_loss": 5.0 / step, "scope": "estimate"})
            ckpt.append_metrics(tmp_path, {"kind": "sample", "step": step, "text": "x" * 1000})
            ckpt.append_metrics(tmp_path, {"kind": "heads", "step": step, "scores": [[0.1] * 8] * 8})
    ckpt.append_metrics(tmp_path, {"kind": "eval", "step": 40, "val_loss": 0.2, "scope": "full"})
    ckpt.append_metrics(tmp_path, {"kind": "status", "step": 40, "status": "finished", "message": "done"})
    rows = ckpt.read_metrics(tmp_path)
    parsed = count_parsed(monkeypatch)
    summary = ckpt.metrics_summary(tmp_path)
    last = {kind: [row for row in rows if row.get("kind") == kind][-1] for kind in ("status", "train", "eval")}
    assert (summary.status, summary.train, summary.eval) == (last["status"], last["train"], last["eval"])
    assert summary.final_eval == last["eval"] and summary.step == 40
    assert len(parsed) == 2 + 5 + 1  # the status rows, the eval rows and the last train row, of 131 rows
    assert ckpt.Run.open(ckpt.DEFAULT_RUN).status() == ckpt.read_metrics(ckpt.DEFAULT_RUN, "status")[-1]
    parsed.clear()
    ckpt.append_metrics(tmp_path, {"kind": "train", "step": 41, "train_loss": 0.1})
    assert ckpt.metrics_summary(tmp_path).train["step"] == 41 and len(parsed) == 1


def test_truncate_metrics_keeps_the_checkpoints_rows_and_repairs_a_torn_line(tmp_path: Path) -> None:
    for step in range(8):
        ckpt.append_metrics(tmp_path, {"kind": "train", "step": step})
    ckpt.append_metrics(tmp_path, {"kind": "status", "step": 7, "status": "diverged"})
    with open(tmp_path / ckpt.METRICS_FILE, "a") as handle:
        handle.write('{"kind": "train", "step": 8, "trai')  # the process died mid-write
    assert ckpt.truncate_metrics(tmp_path, 5) == 3  # steps 6 and 7, and the torn line
    ckpt.append_metrics(tmp_path, {"kind": "status", "step": 5, "status": "running", "message": "resumed at step 5"})
    rows = ckpt.read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4, 5, 7, 5]  # status rows are the run's history
    assert rows[-1]["message"] == "resumed at step 5"  # the row after the torn line is whole
    assert ckpt.truncate_metrics(tmp_path, 5) == 0  # nothing to cut: the file is left as it is
    assert ckpt.truncate_metrics(tmp_path / "nothing", 5) == 0


# -- what counts as a run -----------------------------------------------------------------------------
def test_a_folder_is_a_run_only_once_model_safetensors_is_written_last(tmp_path: Path) -> None:
    """A start killed after the trainer state but before model.safetensors is not a run: it is not listed,
    and starting it again cleans what the first start left."""
    run = tmp_path / "run"
    config = ckpt.RunConfig(model=SMALL, train=None, data=ckpt.DataRef(), tokenizer=Tokenizer(list(range(299))))
    ckpt.create_run(run, config)
    ckpt.save_trainer_state(run, {"step": 0})
    ckpt.save_weights(GPT(SMALL), run / ckpt.BEST_FILE, step=0)
    ckpt.save_weights(GPT(SMALL), ckpt.snapshot_path(run, 0), step=0)
    (run / ".model.safetensors.abc.tmp").write_bytes(b"half")
    assert not ckpt.has_checkpoint(run) and ckpt.list_runs(tmp_path) == []
    assert ckpt.Run.open(run).state() == "new"
    ckpt.create_run(run, config)
    assert sorted(p.name for p in run.rglob("*") if p.is_file()) == [ckpt.CONFIG_FILE]
    ckpt.save_weights(GPT(SMALL), run / ckpt.LAST_FILE, step=0)
    with pytest.raises(UserInputError, match="already holds a run"):
        ckpt.create_run(run, config)


def test_a_damaged_snapshot_leaves_the_others_listed_and_fails_clearly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, steps=(0, 5, 20))
    path = ckpt.snapshot_path(run, 5)
    path.write_bytes(path.read_bytes()[:100])
    assert [info.name for info in ckpt.list_checkpoints(run)] == ["snapshot:0", "snapshot:5", "snapshot:20", "last"]
    assert ckpt.load_run(run, "snapshot:20").step == 20
    with pytest.raises(UserInputError, match="step_0000005.safetensors is not a readable"):
        ckpt.load_run(run, "snapshot:5")


@pytest.mark.parametrize("content", [b"", b"not a zip at all", "valid but foreign"])
def test_a_damaged_trainer_state_is_a_clear_error(tmp_path: Path, content: bytes | str) -> None:
    if content == "valid but foreign":
        torch.save({"step": 3}, tmp_path / ckpt.STATE_FILE)
        expected = "not a trainer state"
    else:
        (tmp_path / ckpt.STATE_FILE).write_bytes(content)
        expected = "is damaged and cannot be resumed"
    with pytest.raises(UserInputError, match=expected):
        ckpt.load_trainer_state(tmp_path)


def test_a_zero_filled_weights_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / ckpt.LAST_FILE
    path.write_bytes(bytes(4096))
    with pytest.raises(UserInputError, match="header claims 0 bytes"):
        ckpt.check_weights_file(path, SMALL)
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(UserInputError, match="header claims 1,000,000,000 bytes"):
        ckpt.check_weights_file(path, SMALL)
