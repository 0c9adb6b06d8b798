"""Hugging Face ZeroGPU support, kept small and honest.

On a ZeroGPU Space a GPU exists only inside functions decorated with `@spaces.GPU` (each call gets one
for a limited time). `gpu` applies that decorator when the `spaces` package is importable; outside
ZeroGPU the decorator does nothing, so the same code runs on CPU or on an ordinary GPU unchanged.
What runs on the GPU there: text generation (Generate tab, one call per answer) and training, which
on ZeroGPU advances in bursts of one GPU call each (`gpt.ui.jobs.BurstJob`) instead of running as a
`python -m gpt train` child process (a child process gets no ZeroGPU GPU).

This module is imported before torch initialises CUDA, as `spaces` requires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

try:
    import spaces
except ImportError:  # the package is only present on Spaces (and in the dev requirements)
    spaces = None

# True on a ZeroGPU Space (the `spaces` package reads SPACES_ZERO_GPU, which Spaces sets).
ON_ZEROGPU = spaces is not None and spaces.config.Config.zero_gpu

F = TypeVar("F", bound=Callable)


def gpu(function: F, duration: int | None = None) -> F:
    """`spaces.GPU(function, duration=...)` when `spaces` is installed, else `function` itself."""
    if spaces is None:
        return function
    return spaces.GPU(function, duration=duration) if duration else spaces.GPU(function)
