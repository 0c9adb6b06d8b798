"""The app's prepared datasets: folders under its data folder that hold a meta.json.

Tabs list them with `prepared_datasets` and turn a name from a dropdown or an API call into a folder only
through `dataset_dir`, which accepts nothing but a listed name, so no request can point the app at another
folder of the server. The bundled Tiny Shakespeare is prepared on first use (`ensure_bundled_dataset`).
"""

from __future__ import annotations

from pathlib import Path

from gpt.data.folder import META_FILE
from gpt.errors import UserInputError
from gpt.ui.common import BUNDLED_CORPUS, BUNDLED_DATASET_NAME, AppDirs


def prepared_datasets(dirs: AppDirs) -> list[str]:
    """Names of the prepared datasets in the app's data folder, sorted."""
    return sorted(path.parent.name for path in dirs.data.glob(f"*/{META_FILE}"))


def dataset_dir(dirs: AppDirs, name: str | None) -> Path:
    """The folder of the prepared dataset called `name`; a UserInputError for any name not in the list."""
    names = prepared_datasets(dirs)
    if name not in names:
        if not name:
            raise UserInputError("choose a prepared dataset (prepare one in the Data tab)")
        shown = repr(name) if len(repr(name)) <= 80 else f"{repr(name)[:80]}… ({len(repr(name)):,} characters)"
        raise UserInputError(f"unknown dataset {shown}; choose one of: {', '.join(names) or 'none yet'}")
    return dirs.data / name


def ensure_bundled_dataset(dirs: AppDirs) -> Path:
    """The bundled Tiny Shakespeare, prepared with the default cleaning on first use."""
    from gpt.data.prepare import prepare_dataset  # the cleaning stage's imports wait until they are needed

    out = dirs.data / BUNDLED_DATASET_NAME
    if not (out / META_FILE).is_file():
        prepare_dataset([BUNDLED_CORPUS], out, val_fraction=0.1)
    return out
