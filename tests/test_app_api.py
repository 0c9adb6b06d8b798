"""The app's endpoints through `gradio_client`, as a program (or a second browser) would call them.

Every endpoint is exercised, including streaming (iterating `submit()`), cancelling, and bad input: each
bad input gets a clear error and the app keeps serving.
"""

from __future__ import annotations

import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from gpt.ui.data_tab import SOURCES
from gpt.ui.train_tab import FIELD_NAMES

CLEAN_DEFAULTS = [True, False, "keep", "keep", "keep", "keep", False, True, False, False, 0, True, ""]
GENERATE_DEFAULTS = dict(temperature=0.8, top_k=0, top_p=1.0, repetition_penalty=1.0, penalty_window=0)


def client(url: str) -> Client:
    return Client(url, verbose=False)


def write_csv(path: Path, rows: int = 120) -> Path:
    lines = ["id,text,label"]
    for i in range(rows):
        lines.append(f'{i},"Row {i}: the quick brown fox jumps over the lazy dog, café {i * 7}.",x{i % 3}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_fields(**overrides) -> dict:
    """Every Train-tab field by name (the start/summary endpoints take any subset; this sends them all)."""
    values = dict(n_layer=1, n_head=2, n_embd=32, ffn_hidden=None, context_length=32, dropout=0.0,
                  activation="gelu", position="learned", norm="layernorm", bias=True, batch_size=4,
                  grad_accum_steps=1, learning_rate=3e-3, min_lr_ratio=0.1, warmup_steps=2, weight_decay=0.1,
                  beta1=0.9, beta2=0.95, grad_clip=1.0, max_steps=400, max_minutes=None, epochs=None,
                  eval_interval=10, eval_batches=2, log_interval=2, sample_prompt="Row", sample_tokens=8,
                  sample_temperature=0.8, seed=1, device="cpu", precision="auto", compile=False, snapshots=2,
                  save_dtype="float32", wandb="off", wandb_project="gpt-playground", vocab="full",
                  optimizer="adamw", muon_learning_rate=0.02, log_seconds=5.0, head_scores=True, qk_norm=False,
                  tie_embeddings=True, logit_softcap=None, value_embeddings=False, x0_shortcuts=False,
                  zero_init_proj=False, muon_orthogonaliser="newton-schulz", muon_normalise=False,
                  muon_cautious_weight_decay=False, schedule="cosine", cooldown_fraction=0.3,
                  context_warmup_fraction=0.0, ema_decay=0.0, ema_power=0.0, vocab_limit=None,
                  attention_dropout=True, dropout_from_epochs=None,
                  dropout_start_fraction=0.0)
    values.update(overrides)
    assert set(values) == set(FIELD_NAMES)
    return values


def generate_args(run_dir, prompt, seed, max_new_tokens=12, **controls):
    return {"history": [], "prompt": prompt, "run": str(run_dir), "checkpoint": "last",
            **GENERATE_DEFAULTS, **controls, "max_new_tokens": max_new_tokens, "seed": seed}


def assert_serving(url: str) -> None:
    assert client(url).predict("tiny", api_name="/preset_values")[FIELD_NAMES.index("n_layer")] == 4


@pytest.fixture(scope="module")
def prepared(app_url, tmp_path_factory) -> str:
    """A small CSV loaded, its column picked, and prepared as dataset 'rows' (one client session)."""
    csv = write_csv(tmp_path_factory.mktemp("upload") / "my rows (1).csv")
    c = client(app_url)
    summary, column, preview, name = c.predict(
        SOURCES[1], [handle_file(str(csv))], False, "", "", "train", api_name="/load_source")
    assert "120 documents" in summary and name == "my_rows_1"
    assert column["choices"] and ["text", "text"] in column["choices"] and column["value"] == "text"
    assert preview["headers"] == ["id", "text", "label"]
    result, datasets = c.predict("rows", 0.1, False, *CLEAN_DEFAULTS, api_name="/prepare")
    assert "train / val tokens" in result and "tokens per word" in result
    assert datasets["value"] == "rows"
    return "rows"


def test_cleaning_preview_warns_before_destroying_non_ascii(app_url, tmp_path):
    c = client(app_url)
    c.predict(SOURCES[1], [handle_file(str(write_csv(tmp_path / "accents.csv", 20)))], False,
              "", "", "train", api_name="/load_source")
    options = list(CLEAN_DEFAULTS)
    options[9] = True  # to_ascii
    text = c.predict(*options, api_name="/preview_cleaning")
    assert "non-ASCII" in text and "before" in text
    options[9], options[12] = False, "[unclosed"
    assert "invalid regular expression" in c.predict(*options, api_name="/preview_cleaning")
    assert_serving(app_url)


def test_dataset_info_and_bad_uploads(app_url, prepared, tmp_path):
    c = client(app_url)
    assert "train / val tokens" in c.predict(prepared, api_name="/dataset_info")
    with pytest.raises(Exception, match="Upload at least one file"):
        c.predict(SOURCES[1], [], False, "", "", "train", api_name="/load_source")
    binary = tmp_path / "photo.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(Exception, match="binary|not text|decode"):
        c.predict(SOURCES[1], [handle_file(str(binary))], False, "", "", "train", api_name="/load_source")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(Exception, match="empty|no text"):
        c.predict(SOURCES[1], [handle_file(str(empty))], False, "", "", "train", api_name="/load_source")
    with pytest.raises(Exception, match="offline|could not load"):
        c.predict(SOURCES[2], [], False, "nobody/nothing", "", "train", api_name="/load_source")
    assert_serving(app_url)


def test_impossible_config_is_a_clear_error(app_url, prepared):
    c = client(app_url)
    summary = c.predict(preset="tiny", dataset=prepared, fields=tiny_fields(n_embd=30, n_head=4),
                        api_name="/train_summary")
    assert "n_embd (30) must be divisible by n_head (4)" in summary
    with pytest.raises(Exception, match="divisible"):
        c.predict(preset="tiny", dataset=prepared, run_name="bad", fields=tiny_fields(n_embd=30, n_head=4),
                  api_name="/start_training")
    with pytest.raises(Exception, match="when to stop"):
        c.predict(preset="tiny", dataset=prepared, run_name="bad", fields=tiny_fields(max_steps=None),
                  api_name="/start_training")
    c.predict(preset="tiny", dataset=prepared, run_name="too-big-batch", fields=tiny_fields(batch_size=512),
              api_name="/start_training")
    status, *_ = _poll_until(c, lambda r: "failed" in (r[0] or ""))
    assert "larger than the training split" in status  # the trainer's own message, from the child's log
    good = c.predict(preset="tiny", dataset=prepared, fields=tiny_fields(), api_name="/train_summary")
    assert "parameters" in good and "tokens per parameter" in good and "device: **cpu**" in good
    short_first = c.predict(preset="tiny", dataset=prepared, fields=tiny_fields(context_warmup_fraction=0.5),
                            api_name="/train_summary")
    assert "short windows first: 16 x 8 tokens from 0% of the run" in short_first
    odd = c.predict(preset="tiny", dataset=prepared, fields=tiny_fields(context_warmup_fraction=0.5,
                                                                         context_length=30),
                    api_name="/train_summary")
    assert "context_length must divide by 4, not 30" in odd
    assert_serving(app_url)


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def _poll_until(c: Client, predicate, timeout: float = 90.0, last=None):
    """Poll like the page's timer does (unchanged parts come back as skips) until `predicate(status, figure,
    sample)` holds."""
    last = list(last or [None, None, None])
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = c.predict(api_name="/poll")
        last = [old if _is_skip(new) else new for old, new in zip(last, result[:3], strict=True)]
        if predicate(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out; last poll: {last[0]}")


def _points(figure) -> int:
    plot = figure.get("plot") if isinstance(figure, dict) else None
    if not plot:
        return 0
    import json

    data = json.loads(plot)["data"] if isinstance(plot, str) else plot["data"]
    return sum(len(trace["x"]) for trace in data if trace.get("name") == "train")


def test_train_start_poll_second_start_stop(app_url, app_dirs, prepared):
    c = client(app_url)
    assert c.predict(preset="tiny", dataset=prepared, run_name="api-run", fields={"max_steps": 400, "device": "cpu",
                     "n_layer": 1, "n_embd": 32, "n_head": 2, "context_length": 32, "batch_size": 4,
                     "eval_interval": 10, "log_interval": 2}, api_name="/start_training") == "api-run"
    status, figure, _ = _poll_until(c, lambda r: _points(r[1]) >= 2)
    first = _points(figure)
    with pytest.raises(Exception, match="already running.*api-run"):
        client(app_url).predict(preset="tiny", dataset=prepared, run_name="other", fields=tiny_fields(),
                                api_name="/start_training")
    status, figure, sample = _poll_until(c, lambda r: _points(r[1]) > first, last=[status, figure, None])
    assert "running" in status and "tokens/s" in status and "ETA" in status
    assert "stopping" in c.predict(api_name="/stop_training")[0]
    status, *_ = _poll_until(c, lambda r: "stopped" in r[0], last=[status, figure, sample])
    assert "stop requested" in status
    table, compare, download = c.predict([], None, api_name="/runs")
    assert "api-run" in [row[0] for row in table["data"]]
    overlay = c.predict(["api-run", "tiny-random"], api_name="/compare_runs")  # dropdown values are run names
    assert overlay["type"] == "plotly"
    with pytest.raises(Exception, match="No training job is running"):
        c.predict(api_name="/stop_training")


def test_generate_streams_and_reports_speed(app_url, app_dirs):
    c = client(app_url)
    job = c.submit(**generate_args(app_dirs[1] / "tiny-random", "Hello", seed=3, max_new_tokens=100,
                                  temperature=1.2, top_k=40), api_name="/generate")
    lengths = [len(history[-1]["content"][0]["text"]) if history[-1]["content"] else 0
               for history, *_ in job]
    assert len(lengths) >= 3 and lengths == sorted(lengths) and lengths[-1] > 0
    history, stats, slider, why, *_ = job.outputs()[-1]
    assert history[0]["content"][0]["text"] == "Hello" and "tokens/s" in stats
    assert why["type"] == "plotly" and slider["maximum"] >= 2


def test_generate_cancel_then_serves_again(app_url, app_dirs):
    c = client(app_url)
    job = c.submit(**generate_args(app_dirs[1] / "tiny-random", "Stop me", seed=1, max_new_tokens=1000),
                   api_name="/generate")
    for count, _ in enumerate(job):
        if count >= 2:
            job.cancel()
            break
    time.sleep(1.0)
    history, stats, *_ = c.predict(**generate_args(app_dirs[1] / "tiny-random", "Again", seed=1), api_name="/generate")
    assert history[0]["content"][0]["text"] == "Again" and "tokens/s" in stats


def test_generate_bad_inputs(app_url, app_dirs):
    c = client(app_url)
    with pytest.raises(Exception, match="Type a prompt"):
        c.predict(**generate_args(app_dirs[1] / "tiny-random", "  ", seed=1), api_name="/generate")
    with pytest.raises(Exception, match="less than minimum"):
        c.predict(**generate_args(app_dirs[1] / "tiny-random", "x", seed=1, top_p=0.0), api_name="/generate")
    with pytest.raises(Exception, match="unknown run"):
        c.predict(**generate_args("/etc", "x", seed=1), api_name="/generate")
    assert_serving(app_url)


def test_two_users_generate_at_once_and_each_gets_their_answer(app_url, app_dirs):
    run = app_dirs[1] / "tiny-random"
    requests = [("First user:", 11), ("Second user:", 22)]

    def ask(prompt_seed):
        prompt, seed = prompt_seed
        history, *_ = client(app_url).predict(**generate_args(run, prompt, seed, max_new_tokens=30),
                                              api_name="/generate")
        return history[0]["content"][0]["text"], history[1]["content"][0]["text"]

    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(ask, requests))
    alone = [ask(request) for request in requests]
    assert [prompt for prompt, _ in together] == ["First user:", "Second user:"]
    assert together == alone  # same seed, same answer: nothing leaked between the two sessions


def test_checkpoints_download_and_upload_runs(app_url, app_dirs, tmp_path):
    c = client(app_url)
    run = app_dirs[1] / "tiny-random"
    assert c.predict(str(run), api_name="/checkpoints")["value"] == "last"
    zip_path = Path(c.predict(str(run), api_name="/download_run"))
    with zipfile.ZipFile(zip_path) as archive:
        assert "tiny-random/model.safetensors" in archive.namelist()
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("tiny-random/trainer_state.pt", b"a pickle would go here")
        archive.writestr("tiny-random/../../escape.txt", b"no")
    message, table, *_ = c.predict(handle_file(str(zip_path)), api_name="/upload_run")
    assert "Added run" in message and "left out trainer_state.pt" in message
    added = message.split("**")[1]
    assert not (app_dirs[1] / added / "trainer_state.pt").exists()
    assert added in [row[0] for row in table["data"]]
    assert not list(app_dirs[1].parent.glob("**/escape.txt"))
    not_zip = tmp_path / "run.zip"
    not_zip.write_bytes(b"PK but not really")
    with pytest.raises(Exception, match="not a zip"):
        c.predict(handle_file(str(not_zip)), api_name="/upload_run")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", "{}")
    (tmp_path / "norun.zip").write_bytes(buffer.getvalue())
    with pytest.raises(Exception, match="not a run"):
        c.predict(handle_file(str(tmp_path / "norun.zip")), api_name="/upload_run")
    assert_serving(app_url)


def test_bundled_corpus_loads_and_previews(app_url):
    c = client(app_url)
    summary, column, preview, name = c.predict(SOURCES[0], [], False, "", "", "train", api_name="/load_source")
    assert "tinyshakespeare.txt" in summary and name == "tinyshakespeare" and not column["visible"]
    assert "First Citizen" in str(preview["data"])
    preview_text = c.predict(*CLEAN_DEFAULTS, api_name="/preview_cleaning")
    assert "Preview on a sample** (1 documents" in preview_text and "non-ASCII" not in preview_text
