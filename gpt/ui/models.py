"""Loaded checkpoints shared by all sessions: a small cache keyed by run, checkpoint, file time and device.

Loading happens once per checkpoint file version; a checkpoint rewritten by a training job (newer
modification time) is loaded again on next use. Models are in eval mode and only read during
generation, so concurrent users can share one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from gpt.errors import UserInputError
from gpt.run import LoadedRun, Run
from gpt.ui.runs import quote

MAX_LOADED = 3
_cache: OrderedDict[tuple, LoadedRun] = OrderedDict()
_lock = threading.Lock()


def checkpoint_choices(run_dir: str | Path) -> list[str]:
    """The checkpoint names of a run ("last", "best", "snapshot:STEP", ...)."""
    return [info.name for info in Run.open(run_dir).checkpoints()]


def get_run(run_dir: str | Path, checkpoint: str = "last", device: str = "cpu") -> LoadedRun:
    """The loaded run, from the cache when its checkpoint file has not changed since it was loaded.
    Only the run's own listed checkpoints are accepted (never a path)."""
    run = Run.open(run_dir)
    infos = {info.name: info for info in run.checkpoints()}
    if not isinstance(checkpoint, str) or checkpoint not in infos:
        raise UserInputError(f"{run.name} has no checkpoint {quote(checkpoint)}; choose one of: "
                             f"{', '.join(infos) or 'none yet'}")
    path = infos[checkpoint].path
    stamp = path.stat().st_mtime_ns if path.exists() else None
    key = (str(run.dir.resolve()), checkpoint, stamp, device)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    loaded = run.load(checkpoint, device=device)
    with _lock:
        _cache[key] = loaded
        while len(_cache) > MAX_LOADED:
            _cache.popitem(last=False)
    return loaded
