"""Looking inside a trained GPT, as numbers: attention, head types, the logit lens, embeddings, per-token loss.

Every figure and HTML view of these numbers is in `gpt/figures/`; this module returns arrays, dataclasses
and tables only, so the trainer, the command line and a notebook use it as the Inspect tab does.

Attention
    `compute_attention(model, tokenizer, text)` runs the model's explicit attention path
    (`GPT.forward_with_attention`) on at most `MAX_TOKENS` tokens of the text and keeps every layer's
    probabilities as one array `probs` (n_layer, n_head, T, T). `attention_matrix` picks one head or a mean;
    `head_statistics` gives entropy and the share of weight on the previous token, on the first token and
    on the token itself, per head, as a table.

Head types (the probe)
    Detection patterns as in TransformerLens' `head_detector`: *previous-token* (query i -> key i-1),
    *duplicate-token* (query i -> earlier keys holding the same token), *induction* (query i -> the key
    right after an earlier occurrence of token i), plus the *first-token* share (query i >= 1 -> key 0, the
    "attention sink"). `pattern_score` is TransformerLens' "mul" measure, the share of a head's attention that
    falls on the pattern's (query, key) pairs, taken over the query positions the pattern covers (those
    with at least one marked key), so a perfect head scores 1. TransformerLens divides by every position
    instead; its number is ours x (covered positions / all positions): just under 0.5 for duplicate and
    induction on a sequence repeated twice.
    A `Probe` is fixed per run: `PROBE_SEQUENCES` sequences of <|endoftext|> + n random tokens + the same n
    tokens again (drawn once from `seed`, from the tokens of the run's training split), and `PROBE_WINDOWS`
    windows of the validation split. `score_probe(model, probe)` scores every layer x head on the repeated
    sequences and the in-context learning score on the windows; the trainer calls it at each evaluation and
    appends `{"step": step, **row}` to metrics.jsonl (the `heads` row kind, described in `score_probe`).

In-context learning score
    Olsson et al. 2022 ("In-context learning and induction heads"): the loss at token 500 of the context
    minus the loss at token 50, averaged over examples; negative when later tokens are predicted better
    because the model uses its context. `icl_positions` scales both positions by context_length / 512 for
    contexts shorter than 512 tokens and averages a band of a few positions around each (see there).

Logit lens
    `logit_lens(model, tokenizer, text)` applies the final norm and the unembedding to the residual stream
    after each layer: the top prediction there and the probability and rank of the true next token, as
    (layer, position) arrays.

Embeddings
    `token_counts` counts the tokens of a run's training split; `embedding_projection` projects the token
    embeddings of the most frequent tokens to 2D or 3D by PCA; `nearest_neighbours` ranks tokens by cosine
    similarity; `position_similarity` compares learned position embeddings (RoPE runs have none).

Per-token loss
    `token_losses` scores a text the way training does, after an `<|endoftext|>` token (so the first token of
    the text is predicted too, as at the start of a training document): surprisal and rank of every token,
    the top-k predictions at each position, mean loss and bits per byte.

Text always goes through the run's `Tokenizer` (a run may use a compact vocabulary); labels come from
`Tokenizer.display_labels` (␣ for a leading space, ↵ for a newline, split UTF-8 characters made whole).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from gpt.data import load_split, model_tokens, split_token_counts
from gpt.errors import UserInputError
from gpt.model import GPT
from gpt.run import RunConfig
from gpt.tokenizer import Tokenizer

if TYPE_CHECKING:  # tables are made where asked for, so the trainer (score_probe) never imports pandas
    import pandas as pd

MAX_TOKENS = 128  # longest text (in tokens) the attention and loss views take; longer text is cut
REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN_CLASSES = ("word start", "punctuation", "digit", "other")
HEAD_SCORES = ("previous_token", "duplicate_token", "induction", "first_token")
# An induction head "has formed" when at least this share of its attention from the repeated half goes to
# the one token induction predicts. A head that spreads its attention evenly puts about 1/position (1-3% on
# the probe) there, and previous-token or duplicate-token heads put ~0 there (their keys are one off).
INDUCTION_THRESHOLD = 0.4
PROBE_SEQUENCES = 4  # repeated random sequences per probe
PROBE_MAX_REPEAT = 64  # n: random tokens per half (fewer when the context is shorter)
PROBE_WINDOWS = 16  # validation windows of context_length + 1 tokens for the in-context learning score
PROBE_MIN_CONTEXT = 16
ICL_REFERENCE_CONTEXT = 512  # Olsson et al.'s positions 50 and 500 are used as they are from this context up
ICL_EARLY, ICL_LATE = 50, 500


# -- text -> model input -----------------------------------------------------------------------------
@dataclass
class EncodedText:
    """Model ids of a text cut to the cap, their display labels, and notes for the person."""

    ids: list[int]
    labels: list[str]
    truncated: bool
    notes: list[str] = field(default_factory=list)


def encode_text(tokenizer: Tokenizer, text: str, max_tokens: int) -> EncodedText:
    """Encode `text` with the run's tokenizer, keeping the first `max_tokens` tokens.

    Pieces outside a compact vocabulary are spelled with shorter tokens (or, in a vocabulary without the
    byte tokens, shown as `<|endoftext|>`) and listed in `notes`."""
    if not text or not text.strip():
        raise UserInputError("the text is empty: type or paste some text to inspect")
    notes = []
    try:
        ids, how = tokenizer.encode(text), "are spelled with smaller tokens"
    except UserInputError:
        ids, how = tokenizer.encode(text, unknown="eot"), "are shown as <|endoftext|>"
    unknown = tokenizer.unknown_tokens(text)
    if unknown:
        shown = ", ".join(repr(piece) for piece in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        notes.append(f"{len(unknown)} piece(s) are not in this run's vocabulary of {tokenizer.vocab_size} tokens "
                     f"and {how}: {shown}")
    truncated = len(ids) > max_tokens
    if truncated:
        notes.append(f"the text has {len(ids)} tokens; only the first {max_tokens} are inspected")
        ids = ids[:max_tokens]
    labels = tokenizer.display_labels(ids)
    if labels != [tokenizer.token_display(i) for i in ids]:
        notes.append("some characters are split across several byte tokens: each piece shows the whole "
                     "character, marked [k/n]")
    return EncodedText(ids, labels, truncated, notes)


def token_cap(model: GPT, max_tokens: int = MAX_TOKENS, reserved: int = 0) -> int:
    """The number of text tokens a view takes: `max_tokens`, or less when the context is shorter."""
    return max(1, min(max_tokens, model.config.context_length - reserved))


def _device(model: GPT) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _evaluating(model: GPT) -> Iterator[None]:
    """The model in eval mode (no dropout) and without gradients, put back as it was afterwards (the trainer
    scores its probe in the middle of training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# -- attention --------------------------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """Attention probabilities of one text: `probs[layer, head, query, key]` (float32, rows sum to 1)."""

    ids: list[int]
    labels: list[str]
    probs: np.ndarray
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_layer(self) -> int:
        return self.probs.shape[0]

    @property
    def n_head(self) -> int:
        return self.probs.shape[1]

    @property
    def length(self) -> int:
        return self.probs.shape[2]


def compute_attention(model: GPT, tokenizer: Tokenizer, text: str, max_tokens: int = MAX_TOKENS) -> AttentionMaps:
    """Every layer's attention probabilities for `text` (at most `max_tokens` tokens, and the context length)."""
    encoded = encode_text(tokenizer, text, token_cap(model, max_tokens))
    with _evaluating(model), _lm_head_only_at(model, [0]):  # the logits are not needed here
        idx = torch.tensor([encoded.ids], dtype=torch.long, device=_device(model))
        _, attentions = model.forward_with_attention(idx)
        probs = torch.stack([a[0] for a in attentions]).float().cpu().numpy()  # (L, H, T, T)
    return AttentionMaps(encoded.ids, encoded.labels, probs, encoded.truncated, encoded.notes)


def check_index(name: str, value: int | None, size: int) -> None:
    if value is not None and not 0 <= value < size:
        raise UserInputError(f"{name} {value} does not exist: this model has {name}s 0..{size - 1}")


def attention_matrix(maps: AttentionMaps, layer: int | None, head: int | None) -> np.ndarray:
    """One (T, T) map: a head of a layer, or the mean over heads (`head=None`) and/or layers (`layer=None`)."""
    check_index("layer", layer, maps.n_layer)
    check_index("head", head, maps.n_head)
    probs = maps.probs if layer is None else maps.probs[layer : layer + 1]
    probs = probs if head is None else probs[:, head : head + 1]
    return probs.mean(axis=(0, 1))


def head_statistics(maps: AttentionMaps) -> pd.DataFrame:
    """Per head: mean entropy of its attention rows (bits) and the mean share of weight on the previous
    token, the first token and the token itself, over query positions 1..T-1 (position 0 can only attend
    to itself). `pattern` names the dominant behaviour when one share is above one half."""
    import pandas as pd

    if maps.length < 2:
        raise UserInputError("head statistics need a text of at least 2 tokens")
    probs = maps.probs.astype(np.float64)[:, :, 1:, :]  # (L, H, T-1, T): query rows 1..T-1
    rows = np.arange(1, maps.length)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log2(probs), 0.0)
    entropy = -plogp.sum(axis=-1).mean(axis=-1)
    previous = probs[:, :, rows - 1, rows - 1].mean(axis=-1)
    first = probs[:, :, :, 0].mean(axis=-1)
    itself = probs[:, :, rows - 1, rows].mean(axis=-1)
    records = []
    for layer in range(maps.n_layer):
        for head in range(maps.n_head):
            shares = {"previous token": previous[layer, head], "first token": first[layer, head],
                      "self": itself[layer, head]}
            name, best = max(shares.items(), key=lambda item: item[1])
            records.append(
                {
                    "layer": layer,
                    "head": head,
                    "entropy_bits": round(float(entropy[layer, head]), 3),
                    "previous_token": round(float(previous[layer, head]), 3),
                    "first_token": round(float(first[layer, head]), 3),
                    "self": round(float(itself[layer, head]), 3),
                    "pattern": name if best > 0.5 else "mixed",
                }
            )
    return pd.DataFrame.from_records(records)


# -- head types -------------------------------------------------------------------------------------------
def previous_token_pattern(ids: Sequence[int]) -> np.ndarray:
    """(T, T) bool: query i attends to key i-1 (TransformerLens' previous-token detection pattern)."""
    return np.eye(len(ids), k=-1, dtype=bool)


def duplicate_token_pattern(ids: Sequence[int]) -> np.ndarray:
    """(T, T) bool: query i attends to every earlier key j < i holding the same token."""
    ids = np.asarray(ids)
    return np.tril(ids[:, None] == ids[None, :], k=-1)


def induction_pattern(ids: Sequence[int]) -> np.ndarray:
    """(T, T) bool: query i attends to key j when token j-1 is an earlier occurrence of token i (the token
    that followed it last time): the duplicate-token pattern shifted one key to the right."""
    duplicate = duplicate_token_pattern(ids)
    pattern = np.zeros_like(duplicate)
    pattern[:, 1:] = duplicate[:, :-1]
    return pattern


def first_token_pattern(ids: Sequence[int]) -> np.ndarray:
    """(T, T) bool: query i >= 1 attends to key 0 (the "attention sink")."""
    pattern = np.zeros((len(ids), len(ids)), dtype=bool)
    pattern[1:, 0] = True
    return pattern


PATTERNS: dict[str, Callable[[Sequence[int]], np.ndarray]] = {
    "previous_token": previous_token_pattern,
    "duplicate_token": duplicate_token_pattern,
    "induction": induction_pattern,
    "first_token": first_token_pattern,
}


def pattern_score(probs: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """The share of attention on a detection pattern: sum(A * P) / sum(A over the covered query rows).

    probs (..., T, T) attention probabilities, pattern (T, T) or (..., T, T) bool/0-1, broadcast against
    probs. A query row is covered when the pattern marks at least one key in it. Returns (...)."""
    pattern = pattern.to(probs.dtype)
    covered = pattern.amax(dim=-1, keepdim=True)  # (..., T, 1): 1 on rows with a marked key
    return (probs * pattern).sum(dim=(-2, -1)) / (probs * covered).sum(dim=(-2, -1))


def icl_positions(context_length: int) -> tuple[list[int], list[int]]:
    """The context positions (1-based: position p is the prediction made after seeing p tokens) whose mean
    loss is compared: (early band, late band).

    Olsson et al. compare positions 50 and 500. For a context shorter than 512 tokens both are scaled by
    s = context_length / 512 (rounded half up); each is widened to a band of k = max(1, round(8 s))
    positions on either side, clamped to 1..context_length, so that a few validation windows give a steady
    number. E.g. context 128: early 11..15, late 123..127; context 256: 21..29 and 246..254; 1024: 42..58 and
    492..508."""
    scale = min(1.0, context_length / ICL_REFERENCE_CONTEXT)
    half = max(1, math.floor(8 * scale + 0.5))

    def band(position: float) -> list[int]:
        centre = math.floor(position * scale + 0.5)
        return list(range(max(1, centre - half), min(context_length, centre + half) + 1))

    return band(ICL_EARLY), band(ICL_LATE)


@dataclass
class Probe:
    """The fixed inputs `score_probe` gives a model (drawn once per run, so scores compare across steps).

    `repeated` (B, 2n + 1): <|endoftext|>, n random tokens, the same n tokens again. `text` (W,
    context_length + 1): windows of validation tokens for the in-context learning score, or None (no
    validation data: that score is then None). `notes` say what was left out and why."""

    repeated: np.ndarray
    text: np.ndarray | None
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def repeat_length(self) -> int:
        return (self.repeated.shape[1] - 1) // 2


def make_probe(
    context_length: int,
    candidates: Sequence[int],
    eot_id: int,
    *,
    text_tokens: np.ndarray | None = None,
    seed: int = 0,
    sequences: int = PROBE_SEQUENCES,
    windows: int = PROBE_WINDOWS,
) -> Probe:
    """A probe for a model with this context length. Random tokens come from `candidates` (model ids; each
    half has no repeats when there are enough of them); `text_tokens` (model ids) gives up to `windows`
    evenly spaced windows of context_length + 1 tokens."""
    if context_length < PROBE_MIN_CONTEXT:
        raise UserInputError(f"the head probe needs a context of at least {PROBE_MIN_CONTEXT} tokens; this model "
                             f"has {context_length}")
    candidates = np.asarray([c for c in candidates if c != eot_id], dtype=np.int64)
    if len(candidates) < 2:
        raise UserInputError("the head probe needs at least 2 distinct tokens to draw random sequences from")
    n = min(PROBE_MAX_REPEAT, (context_length - 1) // 2)
    rng = np.random.default_rng(seed)
    halves = [rng.choice(candidates, size=n, replace=len(candidates) < n) for _ in range(sequences)]
    repeated = np.stack([np.concatenate([[eot_id], half, half]) for half in halves]).astype(np.int64)
    text = None
    if text_tokens is not None:
        needed = context_length + 1
        if len(text_tokens) < needed:
            raise UserInputError(f"the validation text has {len(text_tokens)} tokens; the in-context learning "
                                 f"probe needs at least {needed} (one window of the model's context + 1)")
        count = min(windows, len(text_tokens) // needed)
        starts = np.linspace(0, len(text_tokens) - needed, count).astype(np.int64)
        text = np.stack([np.asarray(text_tokens[s : s + needed], dtype=np.int64) for s in starts])
    return Probe(repeated, text, seed)


def run_probe(data_dir: str | Path | None, tokenizer: Tokenizer, context_length: int, seed: int) -> Probe:
    """The probe of a run trained on `data_dir` (a prepared data folder, as its config records it): random
    tokens from those that occur in its training split, windows of its validation split. Without the
    folder (not on this machine) random tokens come from the whole vocabulary and there is no in-context
    learning score; `notes` say so. The trainer, the Inspect tab and `python -m gpt heads` build the same
    probe from the same run (`probe_for_run`)."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        probe = make_probe(context_length, range(tokenizer.vocab_size), tokenizer.eot_id, seed=seed)
        where = f"its data folder {str(data_dir)!r} is not on this machine" if data_dir else "it records no data"
        probe.notes.append(f"random probe tokens come from the whole vocabulary and there is no in-context "
                           f"learning score ({where})")
        return probe
    counts = split_token_counts(folder, "train")
    counts = counts[np.asarray(tokenizer.kept_gpt2_ids)] if tokenizer.is_compact else counts[: tokenizer.vocab_size]
    val = None
    if (folder / "val.bin").is_file():
        val, id_map = model_tokens(np.asarray(load_split(folder, "val")), tokenizer)
        val = id_map[val] if id_map is not None else val
    probe = make_probe(context_length, np.flatnonzero(counts), tokenizer.eot_id, text_tokens=val, seed=seed)
    if val is None:
        probe.notes.append(f"{folder.name} has no validation split: no in-context learning score")
    return probe


def probe_for_run(config: RunConfig) -> Probe:
    """`run_probe` for a run's config: its data folder, tokenizer, context length and training seed."""
    seed = config.train.seed if config.train is not None else 0
    return run_probe(config.data.dir, config.tokenizer, config.model.context_length, seed)


@contextlib.contextmanager
def _lm_head_only_at(model: GPT, positions: list[int]) -> Iterator[None]:
    """While active, the model's logits are computed only at `positions` (B, len(positions), V): the LM
    head is the costliest part of scoring a long window over a large vocabulary, and the in-context
    learning score needs a few positions only. (A forward hook that narrows the final norm's output.)"""
    index = torch.tensor(positions, device=_device(model))
    handle = model.final_norm.register_forward_hook(lambda _module, _inputs, output: output[:, index])
    try:
        yield
    finally:
        handle.remove()


def _position_losses(model: GPT, text: np.ndarray, positions: list[int]) -> torch.Tensor:
    """Mean loss (nats) over the windows at each 1-based context position: (len(positions),)."""
    windows = torch.as_tensor(text, device=_device(model))
    index = [p - 1 for p in positions]
    with _lm_head_only_at(model, index):
        logits, _ = model(windows[:, :-1])  # (W, P, V)
    targets = windows[:, 1:][:, index]  # the token after position p is at window index p
    losses = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (W, P)
    return losses.mean(dim=0)


def _rounded(values: torch.Tensor) -> list:
    return [[round(float(v), 4) for v in row] for row in values]


def score_probe(model: GPT, probe: Probe) -> dict:
    """Head-type scores of every layer x head and the in-context learning score: the `heads` row.

    Pass the plain `GPT` (not a DDP or compiled wrapper); its train/eval mode is restored afterwards. The
    row (JSON-ready; the trainer adds `"step"` and appends it to metrics.jsonl):

        kind              "heads"
        previous_token    [[score of layer 0 head 0, head 1, ...], [layer 1 ...], ...]  (n_layer x n_head)
        duplicate_token   same shape; induction, first_token likewise (see `pattern_score`)
        <score>_max       the strongest head's score of each of the four kinds
        induction_head    [layer, head] of the strongest induction head
        icl_score         late minus early loss in nats (negative: the context helps), or None
        icl_early_loss, icl_late_loss, icl_positions {"early": [first, last], "late": [first, last]}
        probe             {"seed", "sequences", "repeat_length", "text_windows"}
        seconds           time this call took
    """
    started = time.perf_counter()
    with _evaluating(model):
        device = _device(model)
        with _lm_head_only_at(model, [0]):  # attention only: the logits are not needed
            _, attentions = model.forward_with_attention(torch.as_tensor(probe.repeated, device=device))
        probs = torch.stack(attentions).float()  # (L, B, H, T, T)
        row: dict = {"kind": "heads"}
        for name, make_pattern in PATTERNS.items():
            patterns = torch.as_tensor(np.stack([make_pattern(seq) for seq in probe.repeated]), device=device)
            scores = pattern_score(probs, patterns[None, :, None]).mean(dim=1)  # (L, H): mean over sequences
            row[name] = _rounded(scores)
            row[f"{name}_max"] = round(float(scores.max()), 4)
            if name == "induction":
                row["induction_head"] = [int(i) for i in np.unravel_index(int(scores.argmax()), scores.shape)]
        row.update(icl_score=None, icl_early_loss=None, icl_late_loss=None, icl_positions=None)
        if probe.text is not None:
            early, late = icl_positions(probe.text.shape[1] - 1)
            losses = _position_losses(model, probe.text, early + late)
            early_loss, late_loss = float(losses[: len(early)].mean()), float(losses[len(early) :].mean())
            row.update(icl_score=round(late_loss - early_loss, 4), icl_early_loss=round(early_loss, 4),
                       icl_late_loss=round(late_loss, 4),
                       icl_positions={"early": [early[0], early[-1]], "late": [late[0], late[-1]]})
    row["probe"] = {"seed": probe.seed, "sequences": len(probe.repeated), "repeat_length": probe.repeat_length,
                    "text_windows": 0 if probe.text is None else len(probe.text)}
    row["seconds"] = round(time.perf_counter() - started, 4)
    return row


def head_scores_table(row: dict) -> pd.DataFrame:
    """One line per head (`layer`, `head`, and the four scores) from a `heads` row."""
    import pandas as pd

    n_layer, n_head = len(row["induction"]), len(row["induction"][0])
    return pd.DataFrame.from_records([
        {"layer": layer, "head": head, **{name: row[name][layer][head] for name in HEAD_SCORES}}
        for layer in range(n_layer) for head in range(n_head)
    ])


def first_induction_step(rows: Sequence[dict], threshold: float = INDUCTION_THRESHOLD) -> int | None:
    """The first step of `heads` rows at which some head's induction score reaches `threshold`."""
    for row in rows:
        if row.get("kind") == "heads" and (row.get("induction_max") or 0.0) >= threshold:
            return row.get("step")
    return None


# -- logit lens -------------------------------------------------------------------------------------------
@dataclass
class LogitLens:
    """What the model would predict if it stopped after each layer (final norm + unembedding applied to the
    residual stream), for a text scored after <|endoftext|> as in training. Arrays are (n_layer, T): after
    layer l the top prediction `top_ids`/`top_probs` and the actual token's `true_probs` and `true_ranks`
    (1 = the top prediction) at position t, which predicts token t; `top_labels[l][t]` the top prediction's
    label. The last layer is the model's output."""

    ids: list[int]
    labels: list[str]
    top_ids: np.ndarray
    top_probs: np.ndarray
    true_probs: np.ndarray
    true_ranks: np.ndarray
    top_labels: list[list[str]] = field(default_factory=list)
    truncated: bool = False
    notes: list[str] = field(default_factory=list)


def _residual_stream(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits (B, T, V) and the residual stream after each block (n_layer x (B, T, C)), from one forward
    pass (forward hooks on the blocks)."""
    residuals: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda _module, _inputs, output: residuals.append(output[0]))
               for block in model.blocks]
    try:
        logits, _ = model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return logits, residuals


def _scored_inputs(model: GPT, tokenizer: Tokenizer, text: str, max_tokens: int) -> tuple[EncodedText, torch.Tensor]:
    """The text's tokens (cut so that <|endoftext|> + text fits the context) and the model input that
    predicts each of them: <|endoftext|> followed by all but the last token."""
    encoded = encode_text(tokenizer, text, token_cap(model, max_tokens, reserved=1))
    inputs = [tokenizer.eot_id] + encoded.ids[:-1]
    return encoded, torch.tensor([inputs], dtype=torch.long, device=_device(model))


def logit_lens(model: GPT, tokenizer: Tokenizer, text: str, max_tokens: int = MAX_TOKENS) -> LogitLens:
    """The logit lens of `text` (at most `max_tokens` tokens): see `LogitLens`."""
    encoded, idx = _scored_inputs(model, tokenizer, text, max_tokens)
    with _evaluating(model):
        output, residuals = _residual_stream(model, idx)
        targets = torch.tensor(encoded.ids, device=idx.device)[:, None]  # (T, 1)
        tops, top_probs, true_probs, true_ranks = [], [], [], []
        for layer, residual in enumerate(residuals):
            last = layer == len(residuals) - 1  # after the last block: the model's own logits
            logits = (output if last else model.head(model.final_norm(residual)))[0].float()  # (T, V)
            normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
            true_logit = logits.gather(1, targets)
            best = logits.max(dim=-1, keepdim=True)
            tops.append(best.indices[:, 0])
            top_probs.append((best.values - normaliser).exp()[:, 0])
            true_probs.append((true_logit - normaliser).exp()[:, 0])
            true_ranks.append((logits > true_logit).sum(dim=-1, dtype=torch.int32) + 1)  # int32: 3x faster here
    top_ids = _layers(tops)
    by_position = candidate_labels(tokenizer, encoded.ids, top_ids.T)  # (T, L)
    return LogitLens(encoded.ids, encoded.labels, top_ids, _layers(top_probs).astype(np.float64),
                     _layers(true_probs).astype(np.float64), _layers(true_ranks),
                     [list(layer) for layer in zip(*by_position, strict=True)], encoded.truncated, encoded.notes)


def _layers(per_layer: list[torch.Tensor]) -> np.ndarray:
    """(n_layer, T) numpy from one (T,) tensor per layer."""
    return torch.stack(per_layer).cpu().numpy()


# -- embeddings -------------------------------------------------------------------------------------------
def resolve_data_dir(recorded: str | Path | None) -> Path | None:
    """A run's training data folder as recorded in its config (as written, or relative to the repository)."""
    if not recorded:
        return None
    for candidate in (Path(recorded), REPO_ROOT / recorded):
        if (candidate / "train.bin").is_file():
            return candidate
    return None


def token_counts(data_dir: str | Path | None, tokenizer: Tokenizer) -> tuple[np.ndarray | None, str]:
    """How often each model id occurs in the training split of `data_dir` (the folder a run's config
    records), and a note saying where the counts come from (the folder's name, not a path of this machine).

    Returns `(None, reason)` when the folder is not on this machine."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        where = f"its data folder {str(data_dir)!r} is not on this machine" if data_dir else "it records no data folder"
        return None, f"Token frequencies of this run's training data are unavailable ({where})."
    gpt2_counts = split_token_counts(folder, "train")
    if tokenizer.kept_gpt2_ids is None:
        counts = gpt2_counts[: tokenizer.vocab_size]
    else:
        counts = gpt2_counts[np.asarray(tokenizer.kept_gpt2_ids)]
    return counts.astype(np.int64), (f"Token frequencies from the training split (train.bin) of data folder "
                                     f"{folder.name!r} ({int(gpt2_counts.sum()):,} tokens).")


def most_frequent_tokens(counts: np.ndarray | None, tokenizer: Tokenizer, n: int) -> list[int]:
    """The `n` most frequent model ids that occur at least once; without counts, the first `n` tokens in
    GPT-2's merge order (roughly frequency in GPT-2's own training text), skipping single bytes."""
    if counts is not None:
        order = np.argsort(-counts, kind="stable")
        return [int(i) for i in order[:n] if counts[i] > 0]
    gpt2_ids = tokenizer.to_gpt2(range(tokenizer.vocab_size))
    ranked = sorted((g, model_id) for model_id, g in enumerate(gpt2_ids) if g >= 256 or tokenizer.is_compact)
    return [model_id for _, model_id in ranked[:n]]


def token_class(text: str) -> str:
    """"word start" (a space then a letter), "punctuation", "digit" or "other" for a token's raw text."""
    stripped = text.strip()
    if not stripped:
        return "other"
    if stripped.isdigit():
        return "digit"
    if all(unicodedata.category(ch).startswith(("P", "S")) for ch in stripped):
        return "punctuation"
    if text[0] == " " and stripped[0].isalpha():
        return "word start"
    return "other"


def pca(vectors: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first `dims` principal components (SVD of the centred matrix).

    Returns the coordinates (N, dims) and each component's share of the variance. Signs are fixed so that
    each component's largest loading is positive, which keeps the picture stable across calls."""
    if dims not in (2, 3):
        raise UserInputError(f"projection dimensions must be 2 or 3, got {dims}")
    if len(vectors) <= dims:
        raise UserInputError(f"need more than {dims} tokens to project to {dims}D, got {len(vectors)}")
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, singular, components = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    components = components[:dims]
    signs = np.sign(components[np.arange(dims), np.abs(components).argmax(axis=1)])
    components *= signs[:, None]
    variance = singular**2
    return centred @ components.T, variance[:dims] / variance.sum()


def token_embeddings(model: GPT) -> np.ndarray:
    """The token embedding matrix (vocab_size, n_embd) as float32 numpy (also the tied output layer)."""
    return model.token_embedding.weight.detach().float().cpu().numpy()


@dataclass
class EmbeddingProjection:
    """The PCA of some tokens' embeddings: `coords[k]` (dims,) for model id `ids[k]`, with its display label,
    token class and training count (None without counts); `share` is each component's variance share."""

    ids: list[int]
    coords: np.ndarray
    share: np.ndarray
    labels: list[str]
    classes: list[str]
    counts: list[int | None]
    from_counts: bool


def embedding_projection(model: GPT, tokenizer: Tokenizer, counts: np.ndarray | None, n: int = 300,
                         dims: int = 2) -> EmbeddingProjection:
    """PCA of the token embeddings of the `n` most frequent tokens (see `most_frequent_tokens`)."""
    if n < 4:
        raise UserInputError(f"show at least 4 tokens, got {n}")
    ids = most_frequent_tokens(counts, tokenizer, n)
    coords, share = pca(token_embeddings(model)[ids], dims)
    return EmbeddingProjection(
        ids=ids,
        coords=coords,
        share=share,
        labels=[tokenizer.token_display(i) for i in ids],
        classes=[token_class(tokenizer.token_text(i)) for i in ids],
        counts=[int(counts[i]) if counts is not None else None for i in ids],
        from_counts=counts is not None,
    )


def parse_token(tokenizer: Tokenizer, token: str) -> int:
    """A model id from what a person typed: the token's text (␣ may stand for a leading space) or `#id`."""
    token = token.replace("␣", " ").replace("↵", "\n")
    if not token:
        raise UserInputError("type a token, e.g. ' the' or '␣the' (a leading space is part of the token), or #id")
    if len(token) > 128:  # GPT-2's longest token is 128 bytes; the message quotes only the start of longer text
        raise UserInputError(f"{token[:40]!r}… is {len(token):,} characters, not a token (a token is at most 128 "
                             "bytes); type a single token, e.g. ' the', or #id")
    if token.startswith("#") and token[1:].isdigit():
        model_id = int(token[1:])
        if model_id >= tokenizer.vocab_size:
            raise UserInputError(f"token id {model_id} is outside this vocabulary (0..{tokenizer.vocab_size - 1})")
        return model_id
    ids = tokenizer.encode(token, unknown="eot")
    if tokenizer.unknown_tokens(token):
        raise UserInputError(f"{token!r} is not in this run's vocabulary of {tokenizer.vocab_size} tokens")
    if len(ids) != 1:
        pieces = " | ".join(tokenizer.token_display(i) for i in ids)
        raise UserInputError(f"{token!r} is {len(ids)} tokens ({pieces}); type a single token")
    return ids[0]


def nearest_neighbours(
    model: GPT, tokenizer: Tokenizer, token: str, k: int = 10, counts: np.ndarray | None = None
) -> pd.DataFrame:
    """The `k` tokens whose embeddings have the highest cosine similarity with the typed token's.

    With `counts`, only tokens that occur in the training data are candidates (the others were never
    trained as inputs and mostly keep their random initial vectors)."""
    import pandas as pd

    query = parse_token(tokenizer, token)
    weights = torch.from_numpy(token_embeddings(model))
    sims = torch.nn.functional.cosine_similarity(weights, weights[query : query + 1], dim=-1).numpy()
    sims[query] = -np.inf
    if counts is not None:
        sims[counts == 0] = -np.inf
    order = [int(i) for i in np.argsort(-sims, kind="stable")[:k] if np.isfinite(sims[i])]
    return pd.DataFrame(
        {
            "rank": range(1, len(order) + 1),
            "token": [tokenizer.token_display(i) for i in order],
            "id": order,
            "cosine": [round(float(sims[i]), 4) for i in order],
            "count": [int(counts[i]) if counts is not None else None for i in order],
        }
    )


def position_similarity(model: GPT) -> np.ndarray | None:
    """Cosine similarity (P, P) between learned position embeddings; None for a RoPE model."""
    if model.position_embedding is None:
        return None
    weights = model.position_embedding.weight.detach().float()
    normed = torch.nn.functional.normalize(weights, dim=-1)
    return (normed @ normed.T).cpu().numpy()


# -- per-token loss ---------------------------------------------------------------------------------------
@dataclass
class TokenLosses:
    """How surprised the model is by each token of a text (scored after an <|endoftext|> token).

    `losses[t]` = -ln p(token t | <|endoftext|>, tokens before t) in nats; `ranks[t]` the actual token's rank
    among the model's predictions (1 = its top guess); `top_ids`/`top_probs` (T, k) the model's k most
    likely tokens at that position, with `top_labels` their display labels after the text so far (a byte
    token that completes a character split before it shows that character)."""

    ids: list[int]
    labels: list[str]
    losses: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    num_bytes: int
    ranks: np.ndarray | None = None
    top_labels: list[list[str]] = field(default_factory=list)
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean())

    @property
    def bits_per_byte(self) -> float:
        return float(self.losses.sum() / (self.num_bytes * math.log(2)))

    def summary(self) -> str:
        return (
            f"{len(self.ids)} tokens, {self.num_bytes} bytes: loss {self.mean_loss:.3f} nats/token "
            f"(perplexity {math.exp(self.mean_loss):.1f}), {self.bits_per_byte:.3f} bits per byte"
        )


def candidate_labels(tokenizer: Tokenizer, ids: Sequence[int], candidates: np.ndarray) -> list[list[str]]:
    """Display labels of candidate tokens: `candidates[t]` (a row of ids) as they would follow `ids[:t]`.
    Where the text before position t ends inside a character split across byte tokens, a candidate that
    completes it shows the whole character (`Tokenizer.display_labels`); elsewhere its own label."""
    data = tokenizer.decode_bytes(ids)
    ends = [0, *itertools.accumulate(len(tokenizer.decode_bytes([i])) for i in ids)]
    plain: dict[int, str] = {}

    def own(model_id: int) -> str:
        if model_id not in plain:
            plain[model_id] = tokenizer.token_display(model_id)
        return plain[model_id]

    labels = []
    for t, row in enumerate(candidates):
        if ends[t] < len(data) and data[ends[t]] & 0xC0 == 0x80:  # the text goes on inside a character
            context = [int(i) for i in ids[max(0, t - 3) : t]]
            labels.append([tokenizer.display_labels([*context, int(c)])[-1] for c in row])
        else:
            labels.append([own(int(c)) for c in row])
    return labels


def token_losses(
    model: GPT, tokenizer: Tokenizer, text: str, max_tokens: int = MAX_TOKENS, top_k: int = 5
) -> TokenLosses:
    """Surprisal and rank of every token of `text` (at most `max_tokens`) and the model's top-k guesses."""
    encoded, idx = _scored_inputs(model, tokenizer, text, max_tokens)
    with _evaluating(model):
        logits, _ = model(idx)
        logits = logits[0].float()  # (T, V)
        log_probs = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(encoded.ids, device=log_probs.device)[:, None]
        true = log_probs.gather(1, targets)  # (T, 1)
        ranks = (logits > logits.gather(1, targets)).sum(dim=-1, dtype=torch.int32) + 1  # as the logit lens does
        top = log_probs.topk(min(top_k, log_probs.size(-1)), dim=-1)
    top_ids = top.indices.cpu().numpy()
    return TokenLosses(
        ids=encoded.ids,
        labels=encoded.labels,
        losses=-true[:, 0].cpu().numpy().astype(np.float64),
        top_ids=top_ids,
        top_probs=top.values.exp().cpu().numpy().astype(np.float64),
        num_bytes=len(tokenizer.decode_bytes(encoded.ids)),
        ranks=ranks.cpu().numpy(),
        top_labels=candidate_labels(tokenizer, encoded.ids, top_ids),
        truncated=encoded.truncated,
        notes=encoded.notes,
    )
