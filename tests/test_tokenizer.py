"""The offline GPT-2 tokenizer: known ids, agreement with the shipped encoder.json, round trips, display
labels and the compact vocabulary mapping."""

from __future__ import annotations

import json

import pytest

from gpt.errors import UserInputError
from gpt.tokenizer import ASSETS_DIR, GPT2_EOT_ID, GPT2_VOCAB_SIZE, Tokenizer, gpt2_encoding, gpt2_tokenizer

UNICODE_SAMPLES = [
    "안녕하세요, 세계! 한국어 문장입니다.",
    "Emoji 😀🎉👩‍👩‍👧 and flags 🇰🇷",
    "Accents: café, naïve, Ærø, Ångström, façade — “quotes”",
    "whitespace   runs\t\t\tand\n\n\n\nblank lines   \n  ",
    "  leading and trailing  ",
    "日本語と中文混合 text 123,456.78",
    "",
]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character table (bytes_to_unicode in OpenAI's encoder.py)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@pytest.fixture(scope="module")
def encoder_json() -> dict[str, int]:
    return json.loads((ASSETS_DIR / "encoder.json").read_text(encoding="utf-8"))


def test_known_ids():
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>") == [GPT2_EOT_ID] == [tok.eot_id]
    assert tok.vocab_size == GPT2_VOCAB_SIZE == 50257
    assert tok.name == "gpt2" and not tok.is_compact
    assert tok.decode([15496, 995]) == "Hello world"


def test_every_token_matches_encoder_json(encoder_json):
    decoder = _byte_decoder()
    encoding = gpt2_encoding()
    assert len(encoder_json) == GPT2_VOCAB_SIZE
    for text, token_id in encoder_json.items():
        if token_id == GPT2_EOT_ID:
            assert text == "<|endoftext|>"
            continue
        expected = bytes(decoder[ch] for ch in text)
        assert encoding.decode_single_token_bytes(token_id) == expected, (text, token_id)


def test_merges_reproduce_whole_word_tokens(encoder_json):
    """A sample of word tokens from encoder.json must come out of BPE as that single token."""
    decoder = _byte_decoder()
    tok = gpt2_tokenizer()
    words = [(bytes(decoder[ch] for ch in text).decode("utf-8"), token_id)
             for text, token_id in list(encoder_json.items())[::37]
             if text.lstrip("Ġ").isascii() and text.lstrip("Ġ").isalpha() and text.count("Ġ") <= 1]
    assert len(words) > 500
    mismatches = [(word, token_id, tok.encode(word)) for word, token_id in words if tok.encode(word) != [token_id]]
    assert not mismatches[:5]


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_round_trip(text):
    tok = gpt2_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < GPT2_VOCAB_SIZE for i in ids)


def test_encode_batch_matches_encode_and_keeps_special_text_plain():
    tok = gpt2_tokenizer()
    texts = UNICODE_SAMPLES + ["x <|endoftext|> y"]
    batch = tok.encode_batch(texts, num_threads=2)
    assert batch[:-1] == [tok.encode(t) for t in UNICODE_SAMPLES]
    assert GPT2_EOT_ID not in batch[-1]
    assert tok.decode(batch[-1]) == "x <|endoftext|> y"


def test_token_display_makes_whitespace_visible():
    tok = gpt2_tokenizer()
    assert [tok.token_display(i) for i in tok.encode(" the\nend")] == ["␣the", "↵", "end"]
    assert tok.token_display(tok.encode("\t")[0]) == "⇥"
    assert tok.token_text(tok.encode(" the")[0]) == " the"
    partial = tok.encode("😀")[0]  # the emoji is split into byte-level tokens
    assert tok.token_text(partial).startswith("<0x")


def test_compact_vocabulary_maps_ids_both_ways():
    tok = Tokenizer(kept_gpt2_ids=[15496, 995])
    assert tok.is_compact and tok.vocab_size == 3 and tok.name == "gpt2-compact-3"
    assert tok.kept_gpt2_ids == [995, 15496, GPT2_EOT_ID]
    assert tok.eot_id == 2
    ids = tok.encode("Hello world")
    assert ids == [1, 0]
    assert tok.to_gpt2(ids) == [15496, 995]
    assert tok.decode(ids) == "Hello world"
    assert tok.unknown_tokens("Hello there") == [" there"]
    with pytest.raises(UserInputError, match="not in this run's compact vocabulary .* neither are the bytes"):
        tok.encode("Hello there")
    assert tok.encode("Hello there", unknown="eot") == [1, 2]
    assert tok.encode_batch(["Hello world", "Hello world world"]) == [[1, 0], [1, 0, 0]]
    again = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.kept_gpt2_ids == tok.kept_gpt2_ids and again.encode("Hello world") == ids
    assert Tokenizer.from_dict(None).vocab_size == GPT2_VOCAB_SIZE


def test_compact_vocabulary_rejects_out_of_range_ids():
    with pytest.raises(UserInputError, match="outside GPT-2's range"):
        Tokenizer(kept_gpt2_ids=[GPT2_VOCAB_SIZE])


def test_compact_vocabulary_with_the_byte_tokens_spells_any_text():
    full = gpt2_tokenizer()
    tok = Tokenizer([*full.encode("Hello world, the"), *range(256)])
    for text in ["Hello there", "Quantum chromodynamics", "안녕하세요 🙂 héllo"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode(" theory")[:1] == tok.encode(" the")  # longest kept piece first
    assert tok.unknown_tokens("Hello world") == []
