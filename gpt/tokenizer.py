"""The GPT-2 BPE tokenizer, built offline from the files shipped in `assets/tokenizer/`.

`gpt2_encoding()` is a `tiktoken.Encoding` that gives exactly the ids of tiktoken's own `gpt2`
encoding without touching the network. `Tokenizer` wraps it with what the rest of the product needs:
the id of `<|endoftext|>`, batch encoding on tiktoken's threads, readable token strings for display,
and an optional compact vocabulary (a subset of GPT-2 ids remapped to 0..n-1) that a run may use to
shrink its embedding and output layers. Token files on disk always hold GPT-2 ids.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gpt.errors import UserInputError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
EOT_TOKEN = "<|endoftext|>"
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
GPT2_BYTE_TOKENS = 256  # GPT-2 ids 0..255 are the single bytes
# GPT-2's pre-tokenisation pattern, as tiktoken defines it for the `gpt2` (r50k) encoding.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# Characters that make whitespace visible when tokens are shown to a person.
_VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding, built from the bundled BPE files (no network access)."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(ASSETS_DIR / "vocab.bpe"),
        encoder_json_file=str(ASSETS_DIR / "encoder.json"),
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def default_num_threads() -> int:
    return max(1, os.cpu_count() or 1)


class Tokenizer:
    """GPT-2 BPE, optionally restricted to a compact vocabulary.

    With `kept_gpt2_ids=None` model ids are GPT-2 ids. Otherwise model id `i` stands for GPT-2 id
    `kept_gpt2_ids[i]`. A GPT-2 token outside the kept set is spelled with the longest kept tokens that
    make up its bytes (a compact vocabulary from `gpt.vocab.compact_tokenizer` keeps all 256 single-byte
    tokens, so every text can be encoded); `unknown_tokens` lists such pieces so callers can report them.
    """

    def __init__(self, kept_gpt2_ids: Sequence[int] | None = None, spells_data: bool = False) -> None:
        self.encoding = gpt2_encoding()
        # A vocabulary cut to the most frequent tokens reads data with its rarer tokens spelled (`spell_ids`);
        # a plain compact one holds every token of its data, which is mapped id for id.
        self.spells_data = spells_data and kept_gpt2_ids is not None
        if kept_gpt2_ids is None:
            self.kept_gpt2_ids: list[int] | None = None
            self._to_model: dict[int, int] | None = None
            self.vocab_size = GPT2_VOCAB_SIZE
            self.eot_id = GPT2_EOT_ID
            return
        kept = sorted(set(int(i) for i in kept_gpt2_ids) | {GPT2_EOT_ID})
        if kept[0] < 0 or kept[-1] >= GPT2_VOCAB_SIZE:
            raise UserInputError(f"compact vocabulary holds ids outside GPT-2's range 0..{GPT2_VOCAB_SIZE - 1}")
        self.kept_gpt2_ids = kept
        self._to_model = {gpt2_id: model_id for model_id, gpt2_id in enumerate(kept)}
        self._by_bytes = {self.encoding.decode_single_token_bytes(gpt2_id): model_id
                          for gpt2_id, model_id in self._to_model.items() if gpt2_id != GPT2_EOT_ID}
        self._longest = max((len(piece) for piece in self._by_bytes), default=1)
        self.vocab_size = len(kept)
        self.eot_id = self._to_model[GPT2_EOT_ID]

    @property
    def name(self) -> str:
        if self.kept_gpt2_ids is None:
            return "gpt2"
        return f"gpt2-frequent-{self.vocab_size}" if self.spells_data else f"gpt2-compact-{self.vocab_size}"

    @property
    def is_compact(self) -> bool:
        return self.kept_gpt2_ids is not None

    # -- id mapping -------------------------------------------------------------------------------
    def from_gpt2(self, gpt2_ids: Iterable[int], unknown: str = "spell") -> list[int]:
        """Map GPT-2 ids to model ids. A token outside the vocabulary is spelled with shorter kept tokens
        (`unknown="spell"`, raising when a byte is missing too) or becomes <|endoftext|> (`unknown="eot"`)."""
        if self._to_model is None:
            return list(gpt2_ids)
        out = []
        for gpt2_id in gpt2_ids:
            model_id = self._to_model.get(gpt2_id)
            if model_id is not None:
                out.append(model_id)
            elif unknown == "eot":
                out.append(self.eot_id)
            else:
                out += self._spell(gpt2_id)
        return out

    def _spell(self, gpt2_id: int) -> list[int]:
        """The kept tokens that make up a GPT-2 token's bytes, longest first from the left."""
        raw, ids, start = self.encoding.decode_single_token_bytes(gpt2_id), [], 0
        while start < len(raw):
            for end in range(min(len(raw), start + self._longest), start, -1):
                if raw[start:end] in self._by_bytes:
                    ids.append(self._by_bytes[raw[start:end]])
                    start = end
                    break
            else:
                raise UserInputError(
                    f"token {self.encoding.decode([gpt2_id])!r} (GPT-2 id {gpt2_id}) is not in this run's compact "
                    f"vocabulary of {self.vocab_size} tokens, and neither are the bytes to spell it"
                )
        return ids

    def to_gpt2(self, model_ids: Iterable[int]) -> list[int]:
        if self.kept_gpt2_ids is None:
            return [int(i) for i in model_ids]
        return [self.kept_gpt2_ids[int(i)] for i in model_ids]

    def unknown_tokens(self, text: str) -> list[str]:
        """The pieces of `text` whose GPT-2 tokens this vocabulary lacks (empty for full GPT-2)."""
        if self._to_model is None:
            return []
        ids = self.encoding.encode(text, allowed_special={EOT_TOKEN})
        return [self.encoding.decode([i]) for i in ids if i not in self._to_model]

    # -- text <-> ids ---------------------------------------------------------------------------
    def encode(self, text: str, unknown: str = "spell") -> list[int]:
        """Model ids for `text`; the literal string `<|endoftext|>` becomes the EOT token. `unknown`: see
        `from_gpt2`."""
        return self.from_gpt2(self.encoding.encode(text, allowed_special={EOT_TOKEN}), unknown=unknown)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """GPT-2 ids of many texts at once, on tiktoken's thread pool (special tokens as plain text)."""
        batches = self.encoding.encode_ordinary_batch(texts, num_threads=num_threads or default_num_threads())
        return batches if self._to_model is None else [self.from_gpt2(ids) for ids in batches]

    def decode_bytes(self, model_ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(self.to_gpt2(model_ids))

    def decode(self, model_ids: Iterable[int]) -> str:
        return self.decode_bytes(model_ids).decode("utf-8", errors="replace")

    # -- display ----------------------------------------------------------------------------------
    def token_text(self, model_id: int) -> str:
        """The token's text; a token that is only part of a UTF-8 character shows as its bytes."""
        raw = self.decode_bytes([model_id])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(f"<0x{b:02X}>" for b in raw)

    def token_display(self, model_id: int) -> str:
        """A readable label: spaces, newlines and tabs made visible (' the' -> '␣the', '\\n' -> '↵')."""
        return visible_whitespace(self.token_text(model_id))

    def display_labels(self, model_ids: Sequence[int]) -> list[str]:
        """Readable labels for a sequence of tokens, as `token_display` gives them, except that tokens holding
        pieces of one UTF-8 character (GPT-2 splits most Korean, Chinese and emoji characters into byte
        tokens) show that whole character, each marked `[k/n]`: piece k of the n tokens that share it.
        A piece whose character is cut off (at the end of a cut text) keeps its `<0xNN>` label."""
        pieces = [self.decode_bytes([i]) for i in model_ids]
        data = b"".join(pieces)
        ends = list(itertools.accumulate(len(piece) for piece in pieces))
        starts = [0, *ends[:-1]]

        def boundary(offset: int) -> bool:  # a UTF-8 character starts here (not a 10xxxxxx continuation byte)
            return offset in (0, len(data)) or data[offset] & 0xC0 != 0x80

        labels, group = [], []  # group: indexes of the tokens split across the characters seen so far
        for t, model_id in enumerate(model_ids):
            labels.append(self.token_display(model_id))
            if group or not (boundary(starts[t]) and boundary(ends[t])):
                group.append(t)
            if group and boundary(ends[t]):
                for k, member in enumerate(group, start=1):
                    start, end = starts[member], ends[member]
                    while not boundary(start):
                        start -= 1
                    while not boundary(end):
                        end += 1
                    try:
                        text = visible_whitespace(data[start:end].decode("utf-8"))
                        labels[member] = f"{text}[{k}/{len(group)}]"
                    except UnicodeDecodeError:
                        pass  # not valid UTF-8 even as a whole: keep the byte labels
                group = []
        return labels

    # -- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {"name": self.name, "kept_gpt2_ids": self.kept_gpt2_ids}
        if self.spells_data:
            data["spells_data"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> Tokenizer:
        data = data or {}
        return cls(data.get("kept_gpt2_ids"), spells_data=bool(data.get("spells_data", False)))


def visible_whitespace(text: str) -> str:
    return "".join(_VISIBLE_WHITESPACE.get(ch, ch) for ch in text)


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> Tokenizer:
    """The shared full-vocabulary tokenizer."""
    return Tokenizer()
