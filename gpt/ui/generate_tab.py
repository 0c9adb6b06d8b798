"""The Generate tab: a chat-like box over any run's checkpoint, streaming token by token.

Each message is a prompt the model continues (these are base language models, not chat models).
The sliders map one to one onto `gpt.sampling.SamplingConfig`; generation is
`gpt.sampling.stream_generate`. For every produced token the top candidates before and after the
controls are kept, so "Why this token?" can show what the model considered at any step.
"""

from __future__ import annotations

import time

import gradio as gr

from gpt.sampling import SamplingConfig, prompt_note, stream_generate
from gpt.train import resolve_device
from gpt.ui.common import AppDirs, error_text
from gpt.ui.models import checkpoint_choices, get_run
from gpt.ui.plots import candidates_figure
from gpt.ui.runs import default_run_value, known_run, run_choices
from gpt.ui.zerogpu import gpu

TOP_CANDIDATES = 10
CONCURRENCY = 4
STREAM_INTERVAL = 0.05  # seconds between streamed updates of the answer


def _candidates(tokenizer, pairs) -> list[tuple[str, float]]:
    return [(f"{tokenizer.token_display(token_id)} ({token_id})", float(prob)) for token_id, prob in pairs or []]


def make_generate(dirs: AppDirs):
    """The streaming generate function for this app's runs (run inside `@spaces.GPU` on ZeroGPU)."""

    @gpu
    def generate(history, prompt, run_dir, checkpoint, temperature, top_k, top_p, repetition_penalty,
                 penalty_window, max_new_tokens, seed):
        """Append the prompt and stream the model's continuation into `history`.

        Yields (history, stats markdown, per-token candidates, step slider update, "why" figure)."""
        history = list(history or [])
        if not prompt or not str(prompt).strip():
            raise gr.Error("Type a prompt first: the model continues the text you give it.")
        try:
            config = SamplingConfig(
                temperature=float(temperature),
                top_k=int(top_k),
                top_p=float(top_p),
                repetition_penalty=float(repetition_penalty),
                penalty_window=int(penalty_window),
                max_new_tokens=int(max_new_tokens),
                seed=None if seed is None or seed == "" or int(seed) < 0 else int(seed),
                top_candidates=TOP_CANDIDATES,
            )
            loaded = get_run(known_run(dirs, run_dir), checkpoint or "last", device=str(resolve_device("auto")))
        except Exception as error:  # a bad setting or an unreadable run: say so in the page
            raise gr.Error(error_text(error)) from error
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        yield history, "*generating…*", [], gr.skip(), gr.skip()
        steps: list[dict] = []
        text = ""
        started = last_yield = time.perf_counter()
        for step in stream_generate(loaded.model, loaded.tokenizer, prompt, config):
            text += step.text
            steps.append({
                "token": loaded.tokenizer.token_display(step.token_id),
                "before": _candidates(loaded.tokenizer, step.candidates_before),
                "after": _candidates(loaded.tokenizer, step.candidates_after),
                "chosen": f"{loaded.tokenizer.token_display(step.token_id)} ({step.token_id})",
            })
            history[-1] = {"role": "assistant", "content": text}
            if time.perf_counter() - last_yield >= STREAM_INTERVAL:  # each update re-sends the answer: pace them
                last_yield = time.perf_counter()
                yield history, gr.skip(), steps, gr.skip(), gr.skip()
        seconds = max(time.perf_counter() - started, 1e-9)
        stats = (f"**{len(steps)} tokens in {seconds:.2f} s · {len(steps) / seconds:.1f} tokens/s** "
                 f"· {loaded.run_dir.name} ({checkpoint}, step {loaded.step})")
        note = prompt_note(loaded.tokenizer, prompt)
        if note:
            stats += f"\n\n{note}"
        slider = gr.update(maximum=max(2, len(steps)), value=1, interactive=bool(steps))
        yield history, stats, steps, slider, why_figure(steps, 1)

    return generate


def why_figure(steps, index):
    """The bar chart for generated token number `index` (1-based)."""
    if not steps:
        return None
    index = min(max(int(index or 1), 1), len(steps))
    step = steps[index - 1]
    return candidates_figure(step["before"], step["after"], step["chosen"],
                             title=f"Token {index} of {len(steps)}: {step['token']}")


def build_generate_tab(dirs: AppDirs) -> None:
    """The Generate tab's components and events (called inside `gr.Tab("Generate")`)."""
    default_run = default_run_value(dirs)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                run = gr.Dropdown(run_choices(dirs), value=default_run, label="Run", allow_custom_value=True,
                                  elem_id="gen-run", scale=3)
                checkpoint = gr.Dropdown(checkpoint_choices(default_run) if default_run else [],
                                         value="last" if default_run else None,
                                         label="Checkpoint", allow_custom_value=True, elem_id="gen-checkpoint", scale=1)
                refresh = gr.Button("↻ Runs", elem_id="gen-refresh", scale=0, min_width=80)
            chat = gr.Chatbot(label="The model continues your text", elem_id="gen-chat", height=420,
                              feedback_options=None, buttons=["copy"])
            prompt = gr.Textbox(label="Prompt", placeholder="ROMEO:", lines=2, elem_id="gen-prompt")
            with gr.Row():
                send = gr.Button("Generate", variant="primary", elem_id="gen-send")
                stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
                regenerate = gr.Button("Regenerate", elem_id="gen-regenerate")
                clear = gr.Button("Clear", elem_id="gen-clear")
            stats = gr.Markdown(elem_id="gen-stats")
        with gr.Column(scale=2):
            temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="gen-temperature")
            top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)", elem_id="gen-top-k")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (1 = off)", elem_id="gen-top-p")
            repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty (1 = off)",
                                           elem_id="gen-rep-penalty")
            penalty_window = gr.Slider(0, 512, value=0, step=1, label="Penalty window (tokens, 0 = whole context)",
                                       elem_id="gen-penalty-window")
            max_new_tokens = gr.Slider(1, 1000, value=200, step=1, label="Max new tokens",
                                       elem_id="gen-max-new-tokens")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="gen-seed")
    with gr.Accordion("Why this token?", open=True):
        gr.Markdown("The top candidates for one generated token: the model's own probabilities "
                    "(temperature 1) and the distribution after temperature, top-k, top-p and the "
                    "repetition penalty, from which the token was drawn.")
        step = gr.Slider(1, 2, value=1, step=1, label="Generated token", interactive=False, elem_id="gen-step")
        why = gr.Plot(label="Top candidates", elem_id="gen-why")

    generate = make_generate(dirs)
    steps = gr.State([])
    pending = gr.Textbox(visible=False)  # the prompt being answered (a component, so the API takes it)
    controls = [run, checkpoint, temperature, top_k, top_p, repetition_penalty, penalty_window,
                max_new_tokens, seed]
    outputs = [chat, stats, steps, step, why]

    def checkpoints_update(run_dir):
        try:
            names = checkpoint_choices(known_run(dirs, run_dir)) if run_dir else []
        except Exception as error:
            raise gr.Error(error_text(error)) from error
        return gr.update(choices=names, value="last" if "last" in names else (names[0] if names else None))

    def take_prompt(text):
        return "", text

    def take_last_prompt(history):
        history = list(history or [])
        while history and history[-1]["role"] == "assistant":
            history.pop()
        if not history:
            raise gr.Error("Nothing to regenerate yet.")
        content = history[-1]["content"]  # Gradio 6 hands message content back as a list of parts
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return history[:-1], content

    send_event = gr.on(
        [send.click, prompt.submit], take_prompt, [prompt], [prompt, pending], api_visibility="private"
    ).then(generate, [chat, pending, *controls], outputs, api_name="generate",
           concurrency_limit=CONCURRENCY, concurrency_id="generate")
    regen_event = regenerate.click(take_last_prompt, [chat], [chat, pending], api_visibility="private").then(
        generate, [chat, pending, *controls], outputs, api_visibility="private",
        concurrency_limit=CONCURRENCY, concurrency_id="generate")
    stop.click(None, None, None, cancels=[send_event, regen_event])
    clear.click(lambda: ([], "", [], gr.update(value=1, maximum=2, interactive=False), None), None,
                [chat, stats, steps, step, why], api_visibility="private")
    step.release(why_figure, [steps, step], why, api_visibility="private")
    run.change(checkpoints_update, run, checkpoint, api_name="checkpoints")
    gr.on([refresh.click, run.focus], lambda current: gr.update(choices=run_choices(dirs), value=current), run, run,
          api_visibility="private")
