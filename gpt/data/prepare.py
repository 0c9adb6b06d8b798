"""Preparing a data folder: load, clean, split train/validation, tokenize, measure leakage, write.

The split is by whole documents, validation taken from the end (one document: two contiguous blocks cut
at a line break), never by overlapping windows, and the share of validation 8-grams that also occur in
train is measured and recorded, because a validation set that repeats training text makes a model look
far better than it is. `prepare_dataset` is what `python -m gpt prepare` and the Data tab call.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from gpt.data.clean import CleanConfig, CleanReport, clean_documents
from gpt.data.folder import FORMAT_VERSION, META_FILE
from gpt.data.load import AUTO_ENCODING, LoadedSource, load_documents
from gpt.data.progress import Progress, say, scaled
from gpt.data.tokens import count_tokens, tokenize_documents, write_data_folder
from gpt.errors import UserInputError
from gpt.tokenizer import GPT2_EOT_ID, GPT2_VOCAB_SIZE

NGRAM_N = 8
MIN_CONTEXT_LENGTH = 8


# -- splitting ----------------------------------------------------------------------------------------
def split_documents(documents: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Train and validation documents, validation taken from the end.

    Several documents: whole documents go to validation until they hold `val_fraction` of the characters
    (at least one document on each side). One document: it is cut into two contiguous blocks at the line
    break (else the space) nearest to the target share, never into overlapping windows."""
    if not 0.0 < val_fraction < 1.0:
        raise UserInputError(f"the validation fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    docs = [d for d in documents if d]
    if not docs:
        raise UserInputError("there is no text to split")
    if len(docs) == 1:
        text = docs[0]
        target = int(len(text) * (1.0 - val_fraction))
        slack = max(80, int(len(text) * val_fraction * 0.1))  # how far from the target share a cut may move
        cut = target
        for separator in ("\n", " "):
            found = [i + 1 for i in (text.find(separator, target), text.rfind(separator, 0, target))
                     if i != -1 and abs(i + 1 - target) <= slack]
            if found:
                cut = min(found, key=lambda i: abs(i - target))
                break
        train, val = text[:cut], text[cut:]
        if not train.strip() or not val.strip():
            raise UserInputError(f"the text ({len(text)} characters) is too small for a validation split of "
                                 f"{val_fraction:g}; add more text or change the validation fraction")
        return [train], [val]
    target = val_fraction * sum(len(d) for d in docs)
    cut, val_chars = len(docs), 0
    while cut > 1 and val_chars < target:
        cut -= 1
        val_chars += len(docs[cut])
    return docs[:cut], docs[cut:]


# -- train/validation overlap -------------------------------------------------------------------------
def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    ids = ids.astype(np.uint64)
    count = len(ids) - n + 1
    hashes = np.zeros(count, dtype=np.uint64)
    for k in range(n):  # polynomial hash, wrapping modulo 2**64
        hashes = hashes * np.uint64(1_000_003) + ids[k:k + count]
    return hashes


def ngram_overlap(train_ids: Sequence[int] | np.ndarray, val_ids: Sequence[int] | np.ndarray,
                  n: int = NGRAM_N) -> float:
    """Share of the validation split's n-token sequences that also occur somewhere in train (0..1).

    High values mean validation text repeats training text, so validation loss will look too good."""
    train = np.asarray(train_ids)
    val = np.asarray(val_ids)
    if n < 1:
        raise UserInputError(f"n-gram length must be >= 1, not {n}")
    if len(val) < n or len(train) < n:
        return 0.0
    known = np.sort(_ngram_hashes(train, n))
    wanted = _ngram_hashes(val, n)
    found = known[np.minimum(np.searchsorted(known, wanted), len(known) - 1)] == wanted
    return float(found.mean())


# -- preparing a data folder --------------------------------------------------------------------------
@dataclass
class PrepareReport:
    """What `prepare_dataset` wrote and found."""

    out_dir: Path
    meta: dict
    clean: CleanReport
    source: LoadedSource

    @property
    def train_tokens(self) -> int:
        return self.meta["train_tokens"]

    @property
    def val_tokens(self) -> int:
        return self.meta["val_tokens"]

    def summary(self) -> str:
        return format_summary(self.meta, self.clean)


def _fingerprint(documents: Sequence[str], config: CleanConfig, val_fraction: float) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT_VERSION, "cleaning": config.to_dict(), "val_fraction": val_fraction,
                              "tokenizer": "gpt2"}, sort_keys=True).encode())
    for doc in documents:
        digest.update(len(doc).to_bytes(8, "little"))
        digest.update(doc.encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()


def _check_out_dir(out_dir: Path, fingerprint: str, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"{out_dir} exists and is not a folder")
    if overwrite or not out_dir.exists():
        return
    meta_path = out_dir / META_FILE
    if meta_path.exists():
        try:
            existing = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            existing = {}
        if not isinstance(existing, dict) or existing.get("fingerprint") != fingerprint:
            source = existing.get("source", "unknown") if isinstance(existing, dict) else "unknown"
            raise UserInputError(f"{out_dir} already holds a different dataset ({source}); "
                                 "choose another folder or pass --overwrite")
    elif any(out_dir.iterdir()):
        raise UserInputError(f"{out_dir} is not empty and holds no prepared dataset; choose an empty folder "
                             "or pass --overwrite")


def prepare_dataset(
    source: Sequence[str | os.PathLike] | str | os.PathLike | LoadedSource,
    out_dir: str | os.PathLike,
    *,
    clean_config: CleanConfig | None = None,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    progress: Progress | None = None,
    column: str | None = None,
    field: str | None = None,
    split_on_blank_lines: bool = False,
    encoding: str = AUTO_ENCODING,
    min_context_length: int = MIN_CONTEXT_LENGTH,
    num_threads: int | None = None,
) -> PrepareReport:
    """Load (unless given a LoadedSource), clean, split, tokenize and write `train.bin`, `val.bin`, `meta.json`.

    Each split must hold at least `min_context_length + 1` tokens (one window). `progress(fraction, message)`
    is called as the work advances. A folder that holds a different dataset is refused unless `overwrite`.
    `encoding` ("auto" or a codec name) is how text files are read; meta.json records it and what each file
    was read as."""
    config = clean_config or CleanConfig()
    if not 0.0 < val_fraction < 1.0:
        raise UserInputError(f"the validation fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    out_dir = Path(out_dir)
    say(progress, 0.0, "loading")
    if isinstance(source, LoadedSource):
        loaded = source
    else:
        loaded = load_documents(source, column=column, field=field, split_on_blank_lines=split_on_blank_lines,
                                encoding=encoding)
    fingerprint = _fingerprint(loaded.documents, config, val_fraction)
    _check_out_dir(out_dir, fingerprint, overwrite)
    report = clean_documents(loaded.documents, config, count_tokens=False, progress=scaled(progress, 0.05, 0.4))
    if not report.documents:
        dropped = ", ".join(f"{k}: {v}" for k, v in report.documents_by_rule.items() if k.startswith("drop") and v)
        raise UserInputError(f"no text is left after cleaning ({dropped}); relax the cleaning options")
    train_docs, val_docs = split_documents(report.documents, val_fraction)
    train_ids = tokenize_documents(train_docs, num_threads=num_threads, progress=scaled(progress, 0.4, 0.75))
    val_ids = tokenize_documents(val_docs, num_threads=num_threads, progress=scaled(progress, 0.75, 0.85))
    need = min_context_length + 1
    for name, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < need:
            raise UserInputError(f"the {name} split has only {len(ids)} tokens; at least {need} are needed for one "
                                 f"window of {min_context_length} tokens: add more text"
                                 + (" or raise the validation fraction" if name == "validation" else
                                    " or lower the validation fraction"))
    say(progress, 0.85, "measuring train/validation overlap")
    overlap = ngram_overlap(train_ids, val_ids, NGRAM_N)
    after_tokens = len(train_ids) + len(val_ids) - (len(train_docs) - 1) - (len(val_docs) - 1)
    report.after["tokens"] = after_tokens
    report.before["tokens"] = (count_tokens(loaded.documents, num_threads=num_threads) if report.changed
                               else after_tokens)
    train_bytes = sum(len(d.encode("utf-8")) for d in train_docs)
    val_bytes = sum(len(d.encode("utf-8")) for d in val_docs)
    meta = {
        "format_version": FORMAT_VERSION,
        "source": loaded.source,
        "inputs": loaded.inputs,
        "column": loaded.chosen_column,
        "encoding": loaded.encoding,
        "encodings": loaded.encodings,
        "notes": loaded.notes + report.notes,
        "documents": len(report.documents),
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "split": "documents" if len(report.documents) > 1 else "contiguous",
        "val_fraction": val_fraction,
        "val_share": val_bytes / max(1, train_bytes + val_bytes),
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "train_bytes": train_bytes,
        "val_bytes": val_bytes,
        "tokenizer": "gpt2",
        "vocab_size": GPT2_VOCAB_SIZE,
        "eot_id": GPT2_EOT_ID,
        "dtype": "uint16",
        "separator": "<|endoftext|> between documents",
        "val_ngram_overlap": overlap,
        "ngram_n": NGRAM_N,
        "cleaning": config.to_dict(),
        "stats_before": report.before,
        "stats_after": report.after,
        "removed_by_rule": report.removed_by_rule,
        "documents_by_rule": report.documents_by_rule,
        "fingerprint": fingerprint,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    say(progress, 0.9, "writing token files")
    write_data_folder(out_dir, train_ids, val_ids, meta)
    say(progress, 1.0, "done")
    return PrepareReport(out_dir, meta, report, loaded)


def _fmt(value: float | int) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"


def format_summary(meta: dict, clean: CleanReport | None = None) -> str:
    """A plain-text statistics block for the command line (and anything else that shows text)."""
    before, after = meta["stats_before"], meta["stats_after"]
    lines = [f"source: {meta['source']}" + (f"  (column {meta['column']!r})" if meta.get("column") else "")]
    if meta.get("encodings"):
        lines.append(f"encoding ({meta.get('encoding', AUTO_ENCODING)}): "
                     + ", ".join(f"{name} {used}" for name, used in meta["encodings"].items()))
    lines += [f"note: {note}" for note in meta.get("notes", [])]
    lines.append(f"{'':12}{'before':>14}{'after':>14}")
    for key in ("documents", "characters", "words", "bytes", "tokens"):
        lines.append(f"{key:12}{_fmt(before.get(key, 0)):>14}{_fmt(after.get(key, 0)):>14}")
    changes = [f"  {rule:28}{meta['documents_by_rule'][rule]:>10,} documents{-chars:>+14,} characters"
               for rule, chars in meta["removed_by_rule"].items()]
    if changes:
        lines.append("cleaning (per rule):")
        lines += changes
    for before_text, after_text in (clean.examples if clean else [])[:2]:
        lines.append(f"  example before: {before_text[:120]!r}")
        lines.append(f"  example after:  {after_text[:120]!r}")
    lines.append(f"split ({meta['split']}): train {meta['train_tokens']:,} tokens / {meta['train_documents']:,} "
                 f"documents, validation {meta['val_tokens']:,} tokens / {meta['val_documents']:,} documents "
                 f"({meta['val_share']:.1%} of the bytes)")
    lines.append(f"validation {meta['ngram_n']}-grams also in train: {meta['val_ngram_overlap']:.1%}")
    return "\n".join(lines)
