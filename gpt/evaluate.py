"""Evaluation: mean cross-entropy over a split, perplexity and bits per byte.

Loss is mean cross-entropy in nats per token; perplexity = exp(loss); bits per byte = loss x tokens /
(bytes x ln 2), which compares runs across tokenizers and datasets. In-training evaluations score the first
`eval_batches` batches of the validation split (an estimate, labelled so); the end of a run and the
`eval` command score the whole split (`scope: "full"`).

A split is scored only when the model can represent every token of it (`check_split_tokens`). A run with a
compact vocabulary has no rows for GPT-2 tokens outside it: such tokens are refused, with their count,
rather than scored. Mapping them to <|endoftext|> printed a plausible but wrong loss; spelling them with
byte tokens would score a tokenization the model never trained on (and a different token count), so
neither the loss nor the perplexity would compare with the run's own figures. A run whose vocabulary was cut
to its most frequent tokens (`vocab_limit`) trained on spelled tokens: any split is read spelled the same way,
and bits per byte uses the spelled token count.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gpt.data.folder import iter_eval_batches, load_split, model_tokens, read_meta, split_token_counts
from gpt.errors import UserInputError
from gpt.model import GPT
from gpt.tokenizer import GPT2_VOCAB_SIZE, Tokenizer

SCOPES = ("estimate", "full")


def bits_per_byte(loss: float, meta: dict, split: str = "val", tokens: int | None = None) -> float | None:
    """loss (nats/token) x tokens / (bytes x ln 2) with the split's byte count from meta.json and its token
    count as the model reads it: `tokens` (a vocabulary that spells rarer tokens reads more), else meta's."""
    tokens, size = tokens or meta.get(f"{split}_tokens"), meta.get(f"{split}_bytes")
    if not tokens or not size:
        return None
    return loss * tokens / (size * math.log(2))


def check_split_tokens(data_dir: str | Path, split: str, tokenizer: Tokenizer | None = None) -> None:
    """Refuse a split a model cannot score as it is: token ids beyond GPT-2's vocabulary (a damaged or
    foreign token file), or, given a compact `tokenizer`, tokens outside its vocabulary (with how many)."""
    tokens = load_split(data_dir, split)
    largest = int(tokens.max())
    if largest >= GPT2_VOCAB_SIZE:
        raise UserInputError(f"{split}.bin in {data_dir} holds token id {largest}, beyond GPT-2's {GPT2_VOCAB_SIZE:,} "
                             "tokens: the file is damaged or was not written by `python -m gpt prepare`; prepare "
                             "the dataset again")
    if tokenizer is None or not tokenizer.is_compact or tokenizer.spells_data:
        return  # every GPT-2 token fits, or is spelled with kept ones (the way the run trained)
    counts = split_token_counts(data_dir, split)
    kept = np.zeros(GPT2_VOCAB_SIZE, dtype=bool)
    kept[np.asarray(tokenizer.kept_gpt2_ids)] = True
    outside, total = int(counts[~kept].sum()), int(counts.sum())
    if outside:
        kinds = int((counts[~kept] > 0).sum())
        raise UserInputError(
            f"{outside:,} of the {total:,} tokens ({outside / total:.1%}, {kinds:,} different ones) of {split}.bin "
            f"in {data_dir} are not in this run's compact vocabulary of {tokenizer.vocab_size:,} tokens: the model "
            "has no rows for them, so no loss over this data would be right. Use data made of the run's own "
            "tokens (the folder it was trained on), or a run trained with --vocab full")


@torch.no_grad()
def evaluate(
    model: GPT,
    tokens: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    max_batches: int = 0,
    id_map: np.ndarray | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    pad_id: int | None = None,
) -> tuple[float, int]:
    """Mean cross-entropy (nats/token) and the number of predicted tokens over non-overlapping windows of
    the model's context: the whole split, or its first `max_batches` batches. Deterministic. `pad_id`: the
    model's <|endoftext|> id when `tokens` are model ids already (`gpt.data.model_tokens`)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = iter_eval_batches(tokens, model.config.context_length, batch_size, device=device, id_map=id_map,
                                max_windows=max_batches * batch_size if max_batches else None, pad_id=pad_id)
    for x, y in batches:
        with autocast():
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                                 reduction="sum").item()
        count += int((y != -1).sum())
    model.train(was_training)
    if count == 0:
        raise UserInputError(f"the split has too few tokens ({len(tokens)}) for one window of "
                             f"{model.config.context_length}")
    return total / count, count


def evaluate_run(run: str | Path, data_dir: str | Path | None = None, *, batch_size: int = 8, device: str = "auto",
                 checkpoint: str = "last", split: str = "val") -> dict:
    """Deterministic loss, perplexity and bits per byte of a run's model over a whole split (the `eval` CLI).
    `data_dir` defaults to the folder the run was trained on."""
    from gpt.run import Run
    from gpt.runtime import resolve_device

    opened = Run.open(run)
    data_dir = data_dir or opened.config.data.dir
    if not data_dir:
        raise UserInputError(f"{opened.name} records no data folder: pass --data DIR")
    loaded = opened.load(checkpoint, device=resolve_device(device))
    meta = read_meta(data_dir)
    check_split_tokens(data_dir, split, loaded.tokenizer)
    tokens, id_map = model_tokens(load_split(data_dir, split), loaded.tokenizer)
    dev = loaded.model.token_embedding.weight.device
    loss, count = evaluate(loaded.model, tokens, batch_size=batch_size, device=dev, id_map=id_map,
                           pad_id=loaded.tokenizer.eot_id)
    return {"val_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": bits_per_byte(loss, meta, split, tokens=len(tokens)), "tokens": count, "split": split,
            "step": loaded.step, "checkpoint": loaded.checkpoint, "scope": "full"}
