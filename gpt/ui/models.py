"""Loaded checkpoints shared by all sessions: a small cache keyed by run, checkpoint, file time and device.

Loading happens once per checkpoint file version; a checkpoint rewritten by a training job (newer
modification time) is loaded again on next use. Models are in eval mode and only read during
generation, so concurrent users can share one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from gpt.checkpoint import LoadedRun, list_checkpoints, load_run

MAX_LOADED = 3
_cache: OrderedDict[tuple, LoadedRun] = OrderedDict()
_lock = threading.Lock()


def checkpoint_choices(run_dir: str | Path) -> list[str]:
    """The names `load_run` accepts for this run's checkpoints ("last", "best", "snapshot:STEP", ...)."""
    return [info.name for info in list_checkpoints(Path(run_dir))]


def get_run(run_dir: str | Path, checkpoint: str = "last", device: str = "cpu") -> LoadedRun:
    """The loaded run, from the cache when its checkpoint file has not changed since it was loaded."""
    run_dir = Path(run_dir)
    infos = {info.name: info for info in list_checkpoints(run_dir)}
    path = infos[checkpoint].path if checkpoint in infos else None
    stamp = path.stat().st_mtime_ns if path is not None and path.exists() else None
    key = (str(run_dir.resolve()), checkpoint, stamp, device)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    loaded = load_run(run_dir, checkpoint=checkpoint, device=device)
    with _lock:
        _cache[key] = loaded
        while len(_cache) > MAX_LOADED:
            _cache.popitem(last=False)
    return loaded
