"""The read side of a prepared data folder: meta.json, the token files, and batches for training/evaluation.

    data_dir/train.bin, val.bin   uint16 GPT-2 ids, <|endoftext|> between documents
    data_dir/meta.json            what was prepared from what (source, encoding, cleaning, statistics)

`load_split` memory-maps a split, `get_batch` draws random windows of `context_length + 1` tokens for
training, `iter_eval_batches` covers a split with non-overlapping windows for evaluation. Token files
always hold GPT-2 ids; a run with a compact vocabulary maps them to model ids with `token_id_map(tokenizer)`
(passed as `id_map`), and one cut to its most frequent tokens reads them spelled (`model_tokens`). This
module needs only numpy (torch where batches are made): the trainer and run loading import it without
pulling in pandas or the cleaning libraries.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpt.errors import UserInputError
from gpt.tokenizer import GPT2_EOT_ID, GPT2_VOCAB_SIZE, Tokenizer

if TYPE_CHECKING:  # torch is imported where batches are made, so `prepare` starts quickly
    import torch

FORMAT_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")
TOKEN_DTYPE = np.uint16


def split_file(data_dir: str | os.PathLike, split: str) -> Path:
    """`data_dir/train.bin` or `data_dir/val.bin`."""
    return Path(data_dir) / f"{split}.bin"


def read_meta(data_dir: str | os.PathLike) -> dict:
    """The meta.json of a prepared data folder, as a dict."""
    path = Path(data_dir) / META_FILE
    if not path.exists():
        raise UserInputError(f"{data_dir} holds no prepared dataset (no meta.json); "
                             f"run: python -m gpt prepare INPUT --out {data_dir}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path} is damaged: {error}") from None
    if not isinstance(meta, dict):
        raise UserInputError(f"{path} is damaged: it holds a JSON {type(meta).__name__}, not an object; "
                             "prepare the dataset again")
    return meta


def load_split(data_dir: str | os.PathLike, split: str) -> np.memmap:
    """The token ids of "train" or "val", memory-mapped (uint16 GPT-2 ids)."""
    if split not in SPLITS:
        raise UserInputError(f"split must be 'train' or 'val', not {split!r}")
    path = split_file(data_dir, split)
    if not path.exists():
        raise UserInputError(f"{path} does not exist; run: python -m gpt prepare INPUT --out {data_dir}")
    if path.stat().st_size < 4 or path.stat().st_size % 2:
        raise UserInputError(f"{path} is empty or damaged; prepare the dataset again")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def split_token_counts(data_dir: str | os.PathLike, split: str = "train") -> np.ndarray:
    """Occurrences of every GPT-2 id (length 50,257) in a split's token file; cached per file version."""
    path = split_file(data_dir, split)
    modified_ns = path.stat().st_mtime_ns if path.exists() else 0
    return _split_token_counts(str(Path(data_dir)), split, modified_ns)


@functools.lru_cache(maxsize=4)
def _split_token_counts(data_dir: str, split: str, modified_ns: int) -> np.ndarray:
    del modified_ns  # only part of the cache key
    return np.bincount(np.asarray(load_split(data_dir, split)), minlength=GPT2_VOCAB_SIZE)


def token_id_map(tokenizer: Tokenizer) -> np.ndarray | None:
    """GPT-2 id -> model id lookup table for a compact vocabulary (None for full GPT-2); ids outside it
    map to <|endoftext|>, so callers refuse data with such ids first (`gpt.evaluate.check_split_tokens`)."""
    if not tokenizer.is_compact:
        return None
    table = np.full(GPT2_VOCAB_SIZE, tokenizer.eot_id, dtype=np.int64)
    table[np.asarray(tokenizer.kept_gpt2_ids)] = np.arange(tokenizer.vocab_size)
    return table


def spell_ids(tokens: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """GPT-2 ids -> the model ids of a vocabulary that spells the tokens it lacks (`Tokenizer.spells_data`):
    each token becomes its kept id, or the kept pieces that make up its bytes (`Tokenizer.from_gpt2`), so the
    result is longer than `tokens`. Vectorised: each distinct id is spelled once."""
    tokens = np.asarray(tokens, dtype=np.int64)
    distinct, inverse = np.unique(tokens, return_inverse=True)
    spellings = [tokenizer.from_gpt2([int(gpt2_id)]) for gpt2_id in distinct]
    lengths = np.array([len(piece) for piece in spellings], dtype=np.int64)
    flat = np.fromiter((i for piece in spellings for i in piece), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    per_token = lengths[inverse]  # pieces of each token
    starts = np.repeat(offsets[inverse], per_token)  # where each output id's spelling starts in `flat`
    within = np.arange(int(per_token.sum())) - np.repeat(np.cumsum(per_token) - per_token, per_token)
    return flat[starts + within]


def model_tokens(tokens: np.ndarray, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray | None]:
    """A split as a model with `tokenizer` reads it: (tokens, id_map) to map window by window, or, for a
    vocabulary that spells rarer tokens, (the spelled model ids, None)."""
    if tokenizer.spells_data:
        return spell_ids(tokens, tokenizer), None
    return tokens, token_id_map(tokenizer)


def _to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    import torch

    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def get_batch(tokens: np.ndarray, batch_size: int, context_length: int, generator: torch.Generator,
              device: str | torch.device = "cpu", id_map: np.ndarray | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `context_length + 1` tokens: x = w[:-1], y = w[1:], both int64 (B, T).

    `generator` (a CPU torch.Generator) makes the draw reproducible."""
    import torch

    if context_length < 1 or batch_size < 1:
        raise UserInputError("context_length and batch_size must be >= 1")
    if len(tokens) < context_length + 1:
        raise UserInputError(f"the split has {len(tokens):,} tokens, fewer than one window of {context_length} "
                             f"tokens needs ({context_length + 1}); use a shorter context or more data")
    starts = torch.randint(len(tokens) - context_length, (batch_size,), generator=generator).numpy()
    windows = np.asarray(tokens[starts[:, None] + np.arange(context_length + 1)], dtype=np.int64)  # (B, T+1)
    if id_map is not None:
        windows = id_map[windows]
    x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
    return _to_device(x, device), _to_device(y, device)


def eval_window_count(num_tokens: int, context_length: int) -> int:
    """How many windows `iter_eval_batches` yields for a split of `num_tokens` tokens."""
    return math.ceil(max(0, num_tokens - 1) / context_length)


def _pad_id(pad_id: int | None, id_map: np.ndarray | None) -> int:
    """The model id that pads a short last window: `pad_id` when given, else <|endoftext|> as a model id."""
    if pad_id is not None:
        return pad_id
    return int(id_map[GPT2_EOT_ID]) if id_map is not None else GPT2_EOT_ID


def iter_eval_batches(tokens: np.ndarray, context_length: int, batch_size: int, *,
                      device: str | torch.device = "cpu", id_map: np.ndarray | None = None,
                      max_windows: int | None = None, pad_id: int | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering the split, in order: window i has x = tokens[iT:iT+T] and
    y = tokens[iT+1:iT+T+1], so every token after the first is a target exactly once.

    The last window is usually shorter: its x is padded with <|endoftext|> (`pad_id`: its model id, for
    tokens that are model ids already) and its y with -1 (the loss's ignore_index), so count targets as
    (y != -1). `max_windows` stops early (a quick estimate)."""
    import torch

    if len(tokens) < 2:
        raise UserInputError("the split needs at least 2 tokens to evaluate")
    if context_length < 1 or batch_size < 1:
        raise UserInputError("context_length and batch_size must be >= 1")
    windows = eval_window_count(len(tokens), context_length)
    if max_windows is not None:
        windows = min(windows, max_windows)
    pad = _pad_id(pad_id, id_map)
    for first in range(0, windows, batch_size):
        rows = range(first, min(first + batch_size, windows))
        x = np.full((len(rows), context_length), pad, dtype=np.int64)  # (B, T)
        y = np.full((len(rows), context_length), -1, dtype=np.int64)  # (B, T)
        for row, window in enumerate(rows):
            start = window * context_length
            chunk = np.asarray(tokens[start:start + context_length + 1], dtype=np.int64)
            if id_map is not None:
                chunk = id_map[chunk]
            x[row, :len(chunk) - 1] = chunk[:-1]
            y[row, :len(chunk) - 1] = chunk[1:]
        yield _to_device(torch.from_numpy(x), device), _to_device(torch.from_numpy(y), device)
