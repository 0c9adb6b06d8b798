"""The app's endpoints under attack through `gradio_client`: every endpoint that takes a run, a checkpoint
or a dataset is sent absolute server paths, relative escapes and folders the app never listed (a hidden
upload staging folder, a start that never saved, a run outside the runs folder). Each must refuse with a
clear message that quotes only the value sent and reveals no server path; a run trained after start-up
must be served. Then several clients generate at once while a training job runs, and all are served.

The app under test is this module's own (own data and runs folders), so listed runs are known exactly.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, free_port, make_tiny_run
from gradio_client import Client

from gpt import run as runs

ROUTES = {  # endpoint: (its run parameter, its checkpoint parameter or None, the other arguments it needs)
    "/generate": ("run", "checkpoint", {"prompt": "Hi", "max_new_tokens": 2, "seed": 1}),
    "/checkpoints": ("run", None, {}),
    "/inspect_checkpoints": ("run_name", "current", {}),
    "/inspect": ("run", "checkpoint", {"text": "Hi there"}),
    "/logit_lens": ("run", "checkpoint", {"text": "Hi there"}),
    "/embeddings": ("run", "checkpoint", {"n": 50}),
    "/replay": ("run", None, {"text": "Hi there"}),
    "/neighbours": ("run", "checkpoint", {"token": "␣the"}),
    "/download_run": ("run_name", None, {}),
    "/compare_runs": ("selected", None, {}),
    "/push_to_hub": ("run_name", None, {"repo": "someone/model", "token": "hf_not_a_token"}),
}
DATASET_ROUTES = {"/dataset_info": ("dataset_name", {}), "/start_training": ("dataset", {"preset": "tiny"})}
# Parameter names that take a run, a checkpoint or a dataset: an endpoint with one must be in the tables above.
TARGET_NAMES = {"run", "run_name", "checkpoint", "checkpoint_name", "current", "selected", "to_download", "dataset",
                "dataset_name"}
NOT_ATTACKED = {"/runs": "its values only filter the lists it returns", "/prepare": "its name is a new folder, "
                "made safe by safe_name", "/train_summary": "reads only a listed dataset (checked below)",
                "/inspect_download": "reads no folder: it only titles the views the session already holds"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    """(url, root, runs folder, data folder) of an app serving one listed run and one prepared dataset, with
    decoys around it: a run outside its folders, a hidden staging folder and a start that never saved."""
    from gpt.ui.app import build_demo

    root = tmp_path_factory.mktemp("attacked")
    runs_dir, data = root / "runs", root / "data"
    make_tiny_run(runs_dir / "listed")
    shutil.copytree(data_dir, data / "tiny")
    make_tiny_run(root / "outside" / "run")
    shutil.copytree(data_dir, root / "outside" / "data")
    make_tiny_run(runs_dir / ".upload-attack")
    runs.create_run(runs_dir / "half-started", runs.Run.open(runs_dir / "listed").config)
    demo = build_demo(data_dir=data, runs_dir=runs_dir).queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            ssr_mode=False)
    yield url, root, runs_dir, data
    from gpt.ui.jobs import JOBS

    JOBS.shutdown()
    demo.close()


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app[0], verbose=False)


def error_of(client: Client, api_name: str, **kwargs) -> str:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - gradio_client raises AppError, whatever the cause
        client.predict(**kwargs, api_name=api_name)
    return str(caught.value)


def assert_clear_refusal(message: str, sent: str, secrets: list[str]) -> None:
    """A message, not "internal error" or an empty "Error", that names no server path but what was sent."""
    assert message.strip() and "internal error" not in message, message
    shown = message
    for length in range(len(sent), 7, -1):  # the value sent may be quoted (shortened): take it out
        shown = shown.replace(sent[:length], "")
    for secret in secrets:
        assert secret not in shown, f"{secret!r} revealed in {message!r}"
    assert len(message) < 600, f"{len(message):,} characters"


def attacks(root: Path, runs_dir: Path) -> dict[str, str]:
    return {"outside run (absolute)": str(root / "outside" / "run"),
            "outside run (relative)": "../outside/run",
            "hidden staging folder": ".upload-attack",
            "staging folder (absolute)": str(runs_dir / ".upload-attack"),
            "a start that never saved": "half-started",
            "a weights file": str(runs_dir / "listed" / runs.LAST_FILE),
            "a system file": "/etc/passwd",
            "long text": "x" * 5_000}


def test_every_endpoint_taking_a_run_checkpoint_or_dataset_is_attacked(app) -> None:
    url, *_ = app
    api = Client(url, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]
    taking = {name for name, info in api.items()
              if any(param["parameter_name"] in TARGET_NAMES for param in info["parameters"])}
    assert taking - set(ROUTES) - set(DATASET_ROUTES) - set(NOT_ATTACKED) == set()


@pytest.mark.parametrize("api_name", list(ROUTES))
def test_runs_the_app_never_listed_are_refused(app, client: Client, api_name: str) -> None:
    url, root, runs_dir, _ = app
    run_param, checkpoint_param, extra = ROUTES[api_name]
    secrets = [str(root), str(ROOT), str(Path.home()), "/tmp/"]
    for what, value in attacks(root, runs_dir).items():
        sent = [value] if run_param == "selected" else value
        message = error_of(client, api_name, **{run_param: sent}, **extra)
        assert_clear_refusal(message, value, secrets)
        assert "unknown run" in message or "not in the list of choices" in message, (what, message)


@pytest.mark.parametrize("api_name", [name for name, route in ROUTES.items() if route[1] and route[1] != "current"])
def test_checkpoints_the_run_does_not_list_are_refused(app, client: Client, api_name: str) -> None:
    url, root, runs_dir, _ = app
    run_param, checkpoint_param, extra = ROUTES[api_name]
    secrets = [str(root), str(ROOT), str(Path.home()), "/tmp/"]
    for value in [str(runs_dir / "listed" / runs.LAST_FILE), str(root / "outside" / "run" / runs.LAST_FILE),
                  "../../outside/run/model.safetensors", "snapshot:99", "/etc/passwd", "y" * 5_000]:
        message = error_of(client, api_name, **{run_param: "listed", checkpoint_param: value}, **extra)
        assert_clear_refusal(message, value, secrets)
        assert any(refusal in message for refusal in ("has no checkpoint", "unknown checkpoint",
                                                      "not in the list of choices")), message


def test_a_checkpoint_list_refresh_never_keeps_an_unlisted_value(client: Client) -> None:
    for value in ["/etc/passwd", "../../outside/run/model.safetensors", "snapshot:99"]:
        update = client.predict(run_name="listed", current=value, api_name="/inspect_checkpoints")
        assert update["value"] == "last" and value not in str(update["choices"])


@pytest.mark.parametrize("api_name", list(DATASET_ROUTES))
def test_datasets_the_app_never_listed_are_refused(app, client: Client, api_name: str) -> None:
    url, root, _, data = app
    param, extra = DATASET_ROUTES[api_name]
    secrets = [str(root), str(ROOT), str(Path.home()), "/tmp/"]
    for value in [str(root / "outside" / "data"), "../outside/data", str(data / "tiny"), "/etc", "z" * 5_000]:
        message = error_of(client, api_name, **{param: value}, **extra)
        assert_clear_refusal(message, value, secrets)
        assert "unknown dataset" in message or "not in the list of choices" in message, message
    # the plan reads only a listed dataset: any other value is a plan without data, as with none
    summary = client.predict(preset="tiny", dataset=str(root / "outside" / "data"), api_name="/train_summary")
    assert summary == client.predict(preset="tiny", dataset="", api_name="/train_summary")


def test_a_run_trained_after_start_up_is_served(app) -> None:
    """Only what the app lists at the time of the call counts, so a new run needs no restart."""
    url, _, runs_dir, _ = app
    make_tiny_run(runs_dir / "new-run")
    client = Client(url, verbose=False)
    assert client.predict(run="new-run", api_name="/checkpoints")["value"] == "last"
    assert Path(client.predict(run_name="new-run", api_name="/download_run")).name == "new-run.zip"
    assert client.predict(selected=["new-run"], api_name="/compare_runs") is not None
    for api_name in ("/inspect", "/embeddings", "/neighbours", "/generate"):
        run_param, checkpoint_param, extra = ROUTES[api_name]
        client.predict(**{run_param: "new-run", checkpoint_param: "last"}, **extra, api_name=api_name)


@pytest.mark.parametrize(("api_name", "param"), [("/neighbours", "token"), ("/generate", "run"),
                                                  ("/inspect", "run"), ("/download_run", "run_name")])
def test_a_megabyte_sent_is_not_echoed(client: Client, api_name: str, param: str) -> None:
    run_param, checkpoint_param, extra = ROUTES[api_name]
    arguments = {**extra, run_param: "listed", **({checkpoint_param: "last"} if checkpoint_param else {})}
    message = error_of(client, api_name, **{**arguments, param: "q" * 1_000_000})
    assert "1,000,00" in message and len(message) < 300, message[:300]


def test_a_training_seed_of_2_to_the_70_is_a_clear_message(client: Client) -> None:
    message = error_of(client, "/start_training", preset="tiny", dataset="tiny", run_name="big-seed",
                       fields={"seed": 2**70, "max_steps": 3, "device": "cpu"})
    assert "seed must be an integer in [0, 9223372036854775807]" in message, message


def test_a_sampling_seed_of_2_to_the_70_is_a_clear_message(client: Client) -> None:
    message = error_of(client, "/generate", prompt="Hi", run="listed", checkpoint="last", max_new_tokens=2,
                       seed=2**70)
    assert "seed" in message and "internal error" not in message, message


@pytest.mark.slow
def test_several_clients_generate_while_a_training_job_runs(app) -> None:
    url, _, runs_dir, _ = app
    trainer = Client(url, verbose=False)
    fields = {"n_layer": 1, "n_head": 2, "n_embd": 32, "context_length": 32, "batch_size": 4, "max_steps": 100000,
              "eval_interval": 50, "log_interval": 1, "device": "cpu", "precision": "fp32", "sample_tokens": 4,
              "head_scores": False, "wandb": "off"}
    name = trainer.predict(preset="tiny", dataset="tiny", run_name="busy", fields=fields, api_name="/start_training")
    metrics = runs_dir / name / runs.METRICS_FILE
    deadline = time.monotonic() + 120
    while not runs.read_metrics(runs_dir / name, "train") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runs.read_metrics(runs_dir / name, "train"), (runs_dir / name / runs.LOG_FILE).read_text()[-2000:]
    step_before = runs.read_metrics(runs_dir / name, "train")[-1]["step"]

    def ask(seed: int) -> str:
        history, *_ = Client(url, verbose=False).predict(prompt=f"User {seed}:", run="listed", checkpoint="last",
                                                          max_new_tokens=20, seed=seed, api_name="/generate")
        return history[-1]["content"][0]["text"]

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(ask, range(5)))
    assert len(answers) == 5 and all(answers), answers
    assert metrics.is_file() and runs.read_metrics(runs_dir / name, "train")[-1]["step"] > step_before  # it trained on
    assert runs.Run.open(runs_dir / name).state() in ("running", "running elsewhere")
    trainer.predict(api_name="/stop_training")
    deadline = time.monotonic() + 120
    while (runs.run_status(runs_dir / name) or {}).get("status") == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runs.run_status(runs_dir / name)["status"] == "stopped"
