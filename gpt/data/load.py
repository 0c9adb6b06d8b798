"""Sources to documents: files (.txt .md .csv .tsv .jsonl .json .parquet) or a Hugging Face dataset.

Each source becomes a `LoadedSource`: one string per document, the columns of a table and the one chosen,
a pandas preview, notes for the person, and the text encoding decided for each file.

Encoding policy (`decode_text`): a byte-order mark decides first; then UTF-8; otherwise charset-normalizer
guesses. Single-byte code pages often fit the same bytes equally well (a latin-1 "Café crème" also reads
as cp1250's "Café crčme"), so when the Western reading (cp1252, a superset of latin-1's letters) decodes
cleanly and the detector's pick is no more coherent, cp1252 wins. The encoding used is reported; a person
can name another (`encoding=`), and bytes that do not decode in it are an error, never replaced silently.

Messages name files by `names` (default: the paths as given): the app passes an upload's own file name,
so a person never sees a server's temporary folder.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gpt.errors import UserInputError

TEXT_SUFFIXES = {".txt": "text", ".md": "text"}
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
SUPPORTED_SUFFIXES = {**TEXT_SUFFIXES, **TABLE_SUFFIXES}
PREVIEW_ROWS = 20
AUTO_ENCODING = "auto"
# The menu the app offers (any Python codec name works): UTF-8, the Western code pages, then the others
# people meet most often.
ENCODINGS = (AUTO_ENCODING, "utf-8", "cp1252", "latin-1", "iso-8859-15", "utf-16", "cp1250", "cp1251", "cp1253",
             "cp1254", "cp1257", "koi8-r", "mac-roman", "shift_jis", "euc-kr", "gb18030", "big5")
WESTERN_ENCODING = "cp1252"
_COHERENCE_MARGIN = 0.02  # how much more coherent the detector's pick must be to beat the Western reading
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_UTF8 = ("utf-8", "utf-8-sig")
HUB_CHECK_SECONDS = 3.0
LOCAL_FILE_HINT = ("to use a local file instead, upload it in the Data tab (Source: Upload files) "
                   "or run: python -m gpt prepare FILE --out DIR")


@dataclass
class LoadedSource:
    """Documents read from files or a Hugging Face dataset, with what a person needs to check them.

    `encoding` is what was asked for ("auto" or a codec name); `encodings` says, per text or table file,
    which encoding was used to read it."""

    documents: list[str]
    source: str
    columns: list[str] | None = None
    chosen_column: str | None = None
    preview: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    encoding: str = AUTO_ENCODING
    encodings: dict[str, str] = field(default_factory=dict)


# -- text encodings -----------------------------------------------------------------------------------
def check_encoding(encoding: str, what: str) -> str:
    """`encoding` stripped, if it is "auto" or a Python text codec; else a UserInputError about `what`."""
    encoding = (encoding or AUTO_ENCODING).strip()
    if encoding.lower() == AUTO_ENCODING:
        return AUTO_ENCODING
    try:
        b"x".decode(encoding)  # LookupError for unknown names and for bytes-to-bytes codecs such as base64
    except UnicodeDecodeError:  # a text codec for which one byte is not enough (utf-16, utf-32)
        pass
    except LookupError:
        raise UserInputError(f"unknown text encoding {encoding!r} for {what}; choose auto, "
                             f"{', '.join(ENCODINGS[1:6])} or another Python codec name") from None
    return encoding


def _detect(data: bytes) -> tuple[str, str] | None:
    """(text, encoding) as charset-normalizer reads non-UTF-8 bytes, preferring the Western reading
    when it decodes cleanly and the detector's pick is no more coherent; None if nothing fits."""
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    western = from_bytes(data, cp_isolation=[WESTERN_ENCODING]).best()  # None: cp1252 fails or reads as noise
    if western is not None and (best is None or western.coherence >= best.coherence - _COHERENCE_MARGIN):
        return data.decode(WESTERN_ENCODING), WESTERN_ENCODING
    if best is None:
        return None
    return str(best), best.encoding


def decode_text(data: bytes, name: str, encoding: str = AUTO_ENCODING) -> tuple[str, str]:
    """(text, encoding used) of a file's bytes; `name` is how messages call the file.

    "auto" follows the module's policy; a named encoding must decode every byte."""
    encoding = check_encoding(encoding, name)
    if not data:
        raise UserInputError(f"{name} is empty")
    if encoding != AUTO_ENCODING:
        codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding  # a BOM is not text
        try:
            text = data.decode(codec)
        except UnicodeDecodeError as error:
            raise UserInputError(f"{name} is not valid {encoding}: {error.reason} at byte {error.start}; "
                                 "choose another encoding (or auto)") from None
        used = encoding
    else:
        text, used = _decode_auto(data, name)
    controls = sum(1 for ch in text[:65536] if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v")
    if controls > 0.01 * min(len(text), 65536):
        raise UserInputError(f"{name} looks like a binary file (it is full of control characters), not text"
                             + ("" if encoding == AUTO_ENCODING else f" when read as {encoding}"))
    return text, used


def _decode_auto(data: bytes, name: str) -> tuple[str, str]:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError as error:
                raise UserInputError(f"{name} starts with a {encoding} byte-order mark but is not valid {encoding}: "
                                     f"{error.reason} at byte {error.start}") from None
    if b"\x00" in data[:65536]:
        raise UserInputError(f"{name} looks like a binary file (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    detected = _detect(data)
    if detected is None:
        raise UserInputError(f"{name} is neither UTF-8 nor any text encoding that could be detected; choose its "
                             "encoding (Data tab: Text encoding; command line: --encoding NAME) or save it as UTF-8")
    return detected


# -- files --------------------------------------------------------------------------------------------
def _read_bytes(path: Path, name: str) -> bytes:
    if not path.exists():
        raise UserInputError(f"{name} does not exist")
    if path.is_dir():
        raise UserInputError(f"{name} is a folder; give the files inside it")
    return path.read_bytes()


def _read_text(path: Path, name: str, encoding: str) -> tuple[str, str]:
    """(text with \\n line ends, encoding used)."""
    text, used = decode_text(_read_bytes(path, name), name, encoding)
    if not text.strip():
        raise UserInputError(f"{name} holds only whitespace")
    return text.replace("\r\n", "\n").replace("\r", "\n"), used


def _read_table(path: Path, name: str, kind: str, encoding: str) -> tuple[pd.DataFrame, str | None]:
    """A table read by pandas, with the encoding of its text (None for Parquet); errors become messages
    that name the file (and the line for JSONL)."""
    if kind == "parquet":
        data = _read_bytes(path, name)
        if not data:
            raise UserInputError(f"{name} is empty")
        try:
            return pd.read_parquet(io.BytesIO(data)), None
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise UserInputError(f"{name} is not a readable Parquet file: {error}") from None
    text, used = _read_text(path, name, encoding)
    try:
        if kind in ("csv", "tsv"):
            frame = pd.read_csv(io.StringIO(text), sep="," if kind == "csv" else "\t", keep_default_na=False,
                                dtype=str)
        elif kind == "jsonl":
            frame = _flatten(pd.read_json(io.StringIO(text), lines=True, dtype=False))
        else:
            try:
                frame = _flatten(pd.read_json(io.StringIO(text), dtype=False))
            except ValueError:
                frame = _flatten(pd.read_json(io.StringIO(text), lines=True, dtype=False))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        if kind in ("jsonl", "json"):
            for number, line in enumerate(text.split("\n"), start=1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as line_error:
                        if kind == "jsonl":
                            raise UserInputError(f"{name} line {number} is not valid JSON: {line_error.msg} "
                                                 f"(column {line_error.colno})") from None
                        break
        kind_name = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSON Lines", "json": "JSON"}[kind]
        raise UserInputError(f"{name} is not valid {kind_name}: {str(error).splitlines()[0]}") from None
    return frame, used


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


def _column_documents(frame: pd.DataFrame, wanted: str | None, name: str) -> tuple[list[str], str]:
    frame.columns = [str(column) for column in frame.columns]
    columns = list(frame.columns)
    if wanted is not None:
        if wanted not in columns:
            raise UserInputError(f"{name} has no column {wanted!r}; its columns are: {', '.join(columns) or 'none'}")
        chosen = wanted
    else:
        candidates = _text_columns(frame)
        if not candidates:
            raise UserInputError(f"{name} has no column of text; its columns are: {', '.join(columns) or 'none'}")
        chosen = max(candidates, key=lambda column: frame[column].dropna().astype(str).str.len().sum())
    values = frame[chosen].dropna()
    documents = [value if isinstance(value, str) else str(value) for value in values]
    return [doc for doc in documents if doc.strip()], chosen


def load_documents(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    column: str | None = None,
    field: str | None = None,
    split_on_blank_lines: bool = False,
    encoding: str = AUTO_ENCODING,
    names: Sequence[str] | None = None,
) -> LoadedSource:
    """Read documents from .txt/.md (one per file, or one per blank-line-separated block), .csv/.tsv/.parquet
    (a column; default: the column with the most text), .jsonl/.json (a field; same default).

    `encoding`: "auto" (see the module's policy) or a codec name used for every text file. `names`: how
    messages and meta.json call the files (default: the paths as given). Raises UserInputError naming the
    file for anything a person can fix."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    if not paths:
        raise UserInputError("no input files given")
    names = [str(p) for p in paths] if names is None else [str(n) for n in names]
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} files")
    encoding = check_encoding(encoding, ", ".join(Path(n).name for n in names[:3]))
    wanted = column if column is not None else field
    documents: list[str] = []
    notes: list[str] = []
    encodings: dict[str, str] = {}
    columns: list[str] | None = None
    chosen: str | None = None
    preview: pd.DataFrame | None = None
    text_rows: list[dict] = []
    for path, name in zip(paths, names, strict=True):
        short = Path(name).name
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise UserInputError(f"{name}: unsupported file type {suffix or '(no extension)'!r}; "
                                 f"use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
        if suffix in TEXT_SUFFIXES:
            text, used = _read_text(path, name, encoding)
            pieces = re.split(r"\n[ \t]*\n", text) if split_on_blank_lines else [text]
            found = [piece.strip("\n") for piece in pieces if piece.strip()]
            text_rows.extend({"file": short, "characters": len(doc), "text": doc[:300]}
                             for doc in found[:PREVIEW_ROWS])
        else:
            frame, used = _read_table(path, name, TABLE_SUFFIXES[suffix], encoding)
            if frame.empty:
                raise UserInputError(f"{name} holds no rows")
            found, file_column = _column_documents(frame, wanted, name)
            if chosen is None:
                columns, chosen, preview = list(frame.columns), file_column, frame.head(PREVIEW_ROWS)
            elif file_column != chosen:
                notes.append(f"{short}: used column {file_column!r}")
        if used is not None:
            encodings[short] = used
            if encoding == AUTO_ENCODING and used not in _UTF8:
                notes.append(f"{short}: not UTF-8, decoded as {used}")
            elif encoding != AUTO_ENCODING and codecs.lookup(used).name != "utf-8":
                notes.append(f"{short}: decoded as {used} (as chosen)")
        if not found:
            raise UserInputError(f"{name} holds no text")
        documents.extend(found)
    if preview is None:
        preview = pd.DataFrame(text_rows[:PREVIEW_ROWS], columns=["file", "characters", "text"])
    shorts = [Path(n).name for n in names]
    source = shorts[0] if len(shorts) == 1 else f"{len(shorts)} files: " + ", ".join(shorts[:5]) + (
        ", ..." if len(shorts) > 5 else "")
    return LoadedSource(documents, source, columns, chosen, preview, notes, names, encoding, encodings)


# -- Hugging Face datasets ----------------------------------------------------------------------------
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub's endpoint does not answer (None when it does) within HUB_CHECK_SECONDS.
    Any HTTP answer counts as reachable; offline mode is checked by the caller."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_CHECK_SECONDS)
    except Exception as error:  # DNS, refused, timed out, proxy: the HTTP client's error types vary by version
        return f"no answer from {constants.ENDPOINT} within {HUB_CHECK_SECONDS:g} s: {type(error).__name__}"
    return None


def _hub_error(label: str, reason: str) -> UserInputError:
    return UserInputError(f"could not load Hugging Face dataset {label}: the Hugging Face Hub is unreachable "
                          f"({reason}); {LOCAL_FILE_HINT}")


def load_hf_dataset(name: str, config: str | None = None, split: str = "train",
                    column: str | None = None) -> LoadedSource:
    """A Hugging Face Hub dataset (or a local dataset folder) through `datasets.load_dataset`.

    A Hub name needs the network unless the dataset is cached and HF_HUB_OFFLINE=1. Without the Hub this
    fails within a few seconds with a message that says how to load a local file instead. Downloads show
    `datasets`' tqdm progress bars (the app's progress bar follows them)."""
    if not name or not name.strip():
        raise UserInputError("give a Hugging Face dataset name such as 'karpathy/tiny_shakespeare'")
    name = name.strip()
    label = name + (f" ({config})" if config else "") + f" split {split!r}"
    from huggingface_hub import constants

    # `datasets` also honours HF_DATASETS_OFFLINE; read it here so a missing Hub is found before importing it
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES",
                                                                                                  "TRUE")
    offline_reason = f"offline mode: {'HF_HUB_OFFLINE' if constants.HF_HUB_OFFLINE else 'HF_DATASETS_OFFLINE'} is set"
    on_hub = not Path(name).exists()
    if on_hub and not offline:  # offline mode fails at once by itself, or finds the dataset in the cache
        reason = hub_unreachable()
        if reason is not None:
            raise _hub_error(label, reason)
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except ConnectionError:  # what `datasets` raises when the Hub cannot be reached (or offline mode is on)
        raise _hub_error(label, offline_reason if offline else "the connection failed") from None
    except Exception as error:  # missing dataset, bad config or split: all fixable by the person
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"could not load Hugging Face dataset {label}: {message}"
                             + (f" ({offline_reason})" if offline else "")) from None
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
    return LoadedSource(documents, f"hf:{label}", columns, column, frame_head, [], [f"hf:{name}"], AUTO_ENCODING, {})
