"""The Hugging Face Hub: the folder a push uploads (loaded with transformers from disk, restored by `pull`),
a run GPT-2 cannot express, and the real huggingface_hub calls up to where offline mode, a missing token or an
unreachable Hub stop them, each with one clear line. Also the W&B line of the Train tab and the cards."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch

from gpt import hub
from gpt.cli import main
from gpt.config import TrainConfig
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.run import LAST_FILE, DataRef, Run, RunConfig, append_metrics, create_run, save_weights
from gpt.sampling import SamplingConfig, stream_generate
from gpt.tokenizer import Tokenizer
from gpt.train import Trainer

transformers = pytest.importorskip("transformers")
hf_constants = pytest.importorskip("huggingface_hub.constants")

MODEL = {"context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}
TRAIN = {"batch_size": 4, "max_steps": 6, "eval_interval": 3, "eval_batches": 2, "log_interval": 1,
         "sample_tokens": 4, "warmup_steps": 1, "snapshots": 3, "sample_prompt": "ROMEO:"}
EXPORT_FILES = {"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt",
                "tokenizer_config.json"}
FAKE_TOKEN = "hf_thisIsNotARealTokenButMustNeverBeEchoed"


@pytest.fixture(scope="module")
def trained_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A tiny run trained for real with W&B offline: metrics, snapshots, a final whole-split evaluation."""
    root = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_DIR", str(root / "wandb"))
        patch.delenv("WANDB_API_KEY", raising=False)
        (root / "wandb").mkdir()
        trainer = Trainer(GPTConfig(**MODEL), TrainConfig(**TRAIN, wandb="offline"), data_dir,
                          root / "shakespeare-tiny")
        assert trainer.run() == "finished"
    return Run.open(root / "shakespeare-tiny")


@pytest.fixture(scope="module")
def staged(trained_run: Run, tmp_path_factory: pytest.TempPathFactory) -> hub.Staged:
    return hub.stage(trained_run, tmp_path_factory.mktemp("staged") / "repo", repo_id="someone/shakespeare-tiny")


def rope_run(run_dir: Path) -> Run:
    """A run with RoPE and RMSNorm (no GPT-2 form), random weights and one evaluation row."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL, position="rope", norm="rmsnorm"))
    create_run(run_dir, RunConfig(model=model.config, train=None, data=DataRef(), tokenizer=Tokenizer(),
                                  command="tests/test_hub.py rope_run"))
    save_weights(model, run_dir / LAST_FILE, step=0)
    append_metrics(run_dir, {"kind": "eval", "step": 0, "val_loss": 10.8, "scope": "estimate"})
    return Run.open(run_dir)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline mode off, no token anywhere, an empty cache, and the Hub endpoint on a closed local port: the
    real huggingface_hub code runs until the connection is refused (no traffic leaves this machine)."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))


# -- the folder a push uploads ------------------------------------------------------------------------------
def test_staged_folder_loads_with_transformers_and_pipeline(trained_run: Run, staged: hub.Staged) -> None:
    folder = staged.folder
    assert staged.exported and staged.checkpoint == "last"
    assert EXPORT_FILES <= {p.name for p in folder.iterdir()}
    loaded = trained_run.load("last")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf_model).__name__ == "GPT2LMHeadModel"
    ids = loaded.tokenizer.encode("ROMEO: What say you?")
    with torch.no_grad():
        ours = loaded.model(torch.tensor([ids]))[0]
        theirs = hf_model(torch.tensor([loaded.tokenizer.to_gpt2(ids)])).logits
    gpt2_ids = torch.tensor(loaded.tokenizer.to_gpt2(range(loaded.tokenizer.vocab_size)))
    torch.testing.assert_close(theirs[..., gpt2_ids], ours, atol=1e-5, rtol=0)

    generator = transformers.pipeline("text-generation", model=str(folder))
    text = generator("ROMEO:", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    config = SamplingConfig(temperature=0, max_new_tokens=8, stop_at_eot=False)
    expected = "ROMEO:" + "".join(step.text for step in stream_generate(loaded.model, loaded.tokenizer, "ROMEO:",
                                                                        config))
    assert text == expected


def test_staged_card_has_front_matter_labelled_figures_command_curve_and_wandb(trained_run: Run,
                                                                              staged: hub.Staged) -> None:
    card = (staged.folder / "README.md").read_text()
    front, body = card.split("---\n", 2)[1:]
    assert "library_name: transformers" in front and "license: other" in front and "- gpt-playground" in front
    assert 'pipeline("text-generation", model="someone/shakespeare-tiny")' in body
    assert "validation loss, whole split (nats/token)" in body  # the final evaluation, labelled as such
    assert "| last validation loss, estimate |" in body  # in-training evaluations, labelled as estimates
    assert trained_run.config.command in body and "python -m gpt pull someone/shakespeare-tiny" in body
    assert "W&B offline run:" in body and "wandb sync" in body
    assert "](loss_curve.png)" in body and "first 2 validation batches" in body
    png = (staged.folder / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    assert Image.open(staged.folder / "loss_curve.png").size == (1000, 560)
    from gpt.figures import loss_curve_series

    labels = list(loss_curve_series(trained_run.metrics()))
    assert labels[0] == "train loss" and labels[1].startswith("validation loss, in-training estimate")
    assert labels[2].startswith("validation loss, whole split: ")


def test_staged_folder_carries_the_run_without_its_trainer_state(trained_run: Run, staged: hub.Staged) -> None:
    run_copy = staged.folder / hub.HUB_RUN_DIR
    names = {p.relative_to(run_copy).as_posix() for p in run_copy.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "metrics.jsonl"} <= names
    assert "trainer_state.pt" not in names and "train.log" not in names
    snapshots = {info.path.name for info in trained_run.checkpoints() if info.name.startswith("snapshot:")}
    assert snapshots and {f"snapshots/{name}" for name in snapshots} <= names


def test_pull_restores_the_full_run_from_a_staged_folder(trained_run: Run, staged: hub.Staged,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = hub.pull(staged.folder, tmp_path / "restored")
    assert result.kind == "run" and result.snapshots == 3
    restored = Run.open(tmp_path / "restored")
    assert [c.name for c in restored.checkpoints()] == [c.name for c in trained_run.checkpoints()]
    assert restored.metrics() == trained_run.metrics()
    assert restored.wandb_link() == trained_run.wandb_link()
    assert restored.config.to_json() == trained_run.config.to_json()
    for name in [c.name for c in trained_run.checkpoints()]:
        ours, theirs = trained_run.load(name).model.state_dict(), restored.load(name).model.state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert "# restored" in (tmp_path / "restored" / "README.md").read_text()

    with pytest.raises(UserInputError, match="already a run folder; pass --overwrite"):
        hub.pull(staged.folder, tmp_path / "restored")
    assert main(["pull", str(staged.folder), "--out", str(tmp_path / "restored"), "--overwrite"]) == 0
    assert "restored run" in capsys.readouterr().out
    assert Run.open(tmp_path / "restored").metrics() == trained_run.metrics()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_pull_never_replaces_a_folder_that_is_not_a_run(staged: hub.Staged, tmp_path: Path) -> None:
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(UserInputError, match="exists and is not a run folder"):
        hub.pull(staged.folder, keep, overwrite=True)
    assert (keep / "notes.txt").read_text() == "precious"


def test_a_run_gpt2_cannot_express_stages_its_own_files_and_says_why(tmp_path: Path) -> None:
    run = rope_run(tmp_path / "rope-run")
    staged = hub.stage(run, tmp_path / "repo", repo_id="someone/rope-run")
    assert not staged.exported
    assert "cannot export to Hugging Face GPT-2: this model uses position 'rope'" in staged.export_refusal
    root = {p.name for p in staged.folder.iterdir()}
    assert not root & EXPORT_FILES
    assert root == {"README.md", "loss_curve.png", hub.HUB_RUN_DIR}
    card = (staged.folder / "README.md").read_text()
    assert "library_name" not in card and "## No transformers export" in card
    assert staged.export_refusal in card
    assert hub.pull(staged.folder, tmp_path / "back").kind == "run"
    assert Run.open(tmp_path / "back").load().model.config.position == "rope"


def test_bad_repository_ids_and_checkpoints_are_refused_before_anything(trained_run: Run, offline: None) -> None:
    for bad in ("", "a/b/c", "has space/x", "../etc"):
        with pytest.raises(UserInputError, match="repository"):
            hub.push(trained_run, bad)
    with pytest.raises(UserInputError, match="no snapshot at step 999"):
        hub.push(trained_run, "someone/x", checkpoint="snapshot:999")
    with pytest.raises(UserInputError, match="not a Hub license id"):
        hub.stage(trained_run, Path("/nonexistent/never-made"), repo_id="x/y", license="MIT License")


# -- the real huggingface_hub calls, up to where they stop --------------------------------------------------
def test_push_offline_is_one_clear_line_and_sends_nothing(trained_run: Run, offline: None, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert main(["push", str(trained_run.dir), "--repo", "someone/shakespeare-tiny"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: cannot push to someone/shakespeare-tiny: the Hugging Face Hub is off here")
    assert err.count("\n") == 1 and "Traceback" not in err and FAKE_TOKEN not in out + err
    assert list(tmp_path.iterdir()) == []  # nothing was even staged
    with pytest.raises(OfflineModeIsEnabled):  # and the client sends nothing in this mode
        HfApi().create_repo("someone/shakespeare-tiny", token=FAKE_TOKEN)


def test_push_without_a_token_says_how_to_give_one(trained_run: Run, online: None) -> None:
    with pytest.raises(UserInputError, match="needs a Hugging Face token with write access: set HF_TOKEN"):
        hub.push(trained_run, "someone/x", token="  ")


def test_push_to_an_unreachable_hub_fails_at_once_without_echoing_the_token(trained_run: Run, online: None,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    started = time.monotonic()
    assert main(["push", str(trained_run.dir), "--repo", "someone/x", "--private"]) == 2
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert "error: cannot push to someone/x: the Hugging Face Hub is unreachable" in err
    assert "nothing was sent" in err and FAKE_TOKEN not in out + err and "Traceback" not in err
    assert elapsed < 20  # one refused connection, not the client's retries


def test_pull_gpt2_offline_is_a_clear_error(offline: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(UserInputError, match="cannot download gpt2: the Hugging Face Hub is off here .* not in the "
                                             "local Hugging Face cache"):
        hub.pull("gpt2", tmp_path / "gpt2")
    assert main(["import-hf", "gpt2", "--out", str(tmp_path / "gpt2")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot download gpt2")
    assert not (tmp_path / "gpt2").exists()


def test_pull_from_an_unreachable_hub_is_a_clear_error(online: None, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="cannot download someone/run: the Hugging Face Hub is unreachable"):
        hub.pull("someone/run", tmp_path / "run")
    with pytest.raises(UserInputError, match="is not a folder; give a folder or a Hugging Face model id"):
        hub.pull(str(tmp_path / "missing"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_hf_still_takes_a_gpt2_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gpt.hf import export_hf
    from gpt.tokenizer import gpt2_tokenizer

    torch.manual_seed(3)
    model = GPT(GPTConfig(**MODEL, vocab_size=50257))
    export_hf(model, tmp_path / "hf", gpt2_tokenizer())
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.startswith(f"imported {tmp_path / 'hf'} (")
    run = Run.open(tmp_path / "run")
    assert run.config.train is None and "import-hf" in run.config.command
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["n_embd"] == 16
    with torch.no_grad():
        idx = torch.randint(0, 50257, (1, 16))
        torch.testing.assert_close(run.load().model(idx)[0], model.eval()(idx)[0], atol=0, rtol=0)


# -- W&B: where the run's page is ---------------------------------------------------------------------------
def test_wandb_offline_folder_is_in_the_status_line_and_the_card(trained_run: Run) -> None:
    from gpt.ui.hub_panel import wandb_markdown
    from gpt.ui.train_tab import run_progress

    label, text = trained_run.wandb_link()
    assert label == "W&B offline run" and "wandb sync" in text
    folder = text.split(" (upload it with", 1)[0]
    assert Path(folder).is_dir() and Path(folder).name.startswith("offline-run-")
    line = wandb_markdown(trained_run)
    assert line == f"**W&B offline run:** `{folder}` — upload it with `wandb sync {folder}`"
    assert line in run_progress(trained_run.dir, trained_run.metrics())
    assert f"- W&B offline run: {text}" in (trained_run.dir / "README.md").read_text()


def test_wandb_online_link_and_off(tmp_path: Path, data_dir: Path) -> None:
    from gpt.ui.hub_panel import wandb_markdown

    config = RunConfig(model=GPTConfig(**MODEL), train=TrainConfig(**TRAIN, wandb="online"),
                       data=DataRef(str(data_dir)), tokenizer=Tokenizer())
    create_run(tmp_path / "online", config)
    run = Run.open(tmp_path / "online")
    assert "appears here when training starts" in wandb_markdown(run)
    url = "https://wandb.ai/someone/gpt-playground/runs/abc123"
    append_metrics(run.dir, {"kind": "status", "step": 0, "status": "running",
                             "message": f"training 1 parameters on cpu (float32); W&B run: {url}; another note"})
    assert run.wandb_link() == ("W&B run", url)
    assert wandb_markdown(run) == f"**W&B run:** [{url}]({url})"
    config.train = TrainConfig(**TRAIN)
    create_run(tmp_path / "off", config)
    assert wandb_markdown(Run.open(tmp_path / "off")) == ""
