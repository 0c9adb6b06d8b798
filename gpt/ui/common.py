"""What the tabs share: the app's folders, safe names for user-given files and runs, error text.

The UI never turns a user-supplied name into a path without `safe_name`: only the last path component
is kept and every unusual character becomes `_`, so `../../etc/passwd` names `passwd` inside the app's
own folders and `my rows (1).csv` becomes `my_rows_1_.csv`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gpt.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / "data"
BUNDLED_CORPUS = REPO_ROOT / "assets" / "data" / "tinyshakespeare.txt"
BUNDLED_DATASET_NAME = "tinyshakespeare"

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
    """The message a person sees: a `UserInputError` as written, anything else with its type."""
    if isinstance(error, UserInputError):
        return str(error)
    return f"{type(error).__name__}: {error}"
