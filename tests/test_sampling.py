"""Sampling controls on hand-made logits, and the streaming generator on small random models."""

from __future__ import annotations

import pytest
import torch

from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.sampling import (
    SamplingConfig,
    TextStream,
    apply_repetition_penalty,
    encode_prompt,
    filter_top_k,
    filter_top_p,
    generate,
    next_token_probs,
    prompt_note,
    stream_generate,
)
from gpt.tokenizer import Tokenizer, gpt2_tokenizer

NO_CONTEXT = torch.zeros(0, dtype=torch.long)


def probs_to_logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()


def compact_tokenizer(text: str = "the cat sat on the mat, and the dog ate a hat. 🙂 日本語 héllo") -> Tokenizer:
    return Tokenizer(gpt2_tokenizer().encode(text))


def random_model(vocab_size: int, seed: int = 0, context_length: int = 32) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, context_length=context_length, n_layer=2, n_head=2, n_embd=16)
    return GPT(config).eval()


def model_preferring(vocab_size: int, token_id: int) -> GPT:
    """A model whose most likely next token is always `token_id` (final norm outputs a constant)."""
    model = random_model(vocab_size)
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.token_embedding.weight[:, 0] = 0.0
        model.token_embedding.weight[token_id, 0] = 10.0
    return model


# -- config validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a number >= 0"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a number > 0"),
        ({"penalty_window": -3}, "penalty_window must be an integer >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"stop_at_eot": "no"}, "stop_at_eot must be true or false"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": "7"}, "seed must be a non-negative integer"),
        ({"top_candidates": -2}, "top_candidates must be an integer >= 0"),
    ],
)
def test_invalid_sampling_values_are_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        SamplingConfig(**overrides)


# -- each control on hand-made logits -----------------------------------------------------------------
def test_greedy_is_one_hot_on_the_best_token() -> None:
    probs = next_token_probs(torch.tensor([0.1, 2.0, 1.9, -3.0]), NO_CONTEXT, SamplingConfig(temperature=0))
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_temperature_divides_the_logits() -> None:
    logits = torch.tensor([1.0, 2.0, 0.5])
    probs = next_token_probs(logits, NO_CONTEXT, SamplingConfig(temperature=0.5))
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))
    flatter = next_token_probs(logits, NO_CONTEXT, SamplingConfig(temperature=2.0))
    assert flatter.max() < torch.softmax(logits, dim=-1).max() < probs.max()


def test_top_k_keeps_the_k_most_likely() -> None:
    logits = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.9])
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [False, True, False, True, False]
    assert torch.equal(filter_top_k(logits, 0), logits)
    probs = next_token_probs(logits, NO_CONTEXT, SamplingConfig(temperature=1.0, top_k=1))
    assert probs.tolist() == next_token_probs(logits, NO_CONTEXT, SamplingConfig(temperature=0)).tolist()


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = probs_to_logits([0.25, 0.5, 0.1, 0.15])  # sorted: 0.5, 0.25, 0.15, 0.1
    kept = {p: torch.isfinite(filter_top_p(logits, p)).tolist() for p in (0.3, 0.7, 0.8, 0.95, 1.0)}
    assert kept[0.3] == [False, True, False, False]
    assert kept[0.7] == [True, True, False, False]  # 0.5 + 0.25 = 0.75 >= 0.7
    assert kept[0.8] == [True, True, False, True]
    assert kept[0.95] == [True, True, True, True]
    assert kept[1.0] == [True, True, True, True]
    probs = next_token_probs(logits, NO_CONTEXT, SamplingConfig(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(probs, torch.tensor([1 / 3, 2 / 3, 0.0, 0.0]))


def test_repetition_penalty_changes_only_tokens_inside_the_window() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0])
    context = torch.tensor([0, 1, 2, 2])
    windowed = apply_repetition_penalty(logits, context, penalty=2.0, window=3)  # sees ids 1, 2, 2
    assert windowed.tolist() == [2.0, -2.0, 0.25, 3.0, 1.0]  # 2 penalised once despite appearing twice
    whole = apply_repetition_penalty(logits, context, penalty=2.0, window=0)
    assert whole.tolist() == [1.0, -2.0, 0.25, 3.0, 1.0]
    assert torch.equal(apply_repetition_penalty(logits, context, penalty=1.0, window=0), logits)


def test_penalty_applies_before_greedy_choice() -> None:
    logits = torch.tensor([3.0, 2.0, 0.0])
    config = SamplingConfig(temperature=0, repetition_penalty=2.0)
    assert next_token_probs(logits, torch.tensor([0]), config).argmax().item() == 1
    assert next_token_probs(logits, torch.tensor([2]), config).argmax().item() == 0


# -- text streaming -----------------------------------------------------------------------------------
def test_text_stream_never_yields_half_a_character() -> None:
    tokenizer = gpt2_tokenizer()
    text = "héllo 🙂 日本語 👍🏽!"
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces  # some tokens end inside a character and were held back


def test_text_stream_flushes_an_unfinished_character_as_replacement() -> None:
    stream = TextStream(gpt2_tokenizer())
    assert stream.push(8582) == ""  # b"\xf0\x9f": the first half of an emoji
    assert stream.flush() == "\ufffd"


def test_streamed_text_equals_decoding_all_tokens() -> None:
    """Random output over multi-byte fragments: the pieces join to exactly the full decode."""
    tokenizer = compact_tokenizer("🙂 日本語 👍🏽 héllo")
    model = random_model(tokenizer.vocab_size, seed=3)
    config = SamplingConfig(temperature=1.0, max_new_tokens=40, stop_at_eot=False, seed=0)
    steps = list(stream_generate(model, tokenizer, "🙂", config))
    assert "".join(step.text for step in steps) == tokenizer.decode([step.token_id for step in steps])


# -- the generator ------------------------------------------------------------------------------------
def test_same_seed_gives_the_same_text_and_different_seeds_differ() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    config = SamplingConfig(temperature=1.0, max_new_tokens=25, stop_at_eot=False, seed=11)
    first = generate(model, tokenizer, "the cat", config)
    assert generate(model, tokenizer, "the cat", config) == first
    other = SamplingConfig(temperature=1.0, max_new_tokens=25, stop_at_eot=False, seed=12)
    assert generate(model, tokenizer, "the cat", other) != first


def test_top_k_one_generation_equals_greedy() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    greedy = [s.token_id for s in stream_generate(model, tokenizer, "the", SamplingConfig(temperature=0))]
    top1 = SamplingConfig(temperature=1.3, top_k=1, seed=4)
    assert [s.token_id for s in stream_generate(model, tokenizer, "the", top1)] == greedy


def test_generation_stops_at_eot_and_at_max_new_tokens() -> None:
    tokenizer = compact_tokenizer()
    model = model_preferring(tokenizer.vocab_size, tokenizer.eot_id)
    steps = list(stream_generate(model, tokenizer, "the cat", SamplingConfig(temperature=0)))
    assert [(s.token_id, s.text, s.finish_reason) for s in steps] == [(tokenizer.eot_id, "", "eot")]
    config = SamplingConfig(temperature=0, stop_at_eot=False, max_new_tokens=7)
    steps = list(stream_generate(model, tokenizer, "the cat", config))
    assert len(steps) == 7
    assert [s.finish_reason for s in steps] == [None] * 6 + ["length"]
    assert "".join(s.text for s in steps) == "<|endoftext|>" * 7


def test_generation_runs_past_the_context_length() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size, context_length=8)
    config = SamplingConfig(temperature=0.9, max_new_tokens=30, stop_at_eot=False, seed=0)
    assert len(list(stream_generate(model, tokenizer, "the cat sat on the mat, and the dog", config))) == 30


def test_candidates_before_and_after_the_controls() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    config = SamplingConfig(temperature=0.7, top_k=2, max_new_tokens=1, top_candidates=4, seed=0)
    (step,) = stream_generate(model, tokenizer, "the cat", config)
    raw = model(torch.tensor([tokenizer.encode("the cat")]))[0][0, -1]
    expected_before = torch.topk(torch.softmax(raw, dim=-1), 4)
    assert [i for i, _ in step.candidates_before] == expected_before.indices.tolist()
    torch.testing.assert_close(torch.tensor([p for _, p in step.candidates_before]), expected_before.values)
    after = dict(step.candidates_after)
    top2 = expected_before.indices[:2].tolist()
    assert sorted(i for i, p in after.items() if p > 0) == sorted(top2)
    assert sum(after.values()) == pytest.approx(1.0)
    assert step.token_id in top2
    plain = next(stream_generate(model, tokenizer, "the cat", SamplingConfig(max_new_tokens=1)))
    assert plain.candidates_before == [] and plain.candidates_after == []


def test_prompt_outside_a_compact_vocabulary_without_its_bytes_lists_the_pieces() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    with pytest.raises(UserInputError, match=r"cannot spell from smaller tokens: ' z', 'ebra'; rephrase"):
        generate(model, tokenizer, "the zebra", SamplingConfig())


def test_prompt_outside_a_compact_vocabulary_is_spelled_and_reported() -> None:
    known = gpt2_tokenizer().encode("the cat sat on the mat")
    tokenizer = Tokenizer([*known, *range(256)])
    model = random_model(tokenizer.vocab_size)
    ids = encode_prompt(tokenizer, "the zebra")
    assert tokenizer.decode(ids) == "the zebra" and len(ids) == 1 + len(" zebra")  # ' z' + 'ebra', byte by byte
    note = prompt_note(tokenizer, "the zebra")
    assert "2 piece(s)" in note and "' z', 'ebra'" in note and "spelled with smaller tokens" in note
    assert prompt_note(tokenizer, "the cat") == ""
    assert isinstance(generate(model, tokenizer, "the zebra", SamplingConfig(max_new_tokens=3, seed=1)), str)


def test_empty_prompt_starts_from_end_of_text() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    config = SamplingConfig(temperature=0, max_new_tokens=5, stop_at_eot=False)
    assert generate(model, tokenizer, "", config) == generate(model, tokenizer, "<|endoftext|>", config)


def test_padded_model_vocabulary_never_yields_ids_the_tokenizer_lacks() -> None:
    tokenizer = compact_tokenizer()
    model = model_preferring(tokenizer.vocab_size + 5, tokenizer.vocab_size + 2)  # a padding row wins
    steps = list(stream_generate(model, tokenizer, "the", SamplingConfig(temperature=0, max_new_tokens=5)))
    assert all(step.token_id < tokenizer.vocab_size for step in steps)
    with pytest.raises(UserInputError, match="tokenizer has .* tokens but the model only"):
        generate(random_model(10), tokenizer, "the", SamplingConfig())
