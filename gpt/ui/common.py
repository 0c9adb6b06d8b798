"""What the tabs share: the app's folders, safe names for user-given files and runs, the error decorator.

Every event handler is wrapped in `@handle_errors`: a `UserInputError` becomes a page message (and one
line in the server log), anything else is logged with its traceback and shown as an internal error, so a
bug is never mistaken for bad input and the server keeps serving.

The UI never turns a user-supplied name into a path without `safe_name`: only the last path component
is kept and every unusual character becomes `_`, so `../../etc/passwd` names `passwd` inside the app's
own folders and `my rows (1).csv` becomes `my_rows_1_.csv`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from gpt.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / "data"
BUNDLED_CORPUS = REPO_ROOT / "assets" / "data" / "tinyshakespeare.txt"
BUNDLED_DATASET_NAME = "tinyshakespeare"

LOG = logging.getLogger("gpt.ui")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class AppDirs:
    """Where the app keeps prepared datasets (`data`) and training runs (`runs`)."""

    data: Path
    runs: Path

    def __post_init__(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)


def safe_name(name: str, default: str = "untitled", max_length: int = 80) -> str:
    """A file or folder name made only of letters, digits, `.`, `_` and `-`, never `.`/`..` or hidden."""
    cleaned = _UNSAFE.sub("_", Path(str(name).replace("\\", "/")).name).strip("._-")
    return cleaned[:max_length] or default


def error_text(error: BaseException) -> str:
    """The message a person sees: a `UserInputError` as written, anything else as an internal error."""
    if isinstance(error, UserInputError):
        return str(error)
    return f"internal error ({type(error).__name__}); the server log has the details"


def page_error(error: BaseException, where: str) -> gr.Error:
    """The `gr.Error` for `error` raised in handler `where`, logged once: a user error as one line, anything
    else with its traceback."""
    if isinstance(error, UserInputError):
        LOG.info("%s: %s", where, error)
    else:
        LOG.error("%s failed", where, exc_info=error)
    return gr.Error(error_text(error), print_exception=False)


def handle_errors(handler: Callable) -> Callable:
    """Wrap an event handler (function or generator) so errors reach the page as `page_error` does."""
    where = handler.__qualname__
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def generator(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as error:
                raise page_error(error, where) from None
        return generator

    @functools.wraps(handler)
    def function(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise page_error(error, where) from None
    return function
