"""Compact vocabularies: the GPT-2 ids that occur in a prepared data folder, as a smaller `Tokenizer`.

`vocab="compact"` trains an embedding (and output layer) of only those rows: on Tiny Shakespeare about
11,000 instead of 50,257, which makes a small model several times cheaper on a CPU (README's lever table).
With `vocab_limit=N` only the N most frequent training tokens are kept (plus the 256 bytes) and rarer
tokens are spelled with them: sequences grow a little (Tiny Shakespeare, N=4096: 7% more tokens), but every
row left is trained often, and the LM head shrinks again.
"""

from __future__ import annotations

import os

import numpy as np

from gpt.data.folder import split_token_counts
from gpt.tokenizer import GPT2_BYTE_TOKENS, Tokenizer, gpt2_tokenizer


def compact_tokenizer(data_dir: str | os.PathLike) -> Tokenizer:
    """Every GPT-2 id that occurs in the data folder's token files, train or validation (as
    character-level recipes build their alphabet from the whole text).

    Only the set of ids comes from the validation split, never its text; a validation-only token keeps its
    own row (untrained: it gets almost no probability), so validation is scored token by token exactly as
    with the full vocabulary instead of folding unseen tokens into a shared id. The 256 single-byte tokens
    are always kept, so any later prompt can be spelled with them (see `Tokenizer.from_gpt2`)."""
    seen = (split_token_counts(data_dir, "train") + split_token_counts(data_dir, "val")) > 0
    seen[:GPT2_BYTE_TOKENS] = True
    return Tokenizer(np.flatnonzero(seen).tolist())


def frequent_tokenizer(data_dir: str | os.PathLike, limit: int) -> Tokenizer:
    """The `limit` GPT-2 ids that occur most often in the training split (ties: the lower id), plus the 256
    single-byte tokens; every other token of any text is spelled with these (`Tokenizer.spells_data`).

    Only training counts are read: no validation token decides what the vocabulary keeps."""
    counts = split_token_counts(data_dir, "train")
    seen = np.flatnonzero(counts)
    frequent = seen[np.argsort(-counts[seen], kind="stable")][:limit]
    return Tokenizer(sorted(set(frequent.tolist()) | set(range(GPT2_BYTE_TOKENS))), spells_data=True)


def tokenizer_for(vocab: str, data_dir: str | os.PathLike, limit: int | None = None) -> Tokenizer:
    """The tokenizer a run with `vocab` ("full" | "compact") and `vocab_limit` trains with on `data_dir`."""
    if vocab != "compact":
        return gpt2_tokenizer()
    return frequent_tokenizer(data_dir, limit) if limit is not None else compact_tokenizer(data_dir)
