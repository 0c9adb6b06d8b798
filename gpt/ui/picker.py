"""The run + checkpoint picker the Inspect and Generate tabs share.

Values are run names and checkpoint names; `load_picked` resolves them only through the app's own list
of runs (`gpt.ui.runs.known_run`) and the run's own checkpoints (`gpt.ui.models.get_run`), so a client
that sends a server path is refused (its message quotes only the value sent) and a run trained after the
page was built is served: the dropdowns take custom values, the handlers' lists are read at each call.
The choices are refreshed whenever a dropdown gets focus and when the page loads, so runs trained after
start-up appear without pressing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from gpt.run import LoadedRun
from gpt.ui.common import AppDirs, handle_errors
from gpt.ui.models import checkpoint_choices, get_run
from gpt.ui.runs import default_run_value, known_run, run_choices


@dataclass
class Picker:
    run: gr.Dropdown
    checkpoint: gr.Dropdown


def build_picker(dirs: AppDirs, prefix: str, checkpoint_label: str = "Checkpoint") -> Picker:
    """Two dropdowns side by side (call inside a layout block); `prefix` names their elem_ids."""
    first = default_run_value(dirs)
    # Custom values pass Gradio's check against the choices made at start-up (a run trained since, through
    # the API); `load_picked` is the check: it accepts only what the app lists at the time of the call.
    run = gr.Dropdown(run_choices(dirs), value=first, label="Run", elem_id=f"{prefix}-run", allow_custom_value=True)
    checkpoint = gr.Dropdown(checkpoint_choices(known_run(dirs, first)) if first else [],
                             value="last" if first else None, label=checkpoint_label, elem_id=f"{prefix}-checkpoint",
                             allow_custom_value=True)
    return Picker(run=run, checkpoint=checkpoint)


def load_picked(dirs: AppDirs, run_name: str | None, checkpoint: str | None, device: str = "cpu") -> LoadedRun:
    """The model of the picked run and checkpoint (through the app's lists only)."""
    return get_run(known_run(dirs, run_name), checkpoint or "last", device)


def wire_picker(dirs: AppDirs, picker: Picker, demo: gr.Blocks, api_prefix: str) -> None:
    """Refresh the run list on focus and page load; a new run fills its checkpoints."""

    @handle_errors
    def refresh(current: str | None):
        choices = run_choices(dirs)
        names = [name for _, name in choices]
        return gr.update(choices=choices, value=current if current in names else default_run_value(dirs))

    @handle_errors
    def checkpoints(run_name: str | None, current: str | None):
        if not run_name:
            return gr.update(choices=[], value=None)
        names = checkpoint_choices(known_run(dirs, run_name))
        return gr.update(choices=names, value=current if current in names else ("last" if "last" in names else None))

    # Private events are named too: Gradio would name them after the function ("checkpoints"), taking
    # that name from another tab's public endpoint.
    picker.run.focus(refresh, picker.run, picker.run, api_name=f"{api_prefix}_refresh_runs",
                     api_visibility="private", show_progress="hidden")
    demo.load(refresh, picker.run, picker.run, api_name=f"{api_prefix}_load_runs", api_visibility="private",
              show_progress="hidden")
    picker.run.change(checkpoints, [picker.run, picker.checkpoint], picker.checkpoint,
                      api_name=f"{api_prefix}_checkpoints", show_progress="hidden")
    picker.checkpoint.focus(checkpoints, [picker.run, picker.checkpoint], picker.checkpoint,
                            api_name=f"{api_prefix}_refresh_checkpoints", api_visibility="private",
                            show_progress="hidden")
