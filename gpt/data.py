"""The data pipeline: documents in, token files and batches out.

    files / Hugging Face dataset --load_documents() / load_hf_dataset()--> LoadedSource (one str per document)
      --clean_documents(docs, CleanConfig)--> CleanReport (cleaned documents + before/after statistics)
      --split_documents(docs, val_fraction)--> train / validation, by whole documents (contiguous blocks
                                              when there is a single document), validation from the end
      --prepare_dataset(...)--> out_dir/train.bin, val.bin (uint16 GPT-2 ids, <|endoftext|> between
                                documents) and meta.json
      --load_split()--> np.memmap --get_batch()--> random (x, y) windows for training
                                  --iter_eval_batches()--> non-overlapping windows covering a split

Token files always hold GPT-2 ids; a run with a compact vocabulary maps them to model ids with
`token_id_map(tokenizer)` (pass it as `id_map` to the batch functions).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from gpt.errors import UserInputError
from gpt.tokenizer import GPT2_EOT_ID, GPT2_VOCAB_SIZE, Tokenizer, gpt2_tokenizer

if TYPE_CHECKING:  # torch is imported where batches are made, so `prepare` starts quickly
    import torch


class _DropUnidecodeNotice(logging.Filter):
    """clean-text logs a warning about the missing GPL `unidecode` package through the root logger on import."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "unidecode" not in record.getMessage()


_notice_filter = _DropUnidecodeNotice()
logging.getLogger().addFilter(_notice_filter)
try:
    from cleantext import clean as cleantext_clean
finally:
    logging.getLogger().removeFilter(_notice_filter)

Progress = Callable[[float, str], None]

TEXT_SUFFIXES = {".txt": "text", ".md": "text"}
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
SUPPORTED_SUFFIXES = {**TEXT_SUFFIXES, **TABLE_SUFFIXES}
FORMAT_VERSION = 1
NGRAM_N = 8
MIN_CONTEXT_LENGTH = 8
PREVIEW_ROWS = 20
_CHUNK_CHARS = 1 << 16  # long documents are cut into ~64 KB pieces so tiktoken's threads share them
_BATCH_CHARS = 1 << 22  # characters handed to tiktoken per call (bounds memory, paces the progress bar)
# Cut points where GPT-2's pre-tokenizer always starts a new piece, so cutting there changes no token:
# before a single space between two non-space characters, or after a newline that follows a non-space
# character and precedes one.
_SAFE_CUT = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")


def _say(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(1.0, max(0.0, fraction)), message)


def _scaled(progress: Progress | None, low: float, high: float) -> Progress | None:
    """A progress callback for one stage that reports into the [low, high] part of the whole."""
    if progress is None:
        return None
    return lambda fraction, message: _say(progress, low + (high - low) * fraction, message)


# == loading ============================================================================================
@dataclass
class LoadedSource:
    """Documents read from files or a Hugging Face dataset, with what a person needs to check them."""

    documents: list[str]
    source: str
    columns: list[str] | None = None
    chosen_column: str | None = None
    preview: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)


def _decode(path: Path, data: bytes) -> tuple[str, str | None]:
    """Text of a file: UTF-8 if it is, else the detected encoding (returned so it can be reported)."""
    if not data:
        raise UserInputError(f"{path} is empty")
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding), None if encoding == "utf-8-sig" else encoding
            except UnicodeDecodeError as error:
                raise UserInputError(f"{path} starts with a {encoding} byte-order mark but is not valid {encoding}: "
                                     f"{error.reason} at byte {error.start}") from None
    if b"\x00" in data[:65536]:
        raise UserInputError(f"{path} looks like a binary file (it contains NUL bytes), not text")
    try:
        text, encoding = data.decode("utf-8"), None
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        matches = from_bytes(data)
        best = matches.best()
        if best is None:
            raise UserInputError(f"{path} is neither UTF-8 nor any text encoding that could be detected; "
                                 "save it as UTF-8 and try again") from None
        text, encoding = str(best), best.encoding
        # Western text often fits several single-byte code pages equally well; prefer the common cp1252.
        tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
        if encoding != "cp1252" and any("cp1252" in m.could_be_from_charset for m in tied):
            try:
                text, encoding = data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                pass
    controls = sum(1 for ch in text[:65536] if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v")
    if controls > 0.01 * min(len(text), 65536):
        raise UserInputError(f"{path} looks like a binary file (it is full of control characters), not text")
    return text, encoding


def _read_text(path: Path, notes: list[str]) -> str:
    if not path.exists():
        raise UserInputError(f"{path} does not exist")
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; give the files inside it")
    text, encoding = _decode(path, path.read_bytes())
    if encoding is not None:
        notes.append(f"{path.name}: not UTF-8, decoded as {encoding}")
    if not text.strip():
        raise UserInputError(f"{path} holds only whitespace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_table(path: Path, kind: str, notes: list[str]) -> pd.DataFrame:
    """A table read by pandas; errors become messages that name the file (and the line for JSONL)."""
    if kind == "parquet":
        if not path.exists():
            raise UserInputError(f"{path} does not exist")
        if path.stat().st_size == 0:
            raise UserInputError(f"{path} is empty")
        try:
            return pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise UserInputError(f"{path} is not a readable Parquet file: {error}") from None
    text = _read_text(path, notes)
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(io.StringIO(text), sep="," if kind == "csv" else "\t", keep_default_na=False,
                               dtype=str)
        if kind == "jsonl":
            return _flatten(pd.read_json(io.StringIO(text), lines=True, dtype=False))
        try:
            return _flatten(pd.read_json(io.StringIO(text), dtype=False))
        except ValueError:
            return _flatten(pd.read_json(io.StringIO(text), lines=True, dtype=False))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        if kind in ("jsonl", "json"):
            for number, line in enumerate(text.split("\n"), start=1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as line_error:
                        if kind == "jsonl":
                            raise UserInputError(f"{path} line {number} is not valid JSON: {line_error.msg} "
                                                 f"(column {line_error.colno})") from None
                        break
        kind_name = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSON Lines", "json": "JSON"}[kind]
        raise UserInputError(f"{path} is not valid {kind_name}: {str(error).splitlines()[0]}") from None


def _flatten(frame: pd.DataFrame) -> pd.DataFrame:
    """Nested JSON objects become dotted columns ("meta.title"); {"data": [records]} becomes the records."""
    if len(frame.columns) == 1 and len(frame) and isinstance(frame.iloc[0, 0], dict):
        return pd.json_normalize(frame.iloc[:, 0].tolist())
    if any(isinstance(value, dict) for value in frame.head(100).to_numpy().ravel()):
        return pd.json_normalize(frame.to_dict("records"))
    return frame


def _text_columns(frame: pd.DataFrame) -> list[str]:
    """Columns holding strings (pandas' string dtype or objects whose values are str)."""
    found = []
    for name in frame.columns:
        values = frame[name].dropna()
        if len(values) and (pd.api.types.is_string_dtype(frame[name]) or isinstance(values.iloc[0], str)):
            found.append(name)
    return found


def _column_documents(frame: pd.DataFrame, wanted: str | None, path: Path) -> tuple[list[str], str]:
    frame.columns = [str(name) for name in frame.columns]
    columns = list(frame.columns)
    if wanted is not None:
        if wanted not in columns:
            raise UserInputError(f"{path} has no column {wanted!r}; its columns are: {', '.join(columns) or 'none'}")
        chosen = wanted
    else:
        candidates = _text_columns(frame)
        if not candidates:
            raise UserInputError(f"{path} has no column of text; its columns are: {', '.join(columns) or 'none'}")
        chosen = max(candidates, key=lambda name: frame[name].dropna().astype(str).str.len().sum())
    values = frame[chosen].dropna()
    documents = [value if isinstance(value, str) else str(value) for value in values]
    return [doc for doc in documents if doc.strip()], chosen


def load_documents(
    paths: Sequence[str | os.PathLike],
    *,
    column: str | None = None,
    field: str | None = None,
    split_on_blank_lines: bool = False,
) -> LoadedSource:
    """Read documents from .txt/.md (one per file, or one per blank-line-separated block), .csv/.tsv/.parquet
    (a column; default: the column with the most text), .jsonl/.json (a field; same default).

    Raises UserInputError naming the file for anything a person can fix."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    if not paths:
        raise UserInputError("no input files given")
    wanted = column if column is not None else field
    documents: list[str] = []
    notes: list[str] = []
    columns: list[str] | None = None
    chosen: str | None = None
    preview: pd.DataFrame | None = None
    text_rows: list[dict] = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise UserInputError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
                                 f"use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
        if suffix in TEXT_SUFFIXES:
            text = _read_text(path, notes)
            pieces = re.split(r"\n[ \t]*\n", text) if split_on_blank_lines else [text]
            found = [piece.strip("\n") for piece in pieces if piece.strip()]
            text_rows.extend({"file": path.name, "characters": len(doc), "text": doc[:300]}
                             for doc in found[:PREVIEW_ROWS])
        else:
            frame = _read_table(path, TABLE_SUFFIXES[suffix], notes)
            if frame.empty:
                raise UserInputError(f"{path} holds no rows")
            found, file_column = _column_documents(frame, wanted, path)
            if chosen is None:
                columns, chosen, preview = list(frame.columns), file_column, frame.head(PREVIEW_ROWS)
            elif file_column != chosen:
                notes.append(f"{path.name}: used column {file_column!r}")
        if not found:
            raise UserInputError(f"{path} holds no text")
        documents.extend(found)
    if preview is None:
        preview = pd.DataFrame(text_rows[:PREVIEW_ROWS], columns=["file", "characters", "text"])
    names = [p.name for p in paths]
    source = names[0] if len(names) == 1 else f"{len(names)} files: " + ", ".join(names[:5]) + (
        ", ..." if len(names) > 5 else "")
    return LoadedSource(documents, source, columns, chosen, preview, notes, [str(p) for p in paths])


def load_hf_dataset(name: str, config: str | None = None, split: str = "train",
                    column: str | None = None) -> LoadedSource:
    """A Hugging Face Hub dataset through `datasets.load_dataset` (needs network unless cached).

    Offline (HF_HUB_OFFLINE=1) this fails at once with a clear message."""
    if not name or not name.strip():
        raise UserInputError("give a Hugging Face dataset name such as 'karpathy/tiny_shakespeare'")
    import datasets
    from huggingface_hub import constants

    label = name + (f" ({config})" if config else "") + f" split {split!r}"
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # network, missing dataset, bad config or split: all fixable by the person
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise UserInputError(f"could not load Hugging Face dataset {label}{offline}: {message}") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise UserInputError(f"{label}: name one split, e.g. {', '.join(dataset.keys())}")
    frame_head = dataset.select(range(min(PREVIEW_ROWS, len(dataset)))).to_pandas()
    columns = [str(c) for c in dataset.column_names]
    if column is None:
        text_columns = [c for c, feature in dataset.features.items()
                        if getattr(feature, "dtype", None) in ("string", "large_string")]
        if not text_columns:
            raise UserInputError(f"{label} has no text column; its columns are: {', '.join(columns)}")
        sample = dataset.select(range(min(1000, len(dataset))))
        column = max(text_columns, key=lambda c: sum(len(v or "") for v in sample[c]))
    elif column not in columns:
        raise UserInputError(f"{label} has no column {column!r}; its columns are: {', '.join(columns)}")
    documents = [str(v) for v in dataset[column] if v is not None and str(v).strip()]
    if not documents:
        raise UserInputError(f"{label} column {column!r} holds no text")
    return LoadedSource(documents, f"hf:{label}", columns, column, frame_head, [], [f"hf:{name}"])


# == cleaning ===========================================================================================
REPLACE_MODES = ("keep", "replace", "drop")
_PLACEHOLDERS = {"urls": "<URL>", "emails": "<EMAIL>", "phone_numbers": "<PHONE>", "numbers": "<NUMBER>"}
_CLEANTEXT_FLAGS = {
    "urls": ("no_urls", "replace_with_url"),
    "emails": ("no_emails", "replace_with_email"),
    "phone_numbers": ("no_phone_numbers", "replace_with_phone_number"),
    "numbers": ("no_numbers", "replace_with_number"),
}
_MAY_NEED_FTFY = re.compile(r"[^\t\n\x20-\x7e]|&")
_CLEANTEXT_OFF = {"fix_unicode": False, "to_ascii": False, "lower": False, "normalize_whitespace": False}


@dataclass
class CleanConfig:
    """Cleaning rules. The defaults only repair broken Unicode, tidy whitespace (keeping line breaks and
    indentation) and drop exact duplicate documents: Korean, accents, emoji and line structure survive.

    urls / emails / phone_numbers / numbers: "keep", "replace" (with <URL>, <EMAIL>, <PHONE>, <NUMBER>)
    or "drop". remove_patterns: regular expressions whose matches are deleted."""

    fix_unicode: bool = True
    strip_html: bool = False
    urls: str = "keep"
    emails: str = "keep"
    phone_numbers: str = "keep"
    numbers: str = "keep"
    remove_line_breaks: bool = False
    collapse_whitespace: bool = True
    lowercase: bool = False
    to_ascii: bool = False
    min_chars: int = 0
    deduplicate: bool = True
    remove_patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _PLACEHOLDERS:
            if getattr(self, name) not in REPLACE_MODES:
                raise UserInputError(f"cleaning option {name} must be one of {', '.join(REPLACE_MODES)}, "
                                     f"not {getattr(self, name)!r}")
        if not isinstance(self.min_chars, int) or self.min_chars < 0:
            raise UserInputError(f"min_chars must be a whole number >= 0, not {self.min_chars!r}")
        if isinstance(self.remove_patterns, str):
            self.remove_patterns = (self.remove_patterns,)
        self.remove_patterns = tuple(p for p in self.remove_patterns if p)
        self._compiled = [compile_pattern(p) for p in self.remove_patterns]

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["remove_patterns"] = list(self.remove_patterns)
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> CleanConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data or {}) - known
        if unknown:
            raise UserInputError(f"unknown cleaning options: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if k == "remove_patterns" else v for k, v in (data or {}).items()})


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UserInputError(f"invalid regular expression {pattern!r}: {error}") from None


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</p\s*>", "\n", text)
    text = re.sub(r"<!--.*?-->|</?[A-Za-z][^<>]*>", "", text, flags=re.S)
    return html.unescape(text)


def _collapse_whitespace(text: str) -> str:
    """Trailing spaces off every line, inner runs of spaces/tabs to one space (indentation kept),
    at most one blank line in a row, no blank lines at the start or end."""
    text = text.replace("\u00a0", " ")
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)
    text = re.sub(r"(?<=\S)[ \t]{2,}", " ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def _fix_unicode(text: str) -> str:
    """ftfy's repairs (mojibake, HTML entities, control characters, NFC) on the lines that can need them.

    ftfy is what clean-text uses; it is called directly because clean-text first runs text through
    "unicode-escape", which turns a literal backslash-n in the text into a line break. ftfy works line by
    line anyway; skipping the plain-ASCII lines without '&' (which it never changes) makes it ~10x faster
    on English text."""
    import ftfy

    if not _MAY_NEED_FTFY.search(text):
        return text
    text = text.replace("\r\n", "\n")
    return "\n".join(ftfy.fix_text(line) if _MAY_NEED_FTFY.search(line) else line for line in text.split("\n"))


def _rules(config: CleanConfig) -> list[tuple[str, Callable[[str], str]]]:
    """The text rules a config turns on, in the order they run."""
    rules: list[tuple[str, Callable[[str], str]]] = []
    if config.fix_unicode:
        rules.append(("fix_unicode", _fix_unicode))
    if config.strip_html:
        rules.append(("strip_html", _strip_html))
    for pattern, compiled in zip(config.remove_patterns, config._compiled, strict=True):
        rules.append((f"pattern {pattern}", lambda t, c=compiled: c.sub("", t)))
    for name, (flag, replace_flag) in _CLEANTEXT_FLAGS.items():
        mode = getattr(config, name)
        if mode != "keep":
            kwargs = {**_CLEANTEXT_OFF, flag: True, replace_flag: _PLACEHOLDERS[name] if mode == "replace" else ""}
            rules.append((name, lambda t, kw=kwargs: cleantext_clean(t, **kw)))
    if config.to_ascii:
        rules.append(("to_ascii", lambda t: cleantext_clean(t, **{**_CLEANTEXT_OFF, "to_ascii": True})))
    if config.lowercase:
        rules.append(("lowercase", str.lower))
    if config.remove_line_breaks:
        rules.append(("remove_line_breaks", lambda t: re.sub(r"[ \t]*\n+[ \t]*", " ", t)))
    if config.collapse_whitespace:
        rules.append(("collapse_whitespace", _collapse_whitespace))
    return rules


def text_stats(documents: Sequence[str], tokens: bool = True, num_threads: int | None = None) -> dict:
    """Documents, characters, words, UTF-8 bytes and (unless tokens=False) GPT-2 tokens of a list of texts."""
    stats = {
        "documents": len(documents),
        "characters": sum(len(d) for d in documents),
        "words": sum(len(d.split()) for d in documents),
        "bytes": sum(len(d.encode("utf-8")) for d in documents),
    }
    if tokens:
        stats["tokens"] = count_tokens(documents, num_threads)
    return stats


@dataclass
class CleanReport:
    """Cleaned documents with what cleaning did: statistics before/after, characters removed and documents
    touched by each rule, and a few (before, after) examples of changed documents."""

    documents: list[str]
    before: dict
    after: dict
    removed_by_rule: dict[str, int]
    documents_by_rule: dict[str, int]
    examples: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(self.documents_by_rule.values())


def _example(before: str, after: str, width: int = 240) -> tuple[str, str]:
    """The region around the first difference of two texts, so a long document still shows the change."""
    pairs = enumerate(zip(before, after, strict=False))
    start = next((i for i, (a, b) in pairs if a != b), min(len(before), len(after)))
    start = max(0, start - width // 3)

    def clip(text: str) -> str:
        return ("…" if start else "") + text[start:start + width] + ("…" if len(text) > start + width else "")

    return clip(before), clip(after)


def clean_documents(documents: Sequence[str], config: CleanConfig | None = None, *, count_tokens: bool = True,
                    progress: Progress | None = None, max_examples: int = 3) -> CleanReport:
    """Apply the config's rules to every document; drop empty, too-short and duplicate documents."""
    config = config or CleanConfig()
    originals = list(documents)
    docs = list(originals)
    removed: dict[str, int] = {}
    touched: dict[str, int] = {}
    rules = _rules(config)
    total_chars = max(1, sum(len(d) for d in docs)) * max(1, len(rules))
    done = 0
    for name, rule in rules:
        _say(progress, done / total_chars, f"cleaning: {name}")
        chars = changed = 0
        for i, doc in enumerate(docs):
            new = rule(doc)
            if new != doc:
                changed += 1
                chars += len(doc) - len(new)
                docs[i] = new
            done += len(doc)
        removed[name], touched[name] = chars, changed
    kept_docs: list[str] = []
    kept_index: list[int] = []
    seen: set[bytes] = set()
    drops = {"empty": [0, 0], "min_chars": [0, 0], "deduplicate": [0, 0]}
    for i, doc in enumerate(docs):
        reason = None
        if not doc.strip():
            reason = "empty"
        elif len(doc) < config.min_chars:
            reason = "min_chars"
        elif config.deduplicate:
            key = hashlib.blake2b(doc.encode("utf-8"), digest_size=16).digest()
            if key in seen:
                reason = "deduplicate"
            seen.add(key)
        if reason is None:
            kept_docs.append(doc)
            kept_index.append(i)
        else:
            drops[reason][0] += 1
            drops[reason][1] += len(doc)
    for reason, (count, chars) in drops.items():
        if count or (reason == "min_chars" and config.min_chars) or (reason == "deduplicate" and config.deduplicate):
            touched[f"drop {reason}"] = count
            removed[f"drop {reason}"] = chars
    examples = [_example(originals[i], docs[i]) for i in kept_index if originals[i] != docs[i]][:max_examples]
    notes = []
    if config.to_ascii:
        notes.append("to_ascii dropped every character without an ASCII form (Korean, Chinese, ...; emoji are kept)")
    changed = any(touched.values())
    before = text_stats(originals, count_tokens)
    after = text_stats(kept_docs, count_tokens) if changed else dict(before)
    _say(progress, 1.0, "cleaning done")
    return CleanReport(kept_docs, before, after, removed, touched, examples, notes)


# == splitting ==========================================================================================
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


# == tokenizing =========================================================================================
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
        parts.append(np.array(ids_of_batch, dtype=np.uint16))
        done += batch_chars
        batch.clear()
        ends.clear()
        batch_chars = 0
        _say(progress, done / total, "tokenizing")

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
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def count_tokens(documents: Sequence[str], num_threads: int | None = None) -> int:
    """GPT-2 tokens of the documents (without separators)."""
    tokenizer = gpt2_tokenizer()
    pieces = [piece for doc in documents for piece in chunk_text(doc)]
    total = 0
    for start in range(0, len(pieces), 256):
        total += sum(len(ids) for ids in tokenizer.encode_batch(pieces[start:start + 256], num_threads=num_threads))
    return total


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


# == preparing a data folder ============================================================================
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


_OUTPUT_FILES = ("train.bin", "val.bin", "meta.json")


def _check_out_dir(out_dir: Path, fingerprint: str, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"{out_dir} exists and is not a folder")
    if overwrite or not out_dir.exists():
        return
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        try:
            existing = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            existing = {}
        if existing.get("fingerprint") != fingerprint:
            raise UserInputError(f"{out_dir} already holds a different dataset ({existing.get('source', 'unknown')}); "
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
    min_context_length: int = MIN_CONTEXT_LENGTH,
    num_threads: int | None = None,
) -> PrepareReport:
    """Load (unless given a LoadedSource), clean, split, tokenize and write `train.bin`, `val.bin`, `meta.json`.

    Each split must hold at least `min_context_length + 1` tokens (one window). `progress(fraction, message)`
    is called as the work advances. A folder that holds a different dataset is refused unless `overwrite`."""
    config = clean_config or CleanConfig()
    if not 0.0 < val_fraction < 1.0:
        raise UserInputError(f"the validation fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    out_dir = Path(out_dir)
    _say(progress, 0.0, "loading")
    if isinstance(source, LoadedSource):
        loaded = source
    else:
        loaded = load_documents(source, column=column, field=field, split_on_blank_lines=split_on_blank_lines)
    fingerprint = _fingerprint(loaded.documents, config, val_fraction)
    _check_out_dir(out_dir, fingerprint, overwrite)
    report = clean_documents(loaded.documents, config, count_tokens=False, progress=_scaled(progress, 0.05, 0.4))
    if not report.documents:
        dropped = ", ".join(f"{k}: {v}" for k, v in report.documents_by_rule.items() if k.startswith("drop") and v)
        raise UserInputError(f"no text is left after cleaning ({dropped}); relax the cleaning options")
    train_docs, val_docs = split_documents(report.documents, val_fraction)
    train_ids = tokenize_documents(train_docs, num_threads=num_threads, progress=_scaled(progress, 0.4, 0.75))
    val_ids = tokenize_documents(val_docs, num_threads=num_threads, progress=_scaled(progress, 0.75, 0.85))
    need = min_context_length + 1
    for name, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < need:
            raise UserInputError(f"the {name} split has only {len(ids)} tokens; at least {need} are needed for one "
                                 f"window of {min_context_length} tokens: add more text"
                                 + (" or raise the validation fraction" if name == "validation" else
                                    " or lower the validation fraction"))
    _say(progress, 0.85, "measuring train/validation overlap")
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
    _say(progress, 0.9, "writing token files")
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = {name: out_dir / f".{name}.tmp" for name in _OUTPUT_FILES}
    train_ids.tofile(staged["train.bin"])
    val_ids.tofile(staged["val.bin"])
    staged["meta.json"].write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "meta.json").unlink(missing_ok=True)  # a folder with meta.json is complete: it goes in last
    for name in _OUTPUT_FILES:
        os.replace(staged[name], out_dir / name)
    _say(progress, 1.0, "done")
    return PrepareReport(out_dir, meta, report, loaded)


def _fmt(value: float | int) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"


def format_summary(meta: dict, clean: CleanReport | None = None) -> str:
    """A plain-text statistics block for the command line (and anything else that shows text)."""
    before, after = meta["stats_before"], meta["stats_after"]
    lines = [f"source: {meta['source']}" + (f"  (column {meta['column']!r})" if meta.get("column") else "")]
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


# == reading a data folder ==============================================================================
def read_meta(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise UserInputError(f"{data_dir} holds no prepared dataset (no meta.json); "
                             f"run: python -m gpt prepare INPUT --out {data_dir}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path} is damaged: {error}") from None


def load_split(data_dir: str | os.PathLike, split: str) -> np.memmap:
    """The token ids of "train" or "val", memory-mapped (uint16 GPT-2 ids)."""
    if split not in ("train", "val"):
        raise UserInputError(f"split must be 'train' or 'val', not {split!r}")
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise UserInputError(f"{path} does not exist; run: python -m gpt prepare INPUT --out {data_dir}")
    if path.stat().st_size < 4 or path.stat().st_size % 2:
        raise UserInputError(f"{path} is empty or damaged; prepare the dataset again")
    return np.memmap(path, dtype=np.uint16, mode="r")


def split_token_counts(data_dir: str | os.PathLike, split: str = "train") -> np.ndarray:
    """Occurrences of every GPT-2 id (length 50,257) in a split's token file; cached per file version."""
    path = Path(data_dir) / f"{split}.bin"
    modified_ns = path.stat().st_mtime_ns if path.exists() else 0
    return _split_token_counts(str(Path(data_dir)), split, modified_ns)


@functools.lru_cache(maxsize=4)
def _split_token_counts(data_dir: str, split: str, modified_ns: int) -> np.ndarray:
    del modified_ns  # only part of the cache key
    return np.bincount(np.asarray(load_split(data_dir, split)), minlength=GPT2_VOCAB_SIZE)


def token_id_map(tokenizer: Tokenizer) -> np.ndarray | None:
    """GPT-2 id -> model id lookup table for a compact vocabulary (None for full GPT-2); ids outside it
    map to <|endoftext|>."""
    if not tokenizer.is_compact:
        return None
    table = np.full(GPT2_VOCAB_SIZE, tokenizer.eot_id, dtype=np.int64)
    table[np.asarray(tokenizer.kept_gpt2_ids)] = np.arange(tokenizer.vocab_size)
    return table


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
    windows = np.asarray(tokens[starts[:, None] + np.arange(context_length + 1)], dtype=np.int64)
    if id_map is not None:
        windows = id_map[windows]
    x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
    return _to_device(x, device), _to_device(y, device)


def eval_window_count(num_tokens: int, context_length: int) -> int:
    """How many windows `iter_eval_batches` yields for a split of `num_tokens` tokens."""
    return math.ceil(max(0, num_tokens - 1) / context_length)


def iter_eval_batches(tokens: np.ndarray, context_length: int, batch_size: int, *,
                      device: str | torch.device = "cpu", id_map: np.ndarray | None = None,
                      max_windows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering the split, in order: window i has x = tokens[iT:iT+T] and
    y = tokens[iT+1:iT+T+1], so every token after the first is a target exactly once.

    The last window is usually shorter: its x is padded with <|endoftext|> and its y with -1 (the
    loss's ignore_index), so count targets as (y != -1). `max_windows` stops early (a quick estimate)."""
    import torch

    if len(tokens) < 2:
        raise UserInputError("the split needs at least 2 tokens to evaluate")
    if context_length < 1 or batch_size < 1:
        raise UserInputError("context_length and batch_size must be >= 1")
    windows = eval_window_count(len(tokens), context_length)
    if max_windows is not None:
        windows = min(windows, max_windows)
    pad = int(id_map[GPT2_EOT_ID]) if id_map is not None else GPT2_EOT_ID
    for first in range(0, windows, batch_size):
        rows = range(first, min(first + batch_size, windows))
        x = np.full((len(rows), context_length), pad, dtype=np.int64)
        y = np.full((len(rows), context_length), -1, dtype=np.int64)
        for row, window in enumerate(rows):
            start = window * context_length
            chunk = np.asarray(tokens[start:start + context_length + 1], dtype=np.int64)
            if id_map is not None:
                chunk = id_map[chunk]
            x[row, :len(chunk) - 1] = chunk[:-1]
            y[row, :len(chunk) - 1] = chunk[1:]
        yield _to_device(torch.from_numpy(x), device), _to_device(torch.from_numpy(y), device)


__all__ = [
    "CleanConfig", "CleanReport", "LoadedSource", "PrepareReport", "chunk_text", "clean_documents", "compile_pattern",
    "count_tokens", "eval_window_count", "format_summary", "get_batch", "iter_eval_batches", "load_documents",
    "load_hf_dataset", "load_split", "ngram_overlap", "prepare_dataset", "read_meta", "split_documents",
    "text_stats", "token_id_map", "tokenize_documents",
]
