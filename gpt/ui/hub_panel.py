"""Where a run lives beyond this server: the "Push to Hub" panel of the Train tab's runs section, and the W&B
line under a run's status.

On a Hugging Face Space (env `SPACE_ID`), the runs folder is the Space's local disk, which a restart wipes:
the panel says so and opens itself. The token field is a password field used for the one push it is typed
for: the handler passes it to `gpt.hub.push` and puts it in no return value, log line or message (`gpt.hub`
keeps it out of its errors); blank means the server's HF_TOKEN or `hf auth login` — except on a Space, where
a visitor must paste their own token, so the Space owner's secret can never push for anyone who opens the page.

`build(dirs)` lays out the panel (inside the Train tab's layout), `wire(dirs, panel)` connects it;
`push_run` and `wandb_markdown` are plain functions, testable without a browser.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from gpt import hub
from gpt.run import Run
from gpt.ui.common import AppDirs, handle_errors
from gpt.ui.runs import default_run_value, known_run, run_choices

ON_SPACE = bool(os.environ.get("SPACE_ID"))
SPACE_NOTE = ("⚠️ **This app runs on a Hugging Face Space: runs trained here are kept on the Space's local disk "
              "and vanish when the Space restarts or sleeps.** Push the runs you want to keep to the Hub below "
              "(or download them as a zip).")
# `gpt.tracking.WandbLogger.where()` offline: "FOLDER (upload it with: wandb sync FOLDER)"
_OFFLINE_WHERE = re.compile(r"^(?P<folder>.+) \(upload it with: (?P<command>wandb sync .+)\)$")


def wandb_markdown(run: Run) -> str:
    """The W&B line of a run trained with `--wandb online|offline` (empty for `off`): the run page link, or
    the offline folder and the `wandb sync` command that uploads it."""
    train = run.config.train
    if train is None or train.wandb == "off":
        return ""
    link = run.wandb_link()
    if link is None:
        return f"**W&B ({train.wandb}):** the run's link appears here when training starts"
    label, text = link
    offline = _OFFLINE_WHERE.match(text)
    if offline:
        return f"**{label}:** `{offline['folder']}` — upload it with `{offline['command']}`"
    if text.startswith("https://"):
        return f"**{label}:** [{text}]({text})"
    return f"**{label}:** {text}"


def token_hint() -> str:
    if ON_SPACE:
        return "your own token with write access (huggingface.co/settings/tokens); used for this push only"
    if os.environ.get("HF_TOKEN"):
        return "blank: the server's HF_TOKEN is used"
    return "a token with write access, from huggingface.co/settings/tokens; used for this push only, never stored"


def push_run(dirs: AppDirs, run_name: str | None, repo: str, private: bool, token: str | None,
             progress: Callable[[float, str], None] | None = None) -> str:
    """Push a listed run to the Hub; returns the page's message (never the token)."""
    result = hub.push(Run.open(known_run(dirs, run_name)), repo, private=bool(private), token=token or None,
                      server_token=not ON_SPACE, progress=progress)
    staged = result.staged
    export = (f"`transformers` loads it: `pipeline(\"text-generation\", model=\"{result.repo_id}\")`" if staged.exported
              else f"no `transformers` export: {staged.export_refusal}")
    return (f"✅ Pushed **{run_name}** ({staged.checkpoint} checkpoint, step {staged.step}, {result.files} files in "
            f"one commit) to [{result.repo_id}]({result.url}). {export}. Restore it anywhere with "
            f"`python -m gpt pull {result.repo_id}`.")


@dataclass
class HubPanel:
    run: gr.Dropdown
    repo: gr.Textbox
    private: gr.Checkbox
    token: gr.Textbox
    push: gr.Button
    result: gr.Markdown


def build(dirs: AppDirs) -> HubPanel:
    """The panel's components (call inside the Train tab's layout)."""
    if ON_SPACE:
        gr.Markdown(SPACE_NOTE, elem_id="hub-space-note")
    with gr.Accordion("Push to Hub: share a run as a Hugging Face model repository", open=ON_SPACE,
                      elem_id="hub-panel"):
        gr.Markdown("Uploads, in one commit, the run as a GPT-2 model that `transformers` loads by name (when its "
                    "architecture is GPT-2's), the run folder itself (weights, snapshots, metrics) so this app can "
                    "restore it, and a model card with its loss curve.")
        with gr.Row():
            # a custom value is checked by `known_run`: API clients may name a run trained after the page loaded
            run = gr.Dropdown(run_choices(dirs), value=default_run_value(dirs), label="Run to push",
                              allow_custom_value=True, elem_id="hub-run")
            repo = gr.Textbox(label="Repository (OWNER/NAME, or NAME for your own account)", max_lines=1,
                              placeholder="your-name/my-gpt", elem_id="hub-repo")
            private = gr.Checkbox(False, label="Private repository", elem_id="hub-private")
        token = gr.Textbox(label="Hugging Face token", type="password", max_lines=1, placeholder=token_hint(),
                           elem_id="hub-token")
        push = gr.Button("Push to Hub", variant="primary", elem_id="hub-push")
        result = gr.Markdown(elem_id="hub-result")
    return HubPanel(run=run, repo=repo, private=private, token=token, push=push, result=result)


def wire(dirs: AppDirs, panel: HubPanel) -> None:
    """Connect the panel's events (`/push_to_hub` in the API)."""

    @handle_errors
    def push_to_hub(run_name: str, repo: str, private: bool, token: str, progress=gr.Progress()) -> str:  # noqa: B008
        """Push a run to the Hugging Face Hub; returns the message shown under the button."""
        return push_run(dirs, run_name, repo, private, token,
                        lambda fraction, message: progress(fraction, desc=message))

    panel.push.click(push_to_hub, [panel.run, panel.repo, panel.private, panel.token], panel.result,
                     api_name="push_to_hub", concurrency_limit=1, concurrency_id="hub-push")
    panel.run.focus(lambda current: gr.update(choices=run_choices(dirs), value=current), panel.run, panel.run,
                    api_visibility="private")
