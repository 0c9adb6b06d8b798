"""The Train tab: configure a run (preset + every model and training field), start and stop it, watch it.

Training runs as `python -m gpt train ...` in a child process (`gpt.ui.jobs`), one at a time per server.
The tab polls the run's `metrics.jsonl` with a `gr.Timer` (every second while a job runs) and redraws the
curves, the latest sample, step, ETA and status. A page reload or a second browser finds the job again,
because the job registry is shared by the whole server. Below: every run with its final metrics, curves
of several runs overlaid, and zip download / upload of runs.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import gradio as gr

from gpt.checkpoint import CONFIG_FILE, METRICS_FILE, SAVE_DTYPES, read_config, read_metrics, run_status
from gpt.data import read_meta
from gpt.model import ACTIVATIONS, NORMS, POSITIONS, GPTConfig
from gpt.tokenizer import GPT2_VOCAB_SIZE
from gpt.train import (
    OPTIMIZERS,
    PRECISIONS,
    TRAIN_PRESETS,
    VOCABS,
    WANDB_MODES,
    TrainConfig,
    compact_tokenizer,
    default_preset,
    planned_steps,
    resolve_device,
    resolve_precision,
)
from gpt.ui.common import BUNDLED_DATASET_NAME, AppDirs, error_text, safe_name
from gpt.ui.data_tab import ensure_bundled_dataset, prepared_datasets
from gpt.ui.estimates import training_memory
from gpt.ui.jobs import JOBS
from gpt.ui.plots import training_figure
from gpt.ui.runs import export_run_zip, import_run_zip, known_run, recently_written, run_choices, runs_table

POLL_SECONDS = 1.0
CHOICES = {
    "activation": ACTIVATIONS, "position": POSITIONS, "norm": NORMS, "precision": PRECISIONS,
    "wandb": WANDB_MODES, "vocab": VOCABS, "optimizer": OPTIMIZERS, "save_dtype": tuple(SAVE_DTYPES),
    "device": ("auto", "cpu", "cuda", "mps"),
}
LABELS = {
    "n_layer": "Layers", "n_head": "Heads", "n_embd": "Width (n_embd)", "ffn_hidden": "FFN width (0 = default)",
    "context_length": "Context length", "dropout": "Dropout", "bias": "Bias", "activation": "Activation",
    "position": "Position encoding", "norm": "Normalisation", "batch_size": "Batch size (windows)",
    "grad_accum_steps": "Gradient accumulation", "learning_rate": "Learning rate", "min_lr_ratio": "Min LR / LR",
    "warmup_steps": "Warmup steps", "weight_decay": "Weight decay", "beta1": "Adam β1", "beta2": "Adam β2",
    "grad_clip": "Gradient clipping (0 = off)", "max_steps": "Max steps", "max_minutes": "Max minutes",
    "epochs": "Epochs", "eval_interval": "Evaluate every (steps)", "eval_batches": "Eval batches",
    "log_interval": "Log every (steps)", "sample_prompt": "Sample prompt", "sample_tokens": "Sample tokens",
    "sample_temperature": "Sample temperature", "seed": "Seed", "device": "Device", "precision": "Precision",
    "compile": "torch.compile", "snapshots": "Snapshots kept (Inspect tab)", "save_dtype": "Saved weights dtype",
    "wandb": "W&B mode", "wandb_project": "W&B project", "vocab": "Vocabulary (compact: only the data's tokens)",
    "optimizer": "Optimizer (muon: Muon for block matrices)", "muon_learning_rate": "Muon learning rate",
}
# Field groups as shown; any field of the configs not listed here lands in "Other", so none is missing.
GROUPS = {
    "Model": ["n_layer", "n_head", "n_embd", "ffn_hidden", "context_length", "dropout", "activation", "position",
              "norm", "bias", "vocab"],
    "Optimisation": ["optimizer", "learning_rate", "muon_learning_rate", "batch_size", "grad_accum_steps",
                     "min_lr_ratio", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip"],
    "Stop when (0 = not this one; the first reached stops)": ["max_steps", "max_minutes", "epochs"],
    "Evaluation and samples": ["eval_interval", "eval_batches", "log_interval", "sample_prompt", "sample_tokens",
                               "sample_temperature", "snapshots"],
    "System": ["device", "precision", "compile", "seed", "save_dtype", "wandb", "wandb_project"],
}
MODEL_FIELDS = {f.name: f for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"}
TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
ALL_FIELDS = {**MODEL_FIELDS, **TRAIN_FIELDS}
FIELD_NAMES = list(ALL_FIELDS)


def _component(field: dataclasses.Field, value) -> gr.components.Component:
    kind = str(field.type)
    label = LABELS.get(field.name, field.name.replace("_", " "))
    elem_id = f"train-{field.name.replace('_', '-')}"
    if kind == "bool":
        return gr.Checkbox(value, label=label, elem_id=elem_id)
    if field.name in CHOICES:
        return gr.Dropdown(list(CHOICES[field.name]), value=value, label=label, elem_id=elem_id,
                           allow_custom_value=field.name == "device")
    if kind.startswith("int"):
        return gr.Number(value, label=label, precision=0, elem_id=elem_id)
    if kind.startswith("float"):
        return gr.Number(value, label=label, elem_id=elem_id)
    return gr.Textbox(value, label=label, elem_id=elem_id, max_lines=1)


def _convert(name: str, value):
    """A component value as the dataclass field wants it (blank numbers -> None, 4.0 -> 4 for ints)."""
    kind = str(ALL_FIELDS[name].type)
    if value is None or value == "" or (kind.endswith("| None") and value == 0):
        return None  # optional fields: blank or 0 means "not set" (a browser sends 0 for an empty number)
    if kind.startswith("int") and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def preset_values(preset: str) -> list:
    """Every field's value under a preset, in `FIELD_NAMES` order."""
    model = GPTConfig.from_preset(preset).to_dict()
    train = TrainConfig.from_preset(preset).to_dict()
    return [{**model, **train}[name] for name in FIELD_NAMES]


def build_configs(values) -> tuple[GPTConfig, TrainConfig]:
    """The two configs from the field values (raises the library's `UserInputError`)."""
    given = {name: _convert(name, value) for name, value in zip(FIELD_NAMES, values, strict=True)}
    model = {name: given[name] for name in MODEL_FIELDS}
    for name, value in model.items():
        if value is None and name != "ffn_hidden":
            raise gr.Error(f"{name} needs a value")
    train = {name: value for name, value in given.items() if name in TRAIN_FIELDS}
    for name, value in train.items():
        if value is None and TRAIN_FIELDS[name].default is not None:
            raise gr.Error(f"{name} needs a value")
    return GPTConfig(**model), TrainConfig(**train)


def fields_named_in(message: str) -> list[str]:
    """The config fields an error message talks about (they are named in the library's messages)."""
    return [name for name in FIELD_NAMES if re.search(rf"\b{re.escape(name)}\b", message)]


def _dataset_dir(dirs: AppDirs, dataset: str | None) -> Path:
    if not dataset:
        raise gr.Error("Choose a dataset (prepare one in the Data tab).")
    return dirs.data / safe_name(dataset)


def _dataset_choices(dirs: AppDirs) -> list[str]:
    names = prepared_datasets(dirs)
    return names if BUNDLED_DATASET_NAME in names else [BUNDLED_DATASET_NAME, *names]


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def summary_markdown(dirs: AppDirs, dataset: str | None, values) -> str:
    """Parameters, tokens per parameter, memory and device for the current fields, or what is wrong."""
    try:
        model, train = build_configs(values)
        device = resolve_device(train.device)
        precision = resolve_precision(train.precision, device)
    except Exception as error:  # invalid fields: the message names the field
        return f"⚠️ **{error_text(error)}**"
    train_tokens = None
    data_dir = dirs.data / safe_name(dataset or "")
    prepared = bool(dataset) and (data_dir / "meta.json").is_file()
    if prepared:
        train_tokens = read_meta(data_dir).get("train_tokens")
    vocab_line = ""
    if train.vocab == "compact" and prepared:
        tokenizer = compact_tokenizer(data_dir)
        model = dataclasses.replace(model, vocab_size=tokenizer.vocab_size)
        vocab_line = f"- compact vocabulary: **{tokenizer.vocab_size:,} tokens** (of GPT-2's {GPT2_VOCAB_SIZE:,})"
    elif train.vocab == "compact":
        vocab_line = "- compact vocabulary: its size (and so the parameter count) is known once the data is prepared"
    params = model.num_parameters()
    steps = planned_steps(train, model, train_tokens)
    tokens_per_step = train.batch_size * train.grad_accum_steps * model.context_length
    memory = training_memory(model, train, precision, flash_attention=device.type == "cuda")
    lines = [
        f"**{params:,} parameters** ({params / 1e6:.2f} M) · {tokens_per_step:,} tokens per step",
        f"- planned: {f'{steps:,} steps, {steps * tokens_per_step:,} tokens' if steps else 'until the time limit'}"
        + (f" = **{steps * tokens_per_step / params:.2f} tokens per parameter** (Chinchilla-optimal ≈ 20)"
           if steps else ""),
        f"- estimated memory: **{_bytes(memory['total'])}** (weights + gradients + AdamW {_bytes(memory['state'])}, "
        f"activations {_bytes(memory['activations'])})",
        f"- device: **{device}** ({precision})",
    ]
    if vocab_line:
        lines.append(vocab_line)
    if train_tokens:
        lines.append(f"- dataset: {train_tokens:,} training tokens"
                     + (f", {steps * tokens_per_step / train_tokens:.2f} epochs" if steps else ""))
    elif dataset == BUNDLED_DATASET_NAME:
        lines.append("- dataset: Tiny Shakespeare, prepared with default cleaning when you press Start")
    return "\n".join(lines)


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


def run_progress(run_dir: Path, rows: list[dict]) -> str:
    """One status line: state (with its reason), step of planned steps, ETA, throughput."""
    job = JOBS.current()
    is_job = job is not None and job.run_dir.resolve() == run_dir.resolve()
    status = run_status(run_dir) or {}
    state, message = status.get("status", "starting"), status.get("message", "")
    if is_job and job.is_running():
        state = "stopping (saving a checkpoint)" if job.stop_requested else "running"
    elif is_job and job.returncode() not in (0, None) and state in ("running", "starting"):
        state, message = "failed", job.last_error()
    elif not is_job and state == "running" and not recently_written(run_dir):
        state, message = "interrupted", "the training process ended without a final status"
    trains = [row for row in rows if row.get("kind") == "train"]
    step = max((row.get("step", 0) for row in rows), default=0)
    ended = state in ("stopped", "finished", "diverged", "failed", "interrupted")
    parts = [f"**{run_dir.name}: {state}**" + (f" — {message}" if message and ended else "")]
    try:
        config = read_config(run_dir)
        model, train = GPTConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
        planned = planned_steps(train, model, (config.get("data") or {}).get("meta", {}).get("train_tokens"))
    except Exception:  # config.json not written yet (the child is starting) or from an older version
        train, planned = None, None
    parts.append(f"step {step:,}" + (f" / {planned:,}" if planned else ""))
    if trains and state == "running":
        last = trains[-1]
        seconds_per_step = last["elapsed"] / max(1, last["step"])
        remaining = []
        if planned:
            remaining.append((planned - step) * seconds_per_step)
        if train is not None and train.max_minutes:
            remaining.append(train.max_minutes * 60 - last["elapsed"])
        if remaining:
            parts.append(f"ETA {_format_seconds(min(remaining))}")
        parts.append(f"{last['tokens_per_second']:,.0f} tokens/s")
    return " · ".join(parts)


def _latest_sample(rows: list[dict]) -> str:
    samples = [row for row in rows if row.get("kind") == "sample"]
    if not samples:
        return ""
    last = samples[-1]
    return f"[step {last['step']}] {last['prompt']}{last['text']}"


def build_train_tab(dirs: AppDirs, demo: gr.Blocks) -> None:
    """The Train tab's components and events (called inside `gr.Tab("Train")`; `demo` for its load event)."""
    viewed = gr.State(None)  # the run folder this page shows
    seen = gr.State(None)  # what the last poll drew, to skip redrawing when nothing changed
    first = default_preset(resolve_device("auto"))
    with gr.Row():
        preset = gr.Dropdown([first, *(name for name in TRAIN_PRESETS if name != first)], value=first,
                             label="Preset (fills every field below)", elem_id="train-preset")
        dataset = gr.Dropdown(_dataset_choices(dirs), value=BUNDLED_DATASET_NAME, label="Dataset",
                              allow_custom_value=True, elem_id="train-dataset")
        run_name = gr.Textbox(label="Run name (folder under the runs folder)", elem_id="train-run-name",
                              placeholder="blank = preset-dataset-date-time")
    components: dict[str, gr.components.Component] = {}
    initial = dict(zip(FIELD_NAMES, preset_values(first), strict=True))
    grouped = [name for names in GROUPS.values() for name in names]
    groups = {**GROUPS, "Other": [name for name in FIELD_NAMES if name not in grouped]}
    with gr.Accordion("Model and training settings", open=True):
        for title, names in groups.items():
            names = [name for name in names if name in ALL_FIELDS]
            if not names:
                continue
            gr.Markdown(f"**{title}**")
            for start in range(0, len(names), 5):
                with gr.Row():
                    for name in names[start:start + 5]:
                        components[name] = _component(ALL_FIELDS[name], initial[name])
    fields = [components[name] for name in FIELD_NAMES]
    summary = gr.Markdown(summary_markdown(dirs, BUNDLED_DATASET_NAME, list(initial.values())),
                          elem_id="train-summary")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
    status = gr.Markdown("No training job yet.", elem_id="train-status")
    plot = gr.Plot(label="Training curves", elem_id="train-plot")
    sample = gr.Textbox(label="Latest sample (fixed prompt and seed, at each evaluation)", lines=4,
                        interactive=False, elem_id="train-sample")
    timer = gr.Timer(POLL_SECONDS, active=False)

    gr.Markdown("### Runs")
    table = gr.Dataframe(runs_table(dirs), interactive=False, wrap=True, elem_id="train-runs")
    with gr.Row():
        refresh = gr.Button("↻ Refresh runs", elem_id="train-refresh", scale=0, min_width=140)
        compare = gr.Dropdown(run_choices(dirs), multiselect=True, label="Overlay the curves of these runs",
                              allow_custom_value=True, elem_id="train-compare")
    compare_plot = gr.Plot(label="Runs compared", elem_id="train-compare-plot")
    with gr.Row():
        with gr.Column():
            download_run = gr.Dropdown(run_choices(dirs), label="Run to download",
                                       allow_custom_value=True, elem_id="train-download-run")
            download = gr.Button("Make zip", elem_id="train-download")
            zip_file = gr.File(label="Run zip", interactive=False, elem_id="train-zip")
        with gr.Column():
            upload = gr.File(label="Upload a run (.zip with config.json and .safetensors weights; no pickles)",
                             file_types=[".zip"], type="filepath", elem_id="train-upload")
            upload_result = gr.Markdown(elem_id="train-upload-result")

    # -- events ------------------------------------------------------------------------------------
    def fill(preset_name):
        return preset_values(preset_name)

    def validate(preset_name, dataset_name, name, *values):
        checks = [gr.validate(True, "")] * 3 + [gr.validate(True, "")] * len(values)
        try:
            build_configs(values)
        except Exception as error:
            message = error_text(error) if not isinstance(error, gr.Error) else error.message
            named = fields_named_in(message) or [FIELD_NAMES[0]]
            for field_name in named:
                checks[3 + FIELD_NAMES.index(field_name)] = gr.validate(False, message)
        if not dataset_name:
            checks[1] = gr.validate(False, "Choose a dataset (prepare one in the Data tab).")
        return checks

    def start_training(preset_name, dataset_name, name, *values, progress=gr.Progress()):  # noqa: B008
        try:
            model, train = build_configs(values)
        except gr.Error:
            raise
        except Exception as error:
            raise gr.Error(error_text(error)) from error
        data_dir = _dataset_dir(dirs, dataset_name)
        if dataset_name == BUNDLED_DATASET_NAME and not (data_dir / "meta.json").is_file():
            progress(0.2, desc="preparing the bundled Tiny Shakespeare")
            ensure_bundled_dataset(dirs)
        if not (data_dir / "meta.json").is_file():
            raise gr.Error(f"Dataset {dataset_name!r} is not prepared; prepare it in the Data tab.")
        folder = safe_name(name or f"{preset_name}-{data_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir = dirs.runs / folder
        if (run_dir / CONFIG_FILE).exists():
            raise gr.Error(f"A run named {folder!r} exists already; choose another run name.")
        try:
            job = JOBS.start(model, train, data_dir, run_dir, preset_name)
        except Exception as error:
            raise gr.Error(error_text(error)) from error
        return str(job.run_dir), None, f"**{job.name}: starting** (python -m gpt train …)", gr.Timer(active=True)

    def poll(run_dir, last_seen):
        """Redraw the viewed run when its metrics changed; keep polling only while its job runs."""
        job = JOBS.current()
        if job is not None and (job.is_running() or not run_dir):
            run_dir = str(job.run_dir)
        if not run_dir:
            return run_dir, last_seen, gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
        path = Path(run_dir)
        metrics = path / METRICS_FILE
        running = job is not None and job.run_dir.resolve() == path.resolve() and job.is_running()
        signature = [run_dir, metrics.stat().st_size if metrics.is_file() else 0, running,
                     job.stop_requested if job else False]
        if signature == last_seen:
            return run_dir, last_seen, gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=running), gr.skip()
        rows = read_metrics(path)
        figure = training_figure({path.name: rows}) if rows else None
        table_update = gr.skip() if running else runs_table(dirs)  # a job just ended: its row changed
        return (run_dir, signature, run_progress(path, rows), figure, _latest_sample(rows),
                gr.Timer(active=running), table_update)

    def stop_training():
        job = JOBS.stop()
        if job is None:
            raise gr.Error("No training job is running.")
        message = f"**{job.name}: stopping** — the trainer finishes its step and saves a checkpoint."
        return message, gr.Timer(active=True)

    def refresh_runs(selected, to_download):
        choices = run_choices(dirs)
        values = {value for _, value in choices}
        return (runs_table(dirs), gr.update(choices=choices, value=[v for v in selected or [] if v in values]),
                gr.update(choices=choices, value=to_download if to_download in values else None))

    def overlay(selected):
        if not selected:
            return None
        try:
            runs = [known_run(dirs, run) for run in selected]
        except Exception as error:
            raise gr.Error(error_text(error)) from error
        return training_figure({run.name: read_metrics(run) for run in runs}, height=560)

    def make_zip(run_dir):
        if not run_dir:
            raise gr.Error("Choose a run to download.")
        try:
            return str(export_run_zip(known_run(dirs, run_dir)))
        except Exception as error:
            raise gr.Error(error_text(error)) from error

    def receive(zip_path):
        if not zip_path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            run_dir, notes = import_run_zip(zip_path, dirs)
        except Exception as error:
            raise gr.Error(error_text(error)) from error
        message = "\n".join([f"Added run **{run_dir.name}**.", *(f"- {note}" for note in notes)])
        return (message, *refresh_runs([], None))

    preset.change(fill, preset, fields, api_name="preset_values")
    gr.on([preset.change, dataset.change, *[c.change for c in fields]],
          lambda dataset_name, *values: summary_markdown(dirs, dataset_name, values),
          [dataset, *fields], summary, api_name="train_summary", trigger_mode="always_last")
    start.click(start_training, [preset, dataset, run_name, *fields], [viewed, seen, status, timer],
                api_name="start_training", validator=validate, concurrency_limit=1, concurrency_id="train-start")
    stop.click(stop_training, None, [status, timer], api_name="stop_training")
    poll_outputs = [viewed, seen, status, plot, sample, timer, table]
    timer.tick(poll, [viewed, seen], poll_outputs, api_name="poll",
               show_progress="hidden", concurrency_limit=None)
    demo.load(poll, [viewed, seen], poll_outputs, api_visibility="private")
    dataset.focus(lambda current: gr.update(choices=_dataset_choices(dirs), value=current), dataset, dataset,
                  api_visibility="private")
    refresh.click(refresh_runs, [compare, download_run], [table, compare, download_run], api_name="runs")
    gr.on([compare.focus, download_run.focus], refresh_runs, [compare, download_run], [table, compare, download_run],
          api_visibility="private")
    compare.change(overlay, compare, compare_plot, api_name="compare_runs")
    download.click(make_zip, download_run, zip_file, api_name="download_run")
    upload.upload(receive, upload, [upload_result, table, compare, download_run], api_name="upload_run")
