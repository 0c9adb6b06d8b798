"""Documents to GPT-2 token files: tiktoken's BPE on its threads, <|endoftext|> between documents.

`tokenize_documents` cuts long documents at points where GPT-2's pre-tokenizer always starts a new piece
(so the tokens are exactly those of the whole text) and hands batches to tiktoken's thread pool;
`write_data_folder` writes train.bin / val.bin (uint16) and meta.json so that a folder holding a
meta.json is always complete.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpt.data.folder import META_FILE, SPLITS, TOKEN_DTYPE, split_file
from gpt.data.progress import Progress, say
from gpt.tokenizer import GPT2_EOT_ID, gpt2_tokenizer

_CHUNK_CHARS = 1 << 16  # long documents are cut into ~64 KB pieces so tiktoken's threads share them
_BATCH_CHARS = 1 << 22  # characters handed to tiktoken per call (bounds memory, paces the progress bar)
# Cut points where GPT-2's pre-tokenizer always starts a new piece, so cutting there changes no token:
# before a single space between two non-space characters, or after a newline that follows a non-space
# character and precedes one.
_SAFE_CUT = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")


def chunk_text(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    """Cut a long text at safe points into pieces of about `size` characters; their tokens concatenated
    equal the tokens of the whole text."""
    pieces, start = [], 0
    while len(text) - start > size:
        match = _SAFE_CUT.search(text, start + size)
        if match is None:
            break
        pieces.append(text[start:match.start()])
        start = match.start()
    pieces.append(text[start:])
    return pieces


def tokenize_documents(documents: Sequence[str], *, num_threads: int | None = None,
                       progress: Progress | None = None) -> np.ndarray:
    """GPT-2 ids (uint16) of the documents with <|endoftext|> between them, on tiktoken's threads.

    A literal "<|endoftext|>" inside a document is ordinary text here, never a separator."""
    tokenizer = gpt2_tokenizer()
    total = max(1, sum(len(d) for d in documents))
    parts: list[np.ndarray] = []
    batch: list[str] = []
    ends: list[bool] = []
    batch_chars = done = 0

    def flush() -> None:
        nonlocal batch_chars, done
        ids_of_batch: list[int] = []
        for ids, last in zip(tokenizer.encode_batch(batch, num_threads=num_threads), ends, strict=True):
            ids_of_batch.extend(ids)
            if last:
                ids_of_batch.append(GPT2_EOT_ID)
        parts.append(np.array(ids_of_batch, dtype=TOKEN_DTYPE))
        done += batch_chars
        batch.clear()
        ends.clear()
        batch_chars = 0
        say(progress, done / total, "tokenizing")

    for index, doc in enumerate(documents):
        pieces = chunk_text(doc)
        for j, piece in enumerate(pieces):
            batch.append(piece)
            ends.append(j == len(pieces) - 1 and index < len(documents) - 1)
            batch_chars += len(piece)
            if batch_chars >= _BATCH_CHARS:
                flush()
    if batch:
        flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


def count_tokens(documents: Sequence[str], num_threads: int | None = None) -> int:
    """GPT-2 tokens of the documents (without separators)."""
    tokenizer = gpt2_tokenizer()
    pieces = [piece for doc in documents for piece in chunk_text(doc)]
    total = 0
    for start in range(0, len(pieces), 256):
        total += sum(len(ids) for ids in tokenizer.encode_batch(pieces[start:start + 256], num_threads=num_threads))
    return total


def write_data_folder(out_dir: str | os.PathLike, train_ids: np.ndarray, val_ids: np.ndarray, meta: dict) -> None:
    """train.bin, val.bin and meta.json, each staged under a temporary name and renamed into place;
    meta.json goes in last, so a folder with a meta.json is complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = {"train": split_file(out_dir, "train"), "val": split_file(out_dir, "val"), "meta": out_dir / META_FILE}
    staged = {key: path.with_name(f".{path.name}.tmp") for key, path in final.items()}
    for split, ids in zip(SPLITS, (train_ids, val_ids), strict=True):
        np.asarray(ids, dtype=TOKEN_DTYPE).tofile(staged[split])
    staged["meta"].write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    final["meta"].unlink(missing_ok=True)
    for key in ("train", "val", "meta"):
        os.replace(staged[key], final[key])
