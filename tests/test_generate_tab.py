"""The Generate tab: its handlers as plain functions, and its API through `gradio_client` (named inputs,
every sampler, the stage view, branching, Stop, presets and bad input)."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import gradio as gr
import pytest
from gradio_client import Client

from gpt.errors import UserInputError
from gpt.fields import field_specs
from gpt.sampling import SAMPLER_FIELDS, SamplingConfig, preset_values
from gpt.ui import generate_tab
from gpt.ui.common import AppDirs

RUN = "tiny-random"
def layout(figure: dict) -> dict:
    plot = figure["plot"]
    return (json.loads(plot) if isinstance(plot, str) else plot)["layout"]


TOKEN = re.compile(r'<span class="smp-tok[^"]*" data-branch="(\d+)" data-step="(\d+)"')


def client(url: str) -> Client:
    return Client(url, verbose=False)


def ask(prompt: str, seed: int | None = 1, max_new_tokens: int = 12, **controls) -> dict:
    return {"history": [], "prompt": prompt, "run": RUN, "checkpoint": "last", "seed": seed,
            "max_new_tokens": max_new_tokens, **controls}


def tokens_in(answer_html: str) -> list[tuple[int, int]]:
    return [(int(b), int(s)) for b, s in TOKEN.findall(answer_html)]


# -- handlers, without a server -----------------------------------------------------------------------
def test_every_sampling_field_has_one_control_built_from_its_spec(tmp_path) -> None:
    names = [spec.name for spec in field_specs(SamplingConfig)]
    assert sorted(generate_tab.CONTROL_FIELDS) == sorted(set(names) - {"top_candidates"})
    assert len(generate_tab.CONTROL_FIELDS) == len(set(generate_tab.CONTROL_FIELDS))
    with gr.Blocks():
        tab = generate_tab.build(AppDirs(data=tmp_path / "data", runs=tmp_path / "runs"))
    for spec in field_specs(SamplingConfig):
        if spec.name == "top_candidates":
            continue
        control = tab.controls[spec.name]
        assert control.label == spec.label and control.value == spec.default, spec.name
        if isinstance(control, gr.Slider):
            assert control.maximum == (spec.maximum if spec.maximum is not None else spec.ui_maximum)
            assert control.minimum >= spec.minimum


def test_slider_values_become_a_valid_config() -> None:
    config = generate_tab.sampling_config({"top_k": 40.0, "seed": -1, "min_p": 0.1})
    assert config.top_k == 40 and isinstance(config.top_k, int) and config.seed is None
    assert config.top_candidates == generate_tab.TOP_CANDIDATES
    with pytest.raises(UserInputError, match="top_k must be an integer >= 0, got 2.5"):
        generate_tab.sampling_config({"top_k": 2.5})
    assert generate_tab.with_seed(config).seed is not None


def test_only_listed_runs_and_checkpoints_are_accepted(app_dirs) -> None:
    dirs = AppDirs(data=app_dirs[0], runs=app_dirs[1])
    run_dir, name, step = generate_tab.resolve_checkpoint(dirs, RUN, "last")
    assert run_dir.name == RUN and name == "last" and step == 0
    secret = app_dirs[1] / RUN / "model.safetensors"
    with pytest.raises(UserInputError, match="unknown checkpoint 'model.safetensors' for run tiny-random") as error:
        generate_tab.resolve_checkpoint(dirs, RUN, str(secret))
    assert str(app_dirs[1]) not in str(error.value)
    with pytest.raises(UserInputError, match="unknown run"):
        generate_tab.resolve_checkpoint(dirs, "/etc/passwd", "last")


def test_a_long_prompt_shows_shortened_in_the_chat() -> None:
    prompt = "a" * 10 + "b" * 1_000_000 + "c" * 10
    shown = generate_tab.chat_prompt(prompt)
    assert len(shown) < generate_tab.CHAT_PROMPT_CHARS + 100 and shown.startswith("a" * 10)
    assert shown.endswith("c" * 10) and "characters not shown" in shown
    assert generate_tab.chat_prompt("ROMEO:") == "ROMEO:"
    with pytest.raises(UserInputError, match="the app takes up to 2,000,000"):
        generate_tab.check_prompt("x" * (generate_tab.MAX_PROMPT_CHARS + 1))


def test_stop_flags_belong_to_one_session() -> None:
    flag = generate_tab.new_stop_flag("alice")
    assert not generate_tab.request_stop("bob")
    assert generate_tab.request_stop("alice") and flag.is_set()
    assert not generate_tab.request_stop("alice")  # already stopping


def test_generate_stops_at_the_flag_and_describes_what_it_made(app_dirs) -> None:
    dirs = AppDirs(data=app_dirs[0], runs=app_dirs[1])
    flag = threading.Event()
    outputs = []
    for output in generate_tab.generate(dirs, [], "Once", RUN, "last", {"max_new_tokens": 500, "seed": 4}, flag):
        outputs.append(output)
        flag.set()  # Stop pressed while the answer streams
    history, stats, slider, figure, answer_view, *_, answer = outputs[-1]
    made = len(answer.branches[0].steps)
    assert made < 500 and "stopped" in stats and f"**{made} tokens" in stats
    assert slider["maximum"] == max(2, made) and len(tokens_in(answer_view)) == made


def test_presets_fill_every_sampler_control() -> None:
    note, *values = generate_tab.apply_preset("creative")
    assert dict(zip(SAMPLER_FIELDS, values, strict=True)) == preset_values("creative") and "min-p" in note


def test_the_chain_view_shows_the_order_and_what_is_wrong() -> None:
    html = generate_tab.chain_view({"temperature": 0.7, "top_k": 40})
    assert html.index("temperature: ÷ 0.7") < html.index("top-k: k = 40") < html.index("typical-p: off")
    assert "⚠ top_p must be in (0, 1]" in generate_tab.chain_view({"top_p": 0.0})


# -- the API ----------------------------------------------------------------------------------------
def test_generate_takes_every_sampler_by_name_and_returns_the_stage_view(app_url) -> None:
    c = client(app_url)
    history, stats, slider, why, answer_view, table, alternatives, branches = c.predict(
        **ask("Hello", seed=5, temperature=1.1, top_n_sigma=3.0, top_k=50, top_p=0.95, min_p=0.01, typical_p=0.99,
              repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.1, penalty_window=16,
              dry_multiplier=0.8, precision="int8"),
        api_name="/generate")
    made = int(re.search(r"\*\*(\d+) tokens", stats).group(1))
    assert "int8" in stats and "seed 5" in stats and slider["maximum"] == max(2, made)
    assert len(tokens_in(answer_view)) == made
    titles = [a["text"] for a in layout(why)["annotations"] if "left" in a.get("text", "")]
    stages = [re.match(r"<b>(.*?)</b>", title).group(1) for title in titles]
    assert stages == ["model", "repetition penalty", "frequency / presence", "DRY", "temperature", "top-nσ", "top-k",
                      "top-p", "min-p", "typical-p"]
    assert all(name in table for name in stages) and "candidates left" in table
    assert alternatives["choices"] and branches["choices"] == [["main", 0]]


def test_branching_from_an_alternative_keeps_both_branches(app_url) -> None:
    c = client(app_url)
    c.predict(**ask("The king", seed=2, max_new_tokens=10, temperature=1.0), api_name="/generate")
    why, table, alternatives = c.predict(branch=0, step=4, api_name="/show_step")
    assert "Token 4 of 10" in layout(why)["title"]["text"]
    picked = alternatives["choices"][0][1]
    job = c.submit(branch=0, step=4, alternative=picked, seed=2, max_new_tokens=10, temperature=1.0,
                   api_name="/branch")
    job.result()
    stats, answer_view, branches, slider, why, *_ = job.outputs()[-1]
    assert [label for label, _ in branches["choices"]][1].startswith("branch 2: token 4")
    positions = tokens_in(answer_view)
    assert positions.count((0, 10)) == 1 and (1, 10) in positions  # two columns, 10 tokens each
    main = re.findall(r'data-branch="0" data-step="\d+" title="token \d+: ([^\n]*)', answer_view)
    forked = re.findall(r'data-branch="1" data-step="\d+" title="token \d+: ([^\n]*)', answer_view)
    assert main[:3] == forked[:3] and main[3] != forked[3] and "(picked by you)" in forked[3]
    assert "(picked by you)" in layout(why)["title"]["text"] and slider["value"] == 4
    with pytest.raises(Exception, match="not in the list of choices"):
        c.predict(branch=0, step=4, alternative=10**6, api_name="/branch")


def test_stop_ends_the_answer_and_every_view_describes_it(app_url) -> None:
    c = client(app_url)
    job = c.submit(**ask("Stop me", seed=3, max_new_tokens=1000), api_name="/generate")
    for count, _ in enumerate(job):
        if count >= 2:
            c.predict(api_name="/stop_generation")
            break
    job.result()
    history, stats, slider, why, answer_view, *_ = job.outputs()[-1]
    made = int(re.search(r"\*\*(\d+) tokens", stats).group(1))
    assert "stopped" in stats and made < 1000
    assert slider["maximum"] == max(2, made) and len(tokens_in(answer_view)) == made
    assert f"of {made}" in layout(why)["title"]["text"]


def test_presets_through_the_api(app_url) -> None:
    note, *values = client(app_url).predict("greedy", api_name="/sampling_preset")
    assert dict(zip(SAMPLER_FIELDS, values, strict=True))["temperature"] == 0.0 and "most likely" in note


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ({"temperature": -0.5}, "less than minimum value 0"),
        ({"top_k": 100_000}, "greater than maximum value 200"),
        ({"max_new_tokens": 5_000_000}, "greater than maximum value 1000"),
        ({"checkpoint": "/etc/shadow.safetensors"}, "unknown checkpoint 'shadow.safetensors' for run tiny-random"),
        ({"precision": "fp4"}, "fp4"),
    ],
)
def test_bad_input_through_the_api_is_refused_clearly(app_url, controls: dict, message: str) -> None:
    c = client(app_url)
    with pytest.raises(Exception, match=message):
        c.predict(**{**ask("x"), **controls}, api_name="/generate")
    assert "tokens/s" in c.predict(**ask("still serving", max_new_tokens=3), api_name="/generate")[1]


def test_a_megabyte_prompt_streams_small_updates_and_others_are_served(app_url) -> None:
    prompt = "To be, or not to be: that is the question. " * 24_000  # 1 MB
    c = client(app_url)

    def long_job():
        job = c.submit(**ask(prompt, max_new_tokens=20), api_name="/generate")
        shown = [len(history[0]["content"][0]["text"]) for history, *_ in job if history]
        return shown, job.outputs()[-1][1]

    with ThreadPoolExecutor(2) as pool:
        long_answer = pool.submit(long_job)
        other = pool.submit(lambda: client(app_url).predict(**ask("Meanwhile", max_new_tokens=5), api_name="/generate"))
        shown, stats = long_answer.result()
        assert "tokens/s" in other.result()[1]
    assert shown and max(shown) < generate_tab.CHAT_PROMPT_CHARS + 100  # the chat never carries the whole prompt
    assert "the model reads its last 64" in stats
