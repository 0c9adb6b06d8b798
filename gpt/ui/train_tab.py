"""The Train tab: configure a run (preset + every model and training field), start and stop it, watch it.

Start resolves the preset and the fields into one complete `RunConfig` and hands it to `gpt.ui.jobs`,
which writes it as the run's config.json and trains from that file in a child process (one job per
server). The tab polls the run's `metrics.jsonl` with a `gr.Timer` (every second while a job runs): the
phase, step k of N, seconds per step, time to the next evaluation, the curves and the latest sample. A
page reload or a second browser finds the job again, because the job registry is shared by the server.
Below: every run with its final metrics, curves of several runs overlaid, and zip download / upload.

Layout in `build`, handlers at module level (plain functions of values, testable without a browser),
events in `wire`. Fields and their labels, choices and help come from the config dataclasses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from gpt.config import PRESETS, TrainConfig, default_preset, get_preset, resolve_preset
from gpt.data.folder import read_meta
from gpt.errors import UserInputError
from gpt.fields import FieldSpec, field_specs
from gpt.figures import head_scores_over_steps, training_figure
from gpt.model import GPTConfig
from gpt.plan import make_plan, planned_steps, training_progress
from gpt.run import DataRef, Run, RunConfig, read_metrics
from gpt.runtime import resolve_device
from gpt.ui import hub_panel, zerogpu
from gpt.ui.common import BUNDLED_DATASET_NAME, AppDirs, handle_errors, safe_name
from gpt.ui.datasets import dataset_dir, ensure_bundled_dataset, prepared_datasets
from gpt.ui.jobs import BURST_DURATION, BURST_SECONDS, JOBS
from gpt.ui.runs import export_run_zip, import_run_zip, known_run, run_choices, run_state_and_message, runs_table
from gpt.vocab import tokenizer_for

POLL_SECONDS = 1.0
MODEL_SPECS = {spec.name: spec for spec in field_specs(GPTConfig) if spec.name != "vocab_size"}
TRAIN_SPECS = {spec.name: spec for spec in field_specs(TrainConfig)}
SPECS: dict[str, FieldSpec] = {**MODEL_SPECS, **TRAIN_SPECS}
FIELD_NAMES = list(SPECS)
# Field groups as shown; any field not listed lands in "Other", so none is missing.
GROUPS = {
    "Model": ["n_layer", "n_head", "n_embd", "ffn_hidden", "context_length", "dropout", "attention_dropout",
              "dropout_from_epochs", "dropout_start_fraction", "activation", "position", "norm", "bias", "vocab",
              "vocab_limit"],
    "Model: small-model speedrun levers": ["qk_norm", "tie_embeddings", "logit_softcap", "value_embeddings",
                                           "x0_shortcuts", "zero_init_proj"],
    "Optimisation": ["optimizer", "learning_rate", "muon_learning_rate", "muon_orthogonaliser", "muon_normalise",
                     "muon_cautious_weight_decay", "batch_size", "grad_accum_steps", "schedule", "min_lr_ratio",
                     "warmup_steps", "cooldown_fraction", "context_warmup_fraction", "weight_decay", "beta1",
                     "beta2", "grad_clip", "ema_decay", "ema_power"],
    "Stop when (0 = not this one; the first reached stops)": ["max_steps", "max_minutes", "epochs"],
    "Evaluation and samples": ["eval_interval", "eval_batches", "log_interval", "log_seconds", "sample_prompt",
                               "sample_tokens", "sample_temperature", "snapshots"],
    "System": ["device", "precision", "compile", "seed", "save_dtype", "wandb", "wandb_project"],
}
DEVICES = ("auto", "cpu", "cuda", "mps")


# -- fields <-> configs ---------------------------------------------------------------------------------
def _component(spec: FieldSpec, value) -> gr.components.Component:
    elem_id = f"train-{spec.name.replace('_', '-')}"
    common = {"label": spec.label, "info": spec.describe(), "elem_id": elem_id}
    if spec.kind is bool:
        return gr.Checkbox(value, **common)
    if spec.choices or spec.name == "device":
        choices = list(spec.choices or DEVICES)
        return gr.Dropdown(choices, value=value, allow_custom_value=spec.name == "device", **common)
    if spec.kind in (int, float):
        return gr.Number(value, precision=0 if spec.kind is int else None, **common)
    return gr.Textbox(value, max_lines=1, **common)


def _convert(spec: FieldSpec, value):
    """A component value as the config field wants it (blank -> None for optional fields, 4.0 -> 4)."""
    if value is None or value == "" or (spec.optional and value == 0):
        return None  # a browser sends 0 for an emptied number: for optional fields that means "not set"
    if spec.kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def preset_values(preset: str) -> list:
    """Every field's value under a preset, in `FIELD_NAMES` order."""
    model, train = resolve_preset(preset)
    values = {**model.to_dict(), **train.to_dict()}
    return [values[name] for name in FIELD_NAMES]


def build_configs(values: dict | list) -> tuple[GPTConfig, TrainConfig]:
    """The two configs from field values (a dict by name, or a list in `FIELD_NAMES` order)."""
    if not isinstance(values, dict):
        values = dict(zip(FIELD_NAMES, values, strict=True))
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise UserInputError(f"unknown field(s) {', '.join(unknown)}; the fields are: {', '.join(FIELD_NAMES)}")
    given = {name: _convert(SPECS[name], value) for name, value in values.items()}
    for name, value in given.items():
        if value is None and not SPECS[name].optional:
            raise UserInputError(f"{name} needs a value", field=name)
    model = GPTConfig.from_dict({name: value for name, value in given.items() if name in MODEL_SPECS})
    return model, TrainConfig.from_dict({name: value for name, value in given.items() if name in TRAIN_SPECS})


def _request_configs(request: dict) -> tuple[GPTConfig, TrainConfig]:
    """Configs from an API request: the preset's values with `fields` changed (named, any subset)."""
    preset = request.get("preset") or default_preset(resolve_device("auto").type)
    fields = request.get("fields") or {}
    if not isinstance(fields, dict):
        raise UserInputError("fields must be an object of field name -> value")
    return build_configs({**dict(zip(FIELD_NAMES, preset_values(preset), strict=True)), **fields})


# -- handlers -------------------------------------------------------------------------------------------
def dataset_choices(dirs: AppDirs) -> list[str]:
    """Prepared datasets, with the bundled corpus listed even before its first use prepares it."""
    names = prepared_datasets(dirs)
    return names if BUNDLED_DATASET_NAME in names else [BUNDLED_DATASET_NAME, *names]


def summary_markdown(dirs: AppDirs, request: dict) -> str:
    """The plan (parameters, steps, memory, precision for this machine) for the fields, or what is wrong."""
    try:
        model, train = _request_configs(request)
        dataset = request.get("dataset")
        data_dir = dataset_dir(dirs, dataset) if dataset in prepared_datasets(dirs) else None
        plan = make_plan(model, train, data_dir)
    except UserInputError as error:
        return f"⚠️ **{error}**"
    lines = plan.lines()
    if data_dir is None and dataset == BUNDLED_DATASET_NAME:
        lines.append("- dataset: Tiny Shakespeare, prepared with default cleaning when you press Start")
    if zerogpu.ON_ZEROGPU:
        lines.append(f"- ZeroGPU: trains in bursts of {BURST_SECONDS:.0f} s, each one GPU call of up to "
                     f"{BURST_DURATION} s of your daily GPU quota"
                     + (f"; this run uses about {plan.train.max_minutes * 60 / BURST_SECONDS * BURST_DURATION / 60:.0f}"
                        " min of quota" if plan.train.max_minutes else ""))
    return "\n".join(lines)


def field_checks(request: dict) -> dict[str, str]:
    """Field name -> message for the field a config error is about (`UserInputError.field`)."""
    try:
        _request_configs(request)
    except UserInputError as error:
        return {error.field or FIELD_NAMES[0]: str(error)}
    return {}


def start_run(dirs: AppDirs, request: dict, progress=None) -> Path:
    """Resolve a start request into a complete `RunConfig` and start the job; returns the run folder.

    request: {"preset": name, "dataset": name, "run_name": text, "fields": {field: value, ...}}; fields not
    given take the preset's values."""
    model, train = _request_configs(request)
    dataset = request.get("dataset")
    if not dataset:
        raise UserInputError("Choose a dataset (prepare one in the Data tab).", field="dataset")
    if dataset == BUNDLED_DATASET_NAME:
        if progress is not None:
            progress(0.2, desc="preparing the bundled Tiny Shakespeare")
        data_dir = ensure_bundled_dataset(dirs)
    else:
        data_dir = dataset_dir(dirs, dataset)
    preset = request.get("preset") or default_preset(resolve_device("auto").type)
    get_preset(preset)
    folder = safe_name(request.get("run_name") or f"{preset}-{data_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = dirs.runs / folder
    if (run_dir / "model.safetensors").exists():
        raise UserInputError(f"A run named {folder!r} exists already; choose another run name.", field="run_name")
    plan = make_plan(model, train, data_dir)  # checks device and precision before anything is written
    tokenizer = tokenizer_for(train.vocab, data_dir, train.vocab_limit)
    config = RunConfig(model=plan.model, train=train, data=DataRef(str(data_dir), read_meta(data_dir)),
                       tokenizer=tokenizer, preset=preset)
    return JOBS.start(config, run_dir).run_dir


def run_progress(run_dir: Path, rows: list[dict]) -> str:
    """One status line: state (with its reason), then phase, step of planned steps, s/step, ETA."""
    job = JOBS.current()
    is_job = job is not None and job.run_dir.resolve() == run_dir.resolve()
    try:
        run = Run.open(run_dir)
    except UserInputError:
        return f"**{run_dir.name}: starting** (python -m gpt train --config …)"
    state, message = run_state_and_message(run)  # the runs table's rule: the same state in both places
    if is_job and job.is_running() and job.stop_requested:
        state = "stopping…"
        message = "finishing the current step, then the final evaluation and checkpoint"
    elif state == "new" and is_job:
        state = "starting"
    train = run.config.train
    planned = planned_steps(train, run.config.model, run.config.data.meta.get("train_tokens")) if train else None
    ended = state in ("stopped", "finished", "diverged", "failed", "interrupted")
    head = f"**{run.name}: {state}**" + (f" — {message}" if message and (ended or state == "stopping…") else "")
    wandb = hub_panel.wandb_markdown(run)
    wandb = f"\n\n{wandb}" if wandb else ""
    if ended:
        return head + wandb
    return f"{head} · {training_progress(rows, train, planned).text()}{wandb}"


def latest_sample(rows: list[dict]) -> str:
    samples = [row for row in rows if row.get("kind") == "sample"]
    if not samples:
        return ""
    last = samples[-1]
    return f"[step {last['step']}] {last['prompt']}{last['text']}"


# -- layout -----------------------------------------------------------------------------------------
@dataclass
class TrainTab:
    preset: gr.Dropdown
    preset_note: gr.Markdown
    dataset: gr.Dropdown
    run_name: gr.Textbox
    fields: list
    summary: gr.Markdown
    start: gr.Button
    stop: gr.Button
    status: gr.Markdown
    plot: gr.Plot
    heads_plot: gr.Plot
    sample: gr.Textbox
    timer: gr.Timer
    viewed: gr.State
    seen: gr.State
    table: gr.Dataframe
    refresh: gr.Button
    compare: gr.Dropdown
    compare_plot: gr.Plot
    download_run: gr.Dropdown
    download: gr.Button
    zip_file: gr.File
    upload: gr.File
    upload_result: gr.Markdown
    hub: hub_panel.HubPanel


def build(dirs: AppDirs) -> TrainTab:
    """The tab's components (call inside `gr.Tab("Train")`)."""
    first = default_preset(resolve_device("auto").type)
    with gr.Row():
        preset = gr.Dropdown([(f"{name}", name) for name in [first, *(n for n in PRESETS if n != first)]],
                             value=first, label="Preset (fills every field below)", elem_id="train-preset")
        dataset = gr.Dropdown(dataset_choices(dirs), value=BUNDLED_DATASET_NAME, label="Dataset",
                              elem_id="train-dataset")
        run_name = gr.Textbox(label="Run name (folder under the runs folder)", elem_id="train-run-name",
                              placeholder="blank = preset-dataset-date-time")
    preset_note = gr.Markdown(f"*{first}*: {get_preset(first).description}", elem_id="train-preset-note")
    initial = dict(zip(FIELD_NAMES, preset_values(first), strict=True))
    components: dict[str, gr.components.Component] = {}
    grouped = [name for names in GROUPS.values() for name in names]
    groups = {**GROUPS, "Other": [name for name in FIELD_NAMES if name not in grouped]}
    with gr.Accordion("Model and training settings", open=True):
        for title, names in groups.items():
            names = [name for name in names if name in SPECS]
            if not names:
                continue
            gr.Markdown(f"**{title}**")
            for start_index in range(0, len(names), 5):
                with gr.Row():
                    for name in names[start_index:start_index + 5]:
                        components[name] = _component(SPECS[name], initial[name])
    summary = gr.Markdown(summary_markdown(dirs, {"preset": first, "dataset": BUNDLED_DATASET_NAME}),
                          elem_id="train-summary")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
    status = gr.Markdown("No training job yet.", elem_id="train-status")
    plot = gr.Plot(label="Training curves", elem_id="train-plot")
    heads_plot = gr.Plot(label="Inside the model: head types and in-context learning, at each evaluation",
                         elem_id="train-heads-plot")
    sample = gr.Textbox(label="Latest sample (fixed prompt and seed, at each evaluation)", lines=4,
                        interactive=False, elem_id="train-sample")
    timer = gr.Timer(POLL_SECONDS, active=False)
    viewed, seen = gr.State(None), gr.State(None)  # the run this page shows; what the last poll drew

    gr.Markdown("### Runs")
    table = gr.Dataframe(runs_table(dirs), interactive=False, wrap=True, elem_id="train-runs")
    with gr.Row():
        refresh = gr.Button("↻ Refresh runs", elem_id="train-refresh", scale=0, min_width=140)
        # custom values: the handlers check them against the runs listed at the time of the call (`known_run`)
        compare = gr.Dropdown(run_choices(dirs), multiselect=True, label="Overlay the curves of these runs",
                              elem_id="train-compare", allow_custom_value=True)
    compare_plot = gr.Plot(label="Runs compared", elem_id="train-compare-plot")
    with gr.Row():
        with gr.Column():
            download_run = gr.Dropdown(run_choices(dirs), label="Run to download", elem_id="train-download-run",
                                       allow_custom_value=True)
            download = gr.Button("Make zip", elem_id="train-download")
            zip_file = gr.File(label="Run zip", interactive=False, elem_id="train-zip")
        with gr.Column():
            upload = gr.File(label="Upload a run (.zip with config.json and .safetensors weights; no pickles)",
                             file_types=[".zip"], type="filepath", elem_id="train-upload")
            upload_result = gr.Markdown(elem_id="train-upload-result")
    hub = hub_panel.build(dirs)
    return TrainTab(preset=preset, preset_note=preset_note, dataset=dataset, run_name=run_name,
                    fields=[components[name] for name in FIELD_NAMES], summary=summary, start=start, stop=stop,
                    status=status, plot=plot, heads_plot=heads_plot, sample=sample, timer=timer, viewed=viewed,
                    seen=seen, table=table,
                    refresh=refresh, compare=compare, compare_plot=compare_plot, download_run=download_run,
                    download=download, zip_file=zip_file, upload=upload, upload_result=upload_result, hub=hub)


# -- events -----------------------------------------------------------------------------------------
def _form_request(preset: str, dataset: str | None, run_name: str | None, values: tuple) -> dict:
    return {"preset": preset, "dataset": dataset, "run_name": run_name,
            "fields": dict(zip(FIELD_NAMES, values, strict=True))}


def wire(dirs: AppDirs, tab: TrainTab, demo: gr.Blocks) -> None:
    """Connect the tab's events; public API endpoints take one named request object."""

    @handle_errors
    def fill(preset_name):
        return preset_values(preset_name)

    @handle_errors
    def describe(preset_name):
        return f"*{preset_name}*: {get_preset(preset_name).description}"

    def form_summary(preset_name, dataset_name, *values):
        return summary_markdown(dirs, _form_request(preset_name, dataset_name, None, values))

    def validate(preset_name, dataset_name, name, *values):
        checks = [gr.validate(True, "")] * (3 + len(values))
        for field, message in field_checks(_form_request(preset_name, dataset_name, name, values)).items():
            if field in FIELD_NAMES:
                checks[3 + FIELD_NAMES.index(field)] = gr.validate(False, message)
            else:
                checks[0] = gr.validate(False, message)
        if not dataset_name:
            checks[1] = gr.validate(False, "Choose a dataset (prepare one in the Data tab).")
        return checks

    def started(run_dir: Path):
        return (str(run_dir), None, f"**{run_dir.name}: starting** (python -m gpt train --config …)",
                gr.Timer(active=True))

    @handle_errors
    def start_from_form(preset_name, dataset_name, name, *values, progress=gr.Progress()):  # noqa: B008
        return started(start_run(dirs, _form_request(preset_name, dataset_name, name, values), progress))

    @handle_errors
    def start_training(preset: str = "", dataset: str = "", run_name: str = "",
                       fields: dict | None = None) -> str:
        """Start a training job: the preset's values with `fields` (name -> value) changed; returns the run name."""
        request = {"preset": preset, "dataset": dataset, "run_name": run_name, "fields": fields or {}}
        return start_run(dirs, request).name

    def train_summary(preset: str = "", dataset: str = "", fields: dict | None = None) -> str:
        """The plan of a run (parameters, steps, memory, precision on this machine), or what is wrong."""
        return summary_markdown(dirs, {"preset": preset, "dataset": dataset, "fields": fields or {}})

    def poll(run_dir, last_seen):
        """Redraw the viewed run when its metrics changed; keep polling only while its job runs."""
        job = JOBS.current()
        if job is not None and (job.is_running() or not run_dir):
            run_dir = str(job.run_dir)
        if not run_dir:
            return run_dir, last_seen, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
        path = Path(run_dir)
        metrics = path / "metrics.jsonl"
        running = job is not None and job.run_dir.resolve() == path.resolve() and job.is_running()
        signature = [run_dir, metrics.stat().st_size if metrics.is_file() else 0, running,
                     job.stop_requested if job else False, int(time.time()) // 5 if running else 0]
        if signature == last_seen:
            return (run_dir, last_seen, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=running),
                    gr.skip())
        rows = read_metrics(path)
        figure = training_figure({path.name: rows}) if rows else None
        heads = [row for row in rows if row.get("kind") == "heads"]
        heads_figure = head_scores_over_steps(heads) if heads else gr.skip()
        table_update = gr.skip() if running else runs_table(dirs)  # a job just ended: its row changed
        return (run_dir, signature, run_progress(path, rows), figure, latest_sample(rows), heads_figure,
                gr.Timer(active=running), table_update)

    @handle_errors
    def stop_training():
        job = JOBS.stop()
        if job is None:
            raise UserInputError("No training job is running.")
        message = (f"**{job.name}: stopping…** — finishing the current step, then the final evaluation and "
                   "checkpoint")
        return message, gr.Timer(active=True)

    def refresh_runs(selected, to_download):
        choices = run_choices(dirs)
        names = {name for _, name in choices}
        return (runs_table(dirs), gr.update(choices=choices, value=[v for v in selected or [] if v in names]),
                gr.update(choices=choices, value=to_download if to_download in names else None))

    @handle_errors
    def overlay(selected):
        if not selected:
            return None
        runs = [known_run(dirs, run) for run in selected]
        return training_figure({run.name: read_metrics(run) for run in runs}, height=560)

    @handle_errors
    def make_zip(run_name):
        if not run_name:
            raise UserInputError("Choose a run to download.")
        return str(export_run_zip(known_run(dirs, run_name)))

    @handle_errors
    def receive(zip_path):
        if not zip_path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        run_dir, notes = import_run_zip(zip_path, dirs)
        message = "\n".join([f"Added run **{run_dir.name}**.", *(f"- {note}" for note in notes)])
        return (message, *refresh_runs([], None))

    form = [tab.preset, tab.dataset, tab.run_name, *tab.fields]
    tab.preset.change(fill, tab.preset, tab.fields, api_name="preset_values")
    tab.preset.change(describe, tab.preset, tab.preset_note, api_visibility="private", show_progress="hidden")
    gr.on([tab.preset.change, tab.dataset.change, *[c.change for c in tab.fields]], form_summary,
          [tab.preset, tab.dataset, *tab.fields], tab.summary, api_visibility="private",
          trigger_mode="always_last", show_progress="hidden")
    demo.load(form_summary, [tab.preset, tab.dataset, *tab.fields], tab.summary, api_visibility="private",
              show_progress="hidden")
    gr.api(train_summary, api_name="train_summary")
    tab.start.click(start_from_form, form, [tab.viewed, tab.seen, tab.status, tab.timer], validator=validate,
                    concurrency_limit=1, concurrency_id="train-start", api_visibility="private")
    gr.api(start_training, api_name="start_training", concurrency_limit=1, concurrency_id="train-start")
    tab.stop.click(stop_training, None, [tab.status, tab.timer], api_name="stop_training")
    poll_outputs = [tab.viewed, tab.seen, tab.status, tab.plot, tab.sample, tab.heads_plot, tab.timer, tab.table]
    tab.timer.tick(poll, [tab.viewed, tab.seen], poll_outputs, api_name="poll", show_progress="hidden",
                   concurrency_limit=None)
    demo.load(poll, [tab.viewed, tab.seen], poll_outputs, api_visibility="private")
    tab.dataset.focus(lambda current: gr.update(choices=dataset_choices(dirs), value=current), tab.dataset,
                      tab.dataset, api_visibility="private")
    runs_outputs = [tab.table, tab.compare, tab.download_run]
    tab.refresh.click(refresh_runs, [tab.compare, tab.download_run], runs_outputs, api_name="runs")
    gr.on([tab.compare.focus, tab.download_run.focus], refresh_runs, [tab.compare, tab.download_run], runs_outputs,
          api_visibility="private")
    tab.compare.change(overlay, tab.compare, tab.compare_plot, api_name="compare_runs")
    tab.download.click(make_zip, tab.download_run, tab.zip_file, api_name="download_run")
    tab.upload.upload(receive, tab.upload, [tab.upload_result, *runs_outputs], api_name="upload_run")
    hub_panel.wire(dirs, tab.hub)
