"""Cleaning documents: the rules a `CleanConfig` turns on, and what they did (before/after statistics).

The rules run in a fixed order (fix Unicode, strip HTML, remove patterns, URLs/e-mails/phones/numbers,
to ASCII, lower-case, line breaks, whitespace), then empty, too-short and duplicate documents are dropped.
`CleanConfig`'s fields carry their label, help and choices (`gpt.fields.option`), so the `prepare` command's
flags and the Data tab's controls are made from the same declaration. ftfy and clean-text are imported on
first use, so reading a run's cleaning options costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
import html
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from gpt.data.progress import Progress, say
from gpt.data.tokens import count_tokens as count_document_tokens
from gpt.errors import UserInputError
from gpt.fields import check_fields, option
from gpt.fields import from_dict as config_from_dict

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


def _mode(what: str, placeholder: str) -> Any:
    """The field of one keep/replace/drop rule."""
    return option("keep", label=what, choices=REPLACE_MODES,
                  help=f"'replace' puts {placeholder} in their place, 'drop' deletes them")


@dataclass
class CleanConfig:
    """Cleaning rules. The defaults only repair broken Unicode, tidy whitespace (keeping line breaks and
    indentation) and drop exact duplicate documents: Korean, accents, emoji and line structure survive."""

    fix_unicode: bool = option(True, label="Fix broken Unicode (mojibake)",
                               help="repair mojibake, HTML entities and stray control characters with ftfy")
    strip_html: bool = option(False, label="Strip HTML tags", help="remove HTML tags and decode entities")
    urls: str = _mode("URLs", "<URL>")
    emails: str = _mode("E-mail addresses", "<EMAIL>")
    phone_numbers: str = _mode("Phone numbers", "<PHONE>")
    numbers: str = _mode("Numbers", "<NUMBER>")
    remove_line_breaks: bool = option(False, label="Remove line breaks (loses verse and dialogue structure)",
                                      help="join lines with spaces")
    collapse_whitespace: bool = option(True, label="Collapse repeated spaces and blank lines",
                                       help="trailing spaces off, runs of spaces to one, at most one blank line "
                                            "in a row (indentation kept)")
    lowercase: bool = option(False, label="Lower-case everything", help="lower-case everything")
    to_ascii: bool = option(False, label="Convert to ASCII (destroys non-Latin text and emoji)",
                            help="transliterate to ASCII (drops Korean, emoji and other non-Latin text)")
    min_chars: int = option(0, label="Drop documents shorter than (characters)", minimum=0, step=1,
                            help="drop documents shorter than this many characters (0: keep all)")
    deduplicate: bool = option(True, label="Drop exact duplicate documents",
                               help="drop documents that repeat an earlier one exactly")
    remove_patterns: tuple[str, ...] = option((), label="Remove regex matches (one pattern per line)",
                                              help="delete every match of these Python regular expressions")

    def __post_init__(self) -> None:
        if isinstance(self.remove_patterns, str):
            self.remove_patterns = (self.remove_patterns,)
        elif isinstance(self.remove_patterns, list):
            self.remove_patterns = tuple(self.remove_patterns)
        for name in _PLACEHOLDERS:  # said this way since the first release (scripts match on it)
            if getattr(self, name) not in REPLACE_MODES:
                raise UserInputError(f"cleaning option {name} must be one of {', '.join(REPLACE_MODES)}, "
                                     f"not {getattr(self, name)!r}", field=name)
        check_fields(self)
        self.remove_patterns = tuple(p for p in self.remove_patterns if p)
        self._compiled = [compile_pattern(p) for p in self.remove_patterns]

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["remove_patterns"] = list(self.remove_patterns)
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> CleanConfig:
        return config_from_dict(cls, data or {}, "cleaning")


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UserInputError(f"invalid regular expression {pattern!r}: {error}", field="remove_patterns") from None


class _DropUnidecodeNotice(logging.Filter):
    """clean-text logs a warning about the missing GPL `unidecode` package through the root logger on import."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "unidecode" not in record.getMessage()


@functools.cache
def _cleantext() -> Callable[..., str]:
    """clean-text's `clean`, imported on first use without its notice about `unidecode`."""
    notice_filter = _DropUnidecodeNotice()
    logging.getLogger().addFilter(notice_filter)
    try:
        from cleantext import clean
    finally:
        logging.getLogger().removeFilter(notice_filter)
    return clean


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


def _cleantext_rule(**kwargs) -> Callable[[str], str]:
    return lambda text: _cleantext()(text, **{**_CLEANTEXT_OFF, **kwargs})


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
            placeholder = _PLACEHOLDERS[name] if mode == "replace" else ""
            rules.append((name, _cleantext_rule(**{flag: True, replace_flag: placeholder})))
    if config.to_ascii:
        rules.append(("to_ascii", _cleantext_rule(to_ascii=True)))
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
        stats["tokens"] = count_document_tokens(documents, num_threads)
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
        say(progress, done / total_chars, f"cleaning: {name}")
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
    say(progress, 1.0, "cleaning done")
    return CleanReport(kept_docs, before, after, removed, touched, examples, notes)
