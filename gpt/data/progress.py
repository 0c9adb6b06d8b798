"""Progress reporting shared by the data stages: `progress(fraction, message)` callbacks, one per whole job.

A stage reports 0..1 of its own work; `scaled` maps that into its part of the whole job, so the command
line's bar and the app's progress bar move once from 0 to 1 across loading, cleaning and tokenizing.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]


def say(progress: Progress | None, fraction: float, message: str) -> None:
    """Report `fraction` (clipped to [0, 1]) with `message`, if anyone listens."""
    if progress is not None:
        progress(min(1.0, max(0.0, fraction)), message)


def scaled(progress: Progress | None, low: float, high: float) -> Progress | None:
    """A progress callback for one stage that reports into the [low, high] part of the whole."""
    if progress is None:
        return None
    return lambda fraction, message: say(progress, low + (high - low) * fraction, message)
