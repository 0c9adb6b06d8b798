"""The Generate tab, the sampler lab: a chat-like box over any listed run that streams the model's
continuation, with every control of `gpt.sampling.SamplingConfig`, the chain's order, named presets, and
for each generated token the distribution after each stage of the chain; the answer coloured by the
probability the model gave each token; branching: pick another token anywhere and the text continues from
it, next to the other branches.

Layout in `build` (the controls are made from `SamplingConfig`'s field specs), handlers at module level
(plain functions of values and state, testable without a browser), events in `wire`. Only `_steps` touches
the model (inside `@spaces.GPU` on ZeroGPU); the handlers around it build the chat, the stats and the
views, and check the session's stop flag after every token, so Stop ends the answer at once and the stats,
the stage view and the branches always describe the answer on the screen.

Limits, through the page and the API alike: each control is bounded by its slider (Gradio refuses values
outside it with the bound in the message); a prompt may have up to `MAX_PROMPT_CHARS` characters, of which
the model reads its last `context_length` tokens (the penalties look at all of them); the chat shows a long
prompt shortened to its head and tail, so streamed updates stay small; an answer keeps `MAX_BRANCHES`.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from gpt.errors import UserInputError
from gpt.fields import FieldSpec, field_specs
from gpt.figures import SAMPLING_CSS, answer_html, chain_html, stage_table_html, stages_figure
from gpt.run import Run
from gpt.runtime import resolve_device
from gpt.sampling import (
    PRESET_NOTES,
    SAMPLER_FIELDS,
    SAMPLING_PRESETS,
    GenerationStep,
    SamplingConfig,
    chain_settings,
    decoding_model,
    encode_prompt,
    preset_values,
    prompt_note,
    stream_generate_ids,
)
from gpt.tokenizer import Tokenizer
from gpt.ui.common import AppDirs, handle_errors
from gpt.ui.models import checkpoint_choices, get_run
from gpt.ui.runs import default_run_value, known_run, run_choices
from gpt.ui.zerogpu import gpu

TOP_CANDIDATES = 10  # tokens per stage in the stage view
CONCURRENCY = 4
STREAM_INTERVAL = 0.05  # seconds between streamed updates of the chat
BRANCH_STREAM_INTERVAL = 0.3  # ... of the branches view while a branch grows
MAX_PROMPT_CHARS = 2_000_000
CHAT_PROMPT_CHARS = 4_000  # a longer prompt shows in the chat as its head and tail
MAX_BRANCHES = 6
ANSWER_SECONDS = 3600  # an answer (with its stage views) is kept this long after its last change
SPECS = {spec.name: spec for spec in field_specs(SamplingConfig)}
# Controls as shown; `top_candidates` is the tab's own (the stage view), every other field has a control.
GROUPS = {
    "Temperature and truncation": ["temperature", "top_n_sigma", "top_k", "top_p", "min_p", "typical_p"],
    "Penalties": ["repetition_penalty", "frequency_penalty", "presence_penalty", "penalty_window"],
    "DRY (don't repeat yourself)": ["dry_multiplier", "dry_base", "dry_allowed_length"],
    "Length, seed and speed": ["max_new_tokens", "stop_at_eot", "seed", "precision"],
}
OPEN_GROUPS = ("Temperature and truncation", "Length, seed and speed")
CONTROL_FIELDS = [name for names in GROUPS.values() for name in names]
ANSWER_CLICK_JS = """element.addEventListener('click', (event) => {
  const token = event.target.closest('[data-step]');
  if (token) trigger('click', {branch: Number(token.dataset.branch), step: Number(token.dataset.step)});
});"""


# -- the answer and its branches ----------------------------------------------------------------------------
@dataclass
class Branch:
    label: str
    steps: list[GenerationStep]  # the whole answer of this branch (a fork shares the steps before it)


@dataclass
class Answer:
    """The answer the views describe: its prompt, where it came from, and its branches (main first)."""

    prompt: str
    prompt_ids: list[int]
    run_dir: Path
    checkpoint: str
    seed: int
    branches: list[Branch]


_stop_flags: dict[str, threading.Event] = {}
_stop_lock = threading.Lock()


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def new_stop_flag(session: str) -> threading.Event:
    """A fresh stop flag for this session's generation (replacing an older one)."""
    with _stop_lock:
        flag = _stop_flags[session] = threading.Event()
    return flag


def request_stop(session: str) -> bool:
    """Ask this session's running generation to stop after its current token; False when none runs."""
    with _stop_lock:
        flag = _stop_flags.get(session)
    if flag is None or flag.is_set():
        return False
    flag.set()
    return True


def _release(session: str, flag: threading.Event) -> None:
    with _stop_lock:
        if _stop_flags.get(session) is flag:
            del _stop_flags[session]


# -- values -> library objects --------------------------------------------------------------------------
def sampling_config(values: dict) -> SamplingConfig:
    """The config of the controls' values (keys: SamplingConfig field names). A whole float for an integer
    field becomes an int (sliders send 40.0); seed None, "" or negative means a random seed."""
    given = {}
    for name, value in values.items():
        if name not in SPECS:
            raise UserInputError(f"unknown sampling option {name!r}")
        if SPECS[name].kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        given[name] = value
    if given.get("seed") in ("", None) or (isinstance(given.get("seed"), int) and given["seed"] < 0):
        given["seed"] = None
    return SamplingConfig(**given, top_candidates=TOP_CANDIDATES)


def with_seed(config: SamplingConfig) -> SamplingConfig:
    """The config with a seed: its own, or a fresh random one (shown, so the answer can be reproduced)."""
    return config if config.seed is not None else config.replace(seed=random.randrange(2**31))


def resolve_checkpoint(dirs: AppDirs, run: str | None, checkpoint: str | None) -> tuple[Path, str, int]:
    """(run folder, checkpoint name, its step) for a run the app lists and one of that run's checkpoints;
    anything else is refused, naming only the value given."""
    run_dir = known_run(dirs, run)
    infos = {info.name: info for info in Run.open(run_dir).checkpoints()}
    name = checkpoint or "last"
    if name not in infos:
        shown = Path(str(name)).name[:80]
        raise UserInputError(f"unknown checkpoint {shown!r} for run {run_dir.name}: choose one of "
                             f"{', '.join(infos) or 'none yet'}", field="checkpoint")
    return run_dir, name, infos[name].step


@functools.lru_cache(maxsize=8)
def _run_tokenizer(run_dir: Path, modified_ns: int) -> tuple[Tokenizer, int]:
    config = Run.open(run_dir).config
    return config.tokenizer, config.model.context_length


def run_tokenizer(run_dir: Path) -> tuple[Tokenizer, int]:
    """(tokenizer, context length) of a run, read once per version of its config.json."""
    return _run_tokenizer(run_dir, (run_dir / "config.json").stat().st_mtime_ns)


def chat_prompt(prompt: str) -> str:
    """The prompt as the chat shows it: whole, or its head and tail when it is long."""
    if len(prompt) <= CHAT_PROMPT_CHARS:
        return prompt
    half = CHAT_PROMPT_CHARS // 2
    return f"{prompt[:half]}\n\n[… {len(prompt) - 2 * half:,} characters not shown …]\n\n{prompt[-half:]}"


def check_prompt(prompt: str | None) -> str:
    if not prompt or not str(prompt).strip():
        raise UserInputError("Type a prompt first: the model continues the text you give it.", field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserInputError(f"the prompt has {len(prompt):,} characters; the app takes up to "
                             f"{MAX_PROMPT_CHARS:,} (the model reads only its last tokens anyway)", field="prompt")
    return str(prompt)


@gpu
def _steps(run_dir: Path, checkpoint: str, prompt_ids: list[int], config: SamplingConfig,
           forced: tuple[int, ...] = ()) -> Iterator[str | GenerationStep]:
    """The model's work (inside `@spaces.GPU` on ZeroGPU): first a line saying how it decodes (precision
    and why), then one `GenerationStep` per token."""
    loaded = get_run(run_dir, checkpoint, device=str(resolve_device("auto")))
    _, precision, reason = decoding_model(loaded.model, config.precision)
    yield f"{precision} ({reason})"
    yield from stream_generate_ids(loaded.model, loaded.tokenizer, prompt_ids, config, forced)


def _stats(steps: list[GenerationStep], seconds: float, answer: Answer, step_number: int, decoding: str,
           stopped: bool, notes: list[str]) -> str:
    rate = len(steps) / max(seconds, 1e-9)
    end = " · **stopped**" if stopped else ""
    lines = [f"**{len(steps)} tokens in {seconds:.2f} s · {rate:.1f} tokens/s**{end} · {answer.run_dir.name} "
             f"({answer.checkpoint}, step {step_number}) · seed {answer.seed} · {decoding}", *notes]
    return "\n\n".join(lines)


# -- views ------------------------------------------------------------------------------------------------
def _branch_steps(answer: Answer | None, branch: int | None) -> tuple[int, list[GenerationStep]]:
    if answer is None or not answer.branches:
        raise UserInputError("Generate an answer first.")
    index = int(branch or 0)
    if not 0 <= index < len(answer.branches):
        raise UserInputError(f"there is no branch {index}; this answer has {len(answer.branches)}")
    return index, answer.branches[index].steps


def step_view(answer: Answer | None, branch: int | None, step: int | None):
    """(stage figure, stage table, alternatives update) for token `step` (1-based, clamped) of a branch."""
    if answer is None or not answer.branches:
        return None, "", gr.update(choices=[], value=None)
    index, steps = _branch_steps(answer, branch)
    if not steps:
        return None, "", gr.update(choices=[], value=None)
    number = min(max(int(step or 1), 1), len(steps))
    chosen = steps[number - 1]
    tokenizer, _ = run_tokenizer(answer.run_dir)
    label = answer.branches[index].label.split(" — ")[0]
    title = (f"Token {number} of {len(steps)} ({label}): {tokenizer.token_display(chosen.token_id)}"
             f"{' (picked by you)' if chosen.forced else ''}")
    figure = stages_figure(chosen.stages, tokenizer, chosen.token_id, title)
    alternatives = [(f"{tokenizer.token_display(t)}   {p:.1%}", t) for t, p in chosen.stages[0].top
                    if t != chosen.token_id]
    return figure, stage_table_html(chosen.stages), gr.update(
        choices=alternatives, value=None, label=f"Continue from another token at position {number} (a new branch)")


def branches_view(answer: Answer | None, selected: tuple[int, int] | None = None) -> str:
    if answer is None:
        return ""
    tokenizer, _ = run_tokenizer(answer.run_dir)
    return answer_html([(b.label, b.steps) for b in answer.branches], tokenizer, selected)


def branch_choices(answer: Answer | None, value: int = 0):
    choices = [(b.label.split(" — ")[0], i) for i, b in enumerate(answer.branches)] if answer else []
    return gr.update(choices=choices, value=value if choices else None)


def slider_update(steps: list[GenerationStep], value: int):
    return gr.update(maximum=max(2, len(steps)), value=min(max(value, 1), max(1, len(steps))),
                     interactive=bool(steps))


def chain_view(values: dict) -> str:
    """The chain with the current settings, or what is wrong with them."""
    try:
        return chain_html(chain_settings(sampling_config(values)))
    except UserInputError as error:
        return chain_html(chain_settings(SamplingConfig()), error=str(error))


def apply_preset(name: str) -> list:
    """The preset's note and the values of every sampler control it sets (in `SAMPLER_FIELDS` order)."""
    values = preset_values(name)
    return [f"*{PRESET_NOTES[name]}*", *(values[field] for field in SAMPLER_FIELDS)]


# -- the two streams: a new answer, a new branch ---------------------------------------------------------------
def generate(dirs: AppDirs, history: list | None, prompt: str | None, run: str | None, checkpoint: str | None,
             values: dict, stop: threading.Event) -> Iterator[tuple]:
    """Append the prompt to the chat and stream the model's continuation until it ends or `stop` is set.
    Yields (chat, stats, step slider, stage figure, branches view, stage table, alternatives, branch picker,
    answer); while streaming only the chat and the stats change."""
    prompt = check_prompt(prompt)
    config = with_seed(sampling_config(values))
    run_dir, checkpoint, step_number = resolve_checkpoint(dirs, run, checkpoint)
    tokenizer, context = run_tokenizer(run_dir)
    prompt_ids = encode_prompt(tokenizer, prompt)
    notes = [note for note in [prompt_note(tokenizer, prompt)] if note]
    if len(prompt_ids) > context:
        notes.append(f"The prompt has {len(prompt_ids):,} tokens; the model reads its last {context} (its "
                     "context), the penalties the whole penalty window.")
    history = [*(history or []), {"role": "user", "content": chat_prompt(prompt)},
               {"role": "assistant", "content": ""}]
    answer = Answer(prompt, prompt_ids, run_dir, checkpoint, config.seed, [Branch("main", [])])
    skip = (gr.skip(),) * 7
    yield history, "*generating…*", *skip
    steps, text, decoding = answer.branches[0].steps, "", ""
    started = last_yield = time.perf_counter()
    stopped = False
    with contextlib.closing(_steps(run_dir, checkpoint, prompt_ids, config)) as stream:
        for item in stream:
            if isinstance(item, str):
                decoding = item
                continue
            steps.append(item)
            text += item.text
            if stop.is_set():
                stopped = True
                break
            if time.perf_counter() - last_yield >= STREAM_INTERVAL:  # each update re-sends the answer: pace them
                last_yield = time.perf_counter()
                history[-1] = {"role": "assistant", "content": text}
                yield history, f"*generating… {len(steps)} tokens*", *skip
    seconds = time.perf_counter() - started
    history[-1] = {"role": "assistant", "content": text}
    figure, table, alternatives = step_view(answer, 0, 1)
    yield (history, _stats(steps, seconds, answer, step_number, decoding, stopped, notes), slider_update(steps, 1),
           figure, branches_view(answer, (0, 1)), table, alternatives, branch_choices(answer, 0), answer)


def fork(answer: Answer | None, branch_index: int | None, step: int | None, alternative: int | None,
         values: dict, stop: threading.Event) -> Iterator[tuple]:
    """Fork branch `branch_index` at token `step` (1-based): take `alternative` there instead and let the
    model continue with the current settings (as long as the branch it forks, at most). Yields
    `BRANCH_OUTPUTS`: (stats, branches view, branch picker, step slider, stage figure, stage table,
    alternatives, answer)."""
    index, parent = _branch_steps(answer, branch_index)
    if alternative is None:
        raise UserInputError("Pick the token to continue from.", field="alternative")
    if len(answer.branches) >= MAX_BRANCHES:
        raise UserInputError(f"An answer keeps {MAX_BRANCHES} branches; Generate again to start over.")
    number = int(step or 1)
    if not 1 <= number <= len(parent):
        raise UserInputError(f"token {number} is not in {answer.branches[index].label} ({len(parent)} tokens)")
    tokenizer, _ = run_tokenizer(answer.run_dir)
    if not 0 <= int(alternative) < tokenizer.vocab_size:
        raise UserInputError(f"token id {alternative} is outside this model's vocabulary of {tokenizer.vocab_size}")
    config = with_seed(sampling_config(values))
    config = config.replace(max_new_tokens=max(1, config.max_new_tokens - (number - 1)))
    shared = parent[: number - 1]
    old, new = tokenizer.token_display(parent[number - 1].token_id), tokenizer.token_display(int(alternative))
    settings = ", ".join(f"{name} {setting}" for name, setting in chain_settings(config) if setting) or "no controls"
    label = f"branch {len(answer.branches) + 1}: token {number} {old} → {new} — {settings}, seed {config.seed}"
    grown = Branch(label, list(shared))
    answer.branches.append(grown)
    new_index = len(answer.branches) - 1
    prefix = answer.prompt_ids + [s.token_id for s in shared]
    skip = (gr.skip(),) * 5
    started = last_yield = time.perf_counter()
    stopped, decoding = False, ""
    yield "*branching…*", branches_view(answer), branch_choices(answer, new_index), *skip
    with contextlib.closing(_steps(answer.run_dir, answer.checkpoint, prefix, config, (int(alternative),))) as stream:
        for item in stream:
            if isinstance(item, str):
                decoding = item
                continue
            grown.steps.append(item)
            if stop.is_set():
                stopped = True
                break
            if time.perf_counter() - last_yield >= BRANCH_STREAM_INTERVAL:
                last_yield = time.perf_counter()
                yield f"*branching… {len(grown.steps) - len(shared)} tokens*", branches_view(answer), gr.skip(), *skip
    seconds = time.perf_counter() - started
    made = len(grown.steps) - len(shared)
    stats = (f"**{label.split(' — ')[0]}: {made} tokens in {seconds:.2f} s**{' · **stopped**' if stopped else ''}"
             f" · {decoding}")
    figure, table, alternatives = step_view(answer, new_index, number)
    yield (stats, branches_view(answer, (new_index, number)), branch_choices(answer, new_index),
           slider_update(grown.steps, number), figure, table, alternatives, answer)


def take_last_prompt(history: list | None, answer: Answer | None) -> tuple[list, str]:
    """The chat without its last exchange, and that exchange's whole prompt (for Regenerate)."""
    history = list(history or [])
    if answer is None or not history:
        raise UserInputError("Nothing to regenerate yet.")
    while history and history[-1]["role"] == "assistant":
        history.pop()
    return history[:-1], answer.prompt


def select_token(answer: Answer | None, branch_index: int, step: int):
    """A click on a token of the branches view: that branch and token in the pickers and the stage view."""
    index, steps = _branch_steps(answer, branch_index)
    number = min(max(int(step), 1), len(steps))
    figure, table, alternatives = step_view(answer, index, number)
    return (branch_choices(answer, index), slider_update(steps, number), figure, table, alternatives,
            branches_view(answer, (index, number)))


def show_branch(answer: Answer | None, branch_index: int | None, step: int | None):
    """Another branch picked: the step slider fits it, the stage view follows."""
    index, steps = _branch_steps(answer, branch_index)
    number = min(max(int(step or 1), 1), max(1, len(steps)))
    return (slider_update(steps, number), *step_view(answer, index, number), branches_view(answer, (index, number)))


def checkpoints_update(dirs: AppDirs, run: str | None):
    names = checkpoint_choices(known_run(dirs, run)) if run else []
    return gr.update(choices=names, value="last" if "last" in names else (names[0] if names else None))


# -- layout -----------------------------------------------------------------------------------------------
def _control(spec: FieldSpec) -> gr.components.Component:
    """One sampling control, labelled, bounded and explained by its field metadata."""
    common = {"label": spec.label, "info": spec.describe(), "elem_id": f"gen-{spec.name.replace('_', '-')}"}
    if spec.kind is bool:
        return gr.Checkbox(spec.default, **common)
    if spec.choices:
        return gr.Dropdown(list(spec.choices), value=spec.default, **common)
    if spec.optional:  # the seed: empty = random
        return gr.Number(spec.default, precision=0, minimum=spec.minimum, placeholder="random", **common)
    step = spec.step or (1 if spec.kind is int else 0.01)
    low = spec.minimum + step if spec.exclusive_minimum else spec.minimum
    high = spec.maximum if spec.maximum is not None else spec.ui_maximum
    return gr.Slider(low, high, value=spec.default, step=step, precision=0 if spec.kind is int else None, **common)


@dataclass
class GenerateTab:
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    refresh: gr.Button
    chat: gr.Chatbot
    prompt: gr.Textbox
    pending: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    clear: gr.Button
    stats: gr.Markdown
    preset: gr.Dropdown
    preset_note: gr.Markdown
    chain: gr.HTML
    controls: dict
    answer_view: gr.HTML
    branch: gr.Radio
    step: gr.Slider
    stage_table: gr.HTML
    why: gr.Plot
    alternatives: gr.Radio
    answer: gr.State


def build(dirs: AppDirs) -> GenerateTab:
    """The tab's components (call inside `gr.Tab("Generate")`); no events."""
    default_run = default_run_value(dirs)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                run = gr.Dropdown(run_choices(dirs), value=default_run, label="Run", allow_custom_value=True,
                                  elem_id="gen-run", scale=3)
                checkpoint = gr.Dropdown(checkpoint_choices(known_run(dirs, default_run)) if default_run else [],
                                         value="last" if default_run else None, label="Checkpoint",
                                         allow_custom_value=True, elem_id="gen-checkpoint", scale=1)
                refresh = gr.Button("↻ Runs", elem_id="gen-refresh", scale=0, min_width=80)
            gr.Markdown("**The model continues your text** (a base language model, not a chat model)",
                        elem_id="gen-chat-title")
            chat = gr.Chatbot(show_label=False, elem_id="gen-chat", height=420, feedback_options=None,
                              buttons=["copy"])
            prompt = gr.Textbox(label="Prompt", placeholder="ROMEO:", lines=2, elem_id="gen-prompt")
            pending = gr.Textbox(visible=False)  # the prompt being answered (a component, so the API takes it)
            with gr.Row():
                send = gr.Button("Generate", variant="primary", elem_id="gen-send")
                stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
                regenerate = gr.Button("Regenerate", elem_id="gen-regenerate")
                clear = gr.Button("Clear", elem_id="gen-clear")
            stats = gr.Markdown(elem_id="gen-stats")
        with gr.Column(scale=2):
            preset = gr.Dropdown(list(SAMPLING_PRESETS), value="default", label="Preset (fills the sampler controls)",
                                 elem_id="gen-preset")
            preset_note = gr.Markdown(f"*{PRESET_NOTES['default']}*", elem_id="gen-preset-note")
            gr.Markdown("**The chain, in the order it is applied** (highlighted: on)")
            chain = gr.HTML(chain_html(chain_settings(SamplingConfig())), elem_id="gen-chain",
                            css_template=SAMPLING_CSS)
            controls = {}
            for title, names in GROUPS.items():
                with gr.Accordion(title, open=title in OPEN_GROUPS):
                    for name in names:
                        controls[name] = _control(SPECS[name])
    with gr.Accordion("The answer, token by token (and its branches)", open=True):
        answer_view = gr.HTML(elem_id="gen-answer", css_template=SAMPLING_CSS, js_on_load=ANSWER_CLICK_JS)
    with gr.Accordion("Why this token? The distribution after each stage", open=True):
        with gr.Row():
            branch = gr.Radio([], label="Branch", elem_id="gen-branch", scale=1)
            step = gr.Slider(1, 2, value=1, step=1, precision=0, label="Generated token", interactive=False,
                             elem_id="gen-step", scale=3)
        stage_table = gr.HTML(elem_id="gen-stage-table", css_template=SAMPLING_CSS)
        why = gr.Plot(label="Candidates after each stage", elem_id="gen-why")
        alternatives = gr.Radio([], label="Continue from another token here (a new branch)",
                                elem_id="gen-alternatives")
    return GenerateTab(run=run, checkpoint=checkpoint, refresh=refresh, chat=chat, prompt=prompt, pending=pending,
                       send=send, stop=stop, regenerate=regenerate, clear=clear, stats=stats, preset=preset,
                       preset_note=preset_note, chain=chain, controls=controls, answer_view=answer_view,
                       branch=branch, step=step, stage_table=stage_table, why=why, alternatives=alternatives,
                       answer=gr.State(None, time_to_live=ANSWER_SECONDS))


# -- events -----------------------------------------------------------------------------------------------
def wire(dirs: AppDirs, tab: GenerateTab, demo: gr.Blocks) -> None:
    """Connect the tab's events. `/generate`, `/branch`, `/show_step` take named inputs (the SamplingConfig
    field names for the controls)."""
    controls = {name: tab.controls[name] for name in CONTROL_FIELDS}

    @handle_errors
    def generate_answer(history, prompt, run, checkpoint, request: gr.Request = None, *, seed=None, **values):
        """Continue `prompt` with the model of `run`/`checkpoint`; streams the chat, then the stage view.
        `seed`: empty = random (the one drawn is shown)."""
        session = _session(request)
        flag = new_stop_flag(session)
        try:
            yield from generate(dirs, history, prompt, run, checkpoint, {**values, "seed": seed}, flag)
        finally:
            _release(session, flag)

    @handle_errors
    def branch_answer(answer, branch, step, alternative, request: gr.Request = None, *, seed=None, **values):
        """Fork the shown answer at token `step` of `branch` (0 = main), continuing from token id `alternative`."""
        session = _session(request)
        flag = new_stop_flag(session)
        try:
            yield from fork(answer, branch, step, alternative, {**values, "seed": seed}, flag)
        finally:
            _release(session, flag)

    def stop_generation(request: gr.Request = None) -> None:
        """Stop this session's generation after its current token (the answer so far stays)."""
        request_stop(_session(request))

    generate_outputs = [tab.chat, tab.stats, tab.step, tab.why, tab.answer_view, tab.stage_table,
                        tab.alternatives, tab.branch, tab.answer]
    view_outputs = [tab.why, tab.stage_table, tab.alternatives]
    model_events = {"concurrency_limit": CONCURRENCY, "concurrency_id": "generate"}
    gr.on([tab.send.click, tab.prompt.submit], lambda text: ("", text), tab.prompt, [tab.prompt, tab.pending],
          api_visibility="private").then(
        generate_answer, [tab.chat, tab.pending, tab.run, tab.checkpoint], generate_outputs, inputs_kwargs=controls,
        api_name="generate", **model_events)
    tab.regenerate.click(handle_errors(take_last_prompt), [tab.chat, tab.answer], [tab.chat, tab.pending],
                         api_visibility="private").then(
        generate_answer, [tab.chat, tab.pending, tab.run, tab.checkpoint], generate_outputs, inputs_kwargs=controls,
        api_visibility="private", **model_events)
    tab.stop.click(stop_generation, None, None, api_name="stop_generation", queue=False)
    tab.alternatives.input(
        branch_answer, [tab.answer, tab.branch, tab.step, tab.alternatives],
        [tab.stats, tab.answer_view, tab.branch, tab.step, tab.why, tab.stage_table, tab.alternatives, tab.answer],
        inputs_kwargs=controls, api_name="branch", **model_events)
    tab.step.change(handle_errors(step_view), [tab.answer, tab.branch, tab.step], view_outputs, api_name="show_step",
                    trigger_mode="always_last", show_progress="hidden")
    tab.branch.input(handle_errors(show_branch), [tab.answer, tab.branch, tab.step],
                     [tab.step, *view_outputs, tab.answer_view], api_visibility="private", show_progress="hidden")

    @handle_errors
    def clicked(answer, event: gr.EventData):
        return select_token(answer, event.branch, event.step)

    tab.answer_view.click(clicked, tab.answer, [tab.branch, tab.step, *view_outputs, tab.answer_view],
                          api_visibility="private", show_progress="hidden")
    tab.clear.click(lambda: ([], "", gr.update(value=1, maximum=2, interactive=False), None, "", "",
                             gr.update(choices=[], value=None), gr.update(choices=[], value=None), None),
                    None, generate_outputs, api_visibility="private")
    sampler_controls = [tab.controls[name] for name in SAMPLER_FIELDS]
    tab.preset.change(handle_errors(apply_preset), tab.preset, [tab.preset_note, *sampler_controls],
                      api_name="sampling_preset", show_progress="hidden")
    gr.on([c.change for c in controls.values()], lambda **values: chain_view(values), None, tab.chain,
          inputs_kwargs=controls, api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    @handle_errors
    def checkpoints(run):
        return checkpoints_update(dirs, run)

    tab.run.change(checkpoints, tab.run, tab.checkpoint, api_name="checkpoints")

    def refresh_runs(current):
        return gr.update(choices=run_choices(dirs), value=current)

    gr.on([tab.refresh.click, tab.run.focus], refresh_runs, tab.run, tab.run, api_visibility="private")
    demo.load(refresh_runs, tab.run, tab.run, api_visibility="private", show_progress="hidden")
