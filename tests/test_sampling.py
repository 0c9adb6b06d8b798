"""Sampling controls on hand-made logits (each against its published definition), the stage view, presets,
decoding precision, and the streaming generator on small random models."""

from __future__ import annotations

import pytest
import torch

from gpt import sampling
from gpt.errors import UserInputError
from gpt.fields import field_specs
from gpt.model import GPT, GPTConfig
from gpt.sampling import (
    CHAIN,
    DRY_MAX_MATCH,
    SAMPLER_FIELDS,
    SAMPLING_PRESETS,
    QuantizedLinear,
    Sampler,
    SamplingConfig,
    TextStream,
    apply_dry,
    apply_frequency_presence,
    apply_repetition_penalty,
    choose_precision,
    decoding_model,
    dry_breakers,
    encode_prompt,
    entropy_bits,
    filter_min_p,
    filter_top_k,
    filter_top_n_sigma,
    filter_top_p,
    filter_typical,
    generate,
    next_token_probs,
    preset_values,
    prompt_note,
    stream_generate,
    stream_generate_ids,
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


# -- every field declared once ------------------------------------------------------------------------
def test_every_sampling_field_is_declared_with_its_metadata() -> None:
    specs = {spec.name: spec for spec in field_specs(SamplingConfig)}
    assert list(specs) == [f for f in SamplingConfig.__dataclass_fields__]
    assert all(spec.label and spec.help for spec in specs.values())
    assert specs["temperature"].ui_maximum == 2.0 and specs["top_p"].exclusive_minimum
    assert specs["precision"].choices == ("float32", "int8", "int8-dynamic", "bfloat16", "auto")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min_p": 1.5}, "min_p must be a number in"),
        ({"typical_p": 0.0}, "typical_p must be a number in"),
        ({"top_n_sigma": -1.0}, "top_n_sigma must be a number >= 0"),
        ({"frequency_penalty": 2.5}, r"frequency_penalty must be a number in \[-2, 2\]"),
        ({"presence_penalty": -3}, r"presence_penalty must be a number in \[-2, 2\]"),
        ({"dry_multiplier": -0.1}, "dry_multiplier must be a number >= 0"),
        ({"dry_base": 0.5}, "dry_base must be a number >= 1"),
        ({"dry_allowed_length": 0}, "dry_allowed_length must be a positive integer"),
        ({"precision": "fp8"}, "unknown precision 'fp8'; choose one of: float32, int8, int8-dynamic, bfloat16, auto"),
    ],
)
def test_invalid_new_sampler_values_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message) as error:
        SamplingConfig(**overrides)
    assert error.value.field == next(iter(overrides))


# -- each sampler on hand-made logits, against its published definition ---------------------------------
def kept(logits: torch.Tensor) -> list[bool]:
    return torch.isfinite(logits).tolist()


def test_min_p_keeps_tokens_at_least_min_p_times_the_best() -> None:
    logits = probs_to_logits([0.25, 0.5, 0.1, 0.15])
    assert kept(filter_min_p(logits, 0.4)) == [True, True, False, False]  # threshold 0.2
    assert kept(filter_min_p(logits, 0.25)) == [True, True, False, True]  # threshold 0.125
    assert kept(filter_min_p(logits, 1.0)) == [False, True, False, False]
    assert torch.equal(filter_min_p(logits, 0.0), logits)


def test_typical_p_keeps_tokens_whose_surprise_is_closest_to_the_entropy() -> None:
    # H = 1.280 nats; surprises 0.916, 1.204, 1.609, 2.303 -> distances 0.364, 0.076, 0.329, 1.023:
    # typical order is token 1 (0.3), token 2 (0.2), token 0 (0.4), token 3 (0.1)
    logits = probs_to_logits([0.4, 0.3, 0.2, 0.1])
    assert kept(filter_typical(logits, 0.25)) == [False, True, False, False]
    assert kept(filter_typical(logits, 0.45)) == [False, True, True, False]
    assert kept(filter_typical(logits, 0.85)) == [True, True, True, False]
    assert kept(filter_typical(logits, 0.95)) == [True, True, True, True]
    assert torch.equal(filter_typical(logits, 1.0), logits)


def test_top_n_sigma_keeps_logits_within_n_standard_deviations_of_the_best() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -6.0])  # mean 0, population std sqrt(10) = 3.16
    assert kept(filter_top_n_sigma(logits, 1.0)) == [True, True, True, True, False]  # >= -0.16
    assert kept(filter_top_n_sigma(logits, 0.5)) == [True, True, False, False, False]  # >= 1.42
    assert kept(filter_top_n_sigma(logits / 0.3, 0.5)) == kept(filter_top_n_sigma(logits, 0.5))  # temperature-free
    assert torch.equal(filter_top_n_sigma(logits, 0.0), logits)


def test_frequency_and_presence_penalties_follow_openai() -> None:
    logits = torch.zeros(4)
    context = torch.tensor([1, 1, 2])
    penalised = apply_frequency_presence(logits, context, frequency=0.5, presence=0.25, window=0)
    assert penalised.tolist() == [0.0, -1.25, -0.75, 0.0]  # 2 * 0.5 + 0.25 and 1 * 0.5 + 0.25
    assert apply_frequency_presence(logits, context, 0.5, 0.25, window=1).tolist() == [0.0, 0.0, -0.75, 0.0]
    assert apply_frequency_presence(logits, context, -0.5, 0.0, window=0).tolist() == [0.0, 1.0, 0.5, 0.0]


def dry_reference(ids: list[int], multiplier: float, base: float, allowed: int, breakers: set[int]) -> dict:
    """DRY as text-generation-webui defines it, over plain lists: for every earlier occurrence of the last
    token, extend the match backwards (at most 50, stopping at a breaker), keep the longest match per
    following token, and penalise multiplier * base ** (length - allowed) from `allowed` on."""
    longest: dict[int, int] = {}
    if ids[-1] in breakers:
        return {}
    for i in range(len(ids) - 1):
        if ids[i] != ids[-1] or ids[i + 1] in breakers:
            continue
        length = 1
        while length < 50 and i - length >= 0:
            previous = ids[-(length + 1)]
            if ids[i - length] != previous or previous in breakers:
                break
            length += 1
        longest[ids[i + 1]] = max(length, longest.get(ids[i + 1], 0))
    return {token: multiplier * base ** (length - allowed) for token, length in longest.items() if length >= allowed}


def dry_penalties(ids: list[int], multiplier: float, base: float, allowed: int, breakers: set[int],
                  vocab: int = 8) -> dict:
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[list(breakers)] = True
    out = apply_dry(torch.zeros(vocab, dtype=torch.float64), torch.tensor(ids), multiplier, base, allowed, mask)
    return {token: -value for token, value in enumerate(out.tolist()) if value != 0}


def test_dry_penalises_the_token_that_would_extend_a_repeat() -> None:
    ids = [1, 2, 3, 4, 1, 2]  # "a b c x a b": the earlier "a b" was followed by c
    assert dry_penalties(ids, 0.8, 1.75, 2, set()) == pytest.approx({3: 0.8})  # match 2, allowed 2: 0.8 * 1.75^0
    assert dry_penalties(ids, 0.8, 1.75, 1, set()) == pytest.approx({3: 0.8 * 1.75})
    assert dry_penalties(ids, 0.8, 1.75, 3, set()) == {}  # the repeat is shorter than allowed
    assert dry_penalties(ids, 0.8, 1.75, 2, {1}) == {}  # a breaker ends the match at length 1
    assert dry_penalties(ids, 0.8, 1.75, 1, {2}) == {}  # the last token is a breaker: no penalty at all
    assert dry_penalties(ids, 0.0, 1.75, 1, set()) == {}


def test_dry_matches_the_reference_definition_on_random_texts() -> None:
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        ids = torch.randint(0, 4, (int(torch.randint(2, 40, (1,), generator=generator)),), generator=generator)
        breakers = {0} if trial % 3 == 0 else set()
        expected = dry_reference(ids.tolist(), 0.8, 1.75, 2, breakers)
        assert dry_penalties(ids.tolist(), 0.8, 1.75, 2, breakers, vocab=4) == pytest.approx(expected), ids.tolist()


def test_dry_caps_the_match_length_and_respects_the_window() -> None:
    ids = [5] * 300
    assert dry_penalties(ids, 1.0, 1.1, 2, set()) == pytest.approx({5: 1.1 ** (DRY_MAX_MATCH - 2)})
    mask = torch.zeros(8, dtype=torch.bool)
    windowed = apply_dry(torch.zeros(8), torch.tensor([1, 2, 3, 4, 1, 2]), 0.8, 1.75, 2, mask, window=3)
    assert windowed.tolist() == [0.0] * 8  # the window [4, 1, 2] holds no earlier "1 2"


def test_dry_breakers_are_the_tokens_of_newline_colon_quote_and_star() -> None:
    tokenizer = gpt2_tokenizer()
    breakers = dry_breakers(tokenizer, tokenizer.vocab_size)
    assert {tokenizer.decode([int(i)]) for i in breakers.nonzero().flatten()} == {"\n", ":", '"', "*"}
    compact = compact_tokenizer("the cat: sat")  # no newline, quote or star in this vocabulary
    assert {compact.decode([int(i)]) for i in dry_breakers(compact, compact.vocab_size).nonzero().flatten()} == {":"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_truncations_agree_with_hugging_face_warpers(seed: int) -> None:
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(seed)
    logits = torch.randn(1, 500) * 3
    context = torch.randint(0, 500, (1, 30))
    cases = [
        (filter_top_k(logits[0], 17), logits_process.TopKLogitsWarper(17)(context, logits.clone())),
        (filter_top_p(logits[0], 0.8), logits_process.TopPLogitsWarper(0.8)(context, logits.clone())),
        (filter_min_p(logits[0], 0.05), logits_process.MinPLogitsWarper(0.05)(context, logits.clone())),
        (filter_typical(logits[0], 0.7), logits_process.TypicalLogitsWarper(0.7)(context, logits.clone())),
    ]
    for ours, theirs in cases:
        assert kept(ours) == torch.isfinite(theirs[0]).tolist()
    repetition = logits_process.RepetitionPenaltyLogitsProcessor(1.3)(context, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits[0], context[0], 1.3, 0), repetition[0])


def test_top_p_over_a_large_vocabulary_widens_its_search_when_the_nucleus_is_wide() -> None:
    logits = torch.zeros(50_000)  # flat: the nucleus for p = 0.5 is 25,000 tokens (one more by rounding)
    assert int(torch.isfinite(filter_top_p(logits, 0.5)).sum()) in (25_000, 25_001)
    torch.manual_seed(0)
    wide = torch.randn(50_000) * 0.5  # a nucleus of thousands of tokens, against a full sort
    sorted_probs, order = torch.softmax(wide, dim=-1).sort(descending=True)
    reference = torch.zeros(50_000, dtype=torch.bool)
    reference[order[(sorted_probs.cumsum(0) - sorted_probs) < 0.9]] = True
    assert kept(filter_top_p(wide, 0.9)) == reference.tolist() and reference.sum() > 1000
    peaked = torch.full((50_000,), -10.0)
    peaked[7] = 10.0
    assert kept(filter_top_p(peaked, 0.9)).count(True) == 1


def test_draws_follow_the_distribution_and_never_pick_removed_tokens() -> None:
    sampler = Sampler(SamplingConfig(temperature=1.0, seed=0), 4)
    logits = probs_to_logits([0.5, 0.3, 0.2, 0.0])
    counts = torch.bincount(torch.tensor([sampler.draw(logits) for _ in range(20_000)]), minlength=4)
    torch.testing.assert_close(counts / 20_000, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015, rtol=0)
    assert Sampler(SamplingConfig(temperature=0), 4).draw(logits) == 0


# -- the chain and the stage view ---------------------------------------------------------------------
def test_the_chain_order_is_documented_and_followed() -> None:
    config = SamplingConfig(temperature=0.7, top_k=3, top_p=0.9, min_p=0.01, typical_p=0.99, top_n_sigma=3.0,
                            repetition_penalty=1.2, frequency_penalty=0.1, dry_multiplier=0.5)
    sampler = Sampler(config, 10)
    names = [name for name, _ in sampler.run(torch.randn(10), torch.tensor([1, 2, 1, 2]))]
    assert names == ["model", *CHAIN]
    for name in CHAIN:
        assert name in sampling.__doc__
    greedy = Sampler(SamplingConfig(temperature=0, top_k=3, repetition_penalty=1.2), 10)
    assert [name for name, _ in greedy.run(torch.randn(10), torch.tensor([1]))] == ["model", "repetition penalty"]


def test_stage_view_counts_survivors_entropy_and_the_chosen_rank() -> None:
    logits = probs_to_logits([0.4, 0.3, 0.2, 0.1])
    sampler = Sampler(SamplingConfig(temperature=0.5, top_k=2), 4)
    staged = sampler.run(logits, NO_CONTEXT)
    stages = sampler.stage_view(staged, token=1, n=3)
    assert [(s.name, s.survivors, s.chosen_rank) for s in stages] == [
        ("model", 4, 2), ("temperature", 4, 2), ("top-k", 2, 2)]
    assert stages[0].entropy == pytest.approx(entropy_bits(torch.tensor([0.4, 0.3, 0.2, 0.1])))
    assert stages[0].entropy == pytest.approx(1.8464, abs=1e-4)
    sharp = torch.tensor([0.16, 0.09]) / 0.25  # temperature 0.5 squares the probabilities
    assert [token for token, _ in stages[2].top[:2]] == [0, 1] and stages[2].top[2][1] == 0.0
    assert [p for _, p in stages[2].top[:2]] == pytest.approx(sharp.tolist())
    assert stages[2].chosen_probability == pytest.approx(float(sharp[1]))
    assert stages[1].setting == "÷ 0.5" and stages[2].setting == "k = 2"
    forced = sampler.stage_view(staged, token=3, n=3)
    assert forced[-1].chosen_rank is None and forced[-1].chosen_probability == 0.0  # top-k removed it


def test_greedy_stage_view_ends_with_the_single_most_likely_token() -> None:
    sampler = Sampler(SamplingConfig(temperature=0), 3)
    stages = sampler.stage_view(sampler.run(torch.tensor([0.1, 2.0, 1.0]), NO_CONTEXT), token=1, n=2)
    assert [(s.name, s.survivors, s.chosen_rank) for s in stages] == [("model", 3, 1), ("temperature", 1, 1)]
    assert stages[-1].top == [(1, 1.0), (0, 0.0)]


def test_generation_reports_each_stage_per_token() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    config = SamplingConfig(temperature=0.9, top_k=5, min_p=0.05, max_new_tokens=6, stop_at_eot=False,
                            top_candidates=3, seed=2)
    for step in stream_generate(model, tokenizer, "the cat", config):
        assert [s.name for s in step.stages] == ["model", "temperature", "top-k", "min-p"]
        assert step.stages[0].survivors == tokenizer.vocab_size and step.stages[2].survivors <= 5
        assert all(s.chosen_rank is not None for s in step.stages)
        assert step.candidates_before == step.stages[0].top and step.candidates_after == step.stages[-1].top
        assert step.stages[-1].chosen_probability > 0


def test_presets_fill_every_sampler_control_with_valid_values() -> None:
    assert {"greedy", "local-LLM default (llama.cpp)", "creative"} <= set(SAMPLING_PRESETS)
    for name in SAMPLING_PRESETS:
        values = preset_values(name)
        assert set(values) == set(SAMPLER_FIELDS)
        SamplingConfig(**values)
    assert preset_values("greedy")["temperature"] == 0.0 and preset_values("greedy")["top_k"] == 0
    assert preset_values("local-LLM default (llama.cpp)") | {} == {
        **preset_values("default"), "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
    with pytest.raises(UserInputError, match="unknown sampling preset 'wild'; choose one of: default, greedy"):
        preset_values("wild")


# -- branching: forced tokens ---------------------------------------------------------------------------
def test_a_forced_token_continues_like_a_prompt_ending_in_it() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    prompt = tokenizer.encode("the cat")
    alternative = tokenizer.encode(" dog")[0]
    config = SamplingConfig(temperature=0.8, max_new_tokens=8, stop_at_eot=False, seed=5, top_candidates=2)
    branched = list(stream_generate_ids(model, tokenizer, prompt, config, forced=[alternative]))
    assert branched[0].token_id == alternative and branched[0].forced and not branched[1].forced
    assert branched[0].stages[0].chosen_rank is not None  # its rank under the model is reported too
    plain = list(stream_generate_ids(model, tokenizer, [*prompt, alternative], config.replace(max_new_tokens=7)))
    assert [s.token_id for s in branched[1:]] == [s.token_id for s in plain]
    with pytest.raises(UserInputError, match="outside this model's vocabulary"):
        list(stream_generate_ids(model, tokenizer, prompt, config, forced=[tokenizer.vocab_size + 3]))


def test_long_prompts_are_read_through_the_context_window_and_penalised_whole() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size, context_length=8)
    config = SamplingConfig(temperature=1.0, max_new_tokens=5, stop_at_eot=False, seed=0, dry_multiplier=0.8,
                            frequency_penalty=0.2, repetition_penalty=1.1)
    text = "the cat sat on the mat," * 2000
    assert len(list(stream_generate(model, tokenizer, text, config))) == 5


# -- decoding precision -----------------------------------------------------------------------------------
def test_int8_and_bf16_weights_stay_close_to_float32() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    for precision, tolerance in (("int8", 0.03), ("int8-dynamic", 0.03), ("bfloat16", 0.02)):
        quantized = QuantizedLinear(linear, precision)
        error = (quantized(x) - linear(x)).norm() / linear(x).norm()
        assert error < tolerance, (precision, float(error))
    assert QuantizedLinear(linear, "int8").weight.dtype == torch.int8


def test_quantized_decoding_model_is_cached_until_the_weights_change() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    assert decoding_model(model, "float32")[0] is model
    first, precision, _ = decoding_model(model, "int8")
    assert precision == "int8" and isinstance(first.lm_head, QuantizedLinear)
    assert model.lm_head.weight is model.token_embedding.weight  # the original stays tied and fp32
    assert decoding_model(model, "int8")[0] is first
    config = SamplingConfig(temperature=0, max_new_tokens=10, stop_at_eot=False)
    exact = [s.token_id for s in stream_generate(model, tokenizer, "the cat", config)]
    quantized = [s.token_id for s in stream_generate(model, tokenizer, "the cat", config.replace(precision="int8"))]
    assert len(quantized) == len(exact)
    with torch.no_grad():
        model.token_embedding.weight.mul_(2.0)
    assert decoding_model(model, "int8")[0] is not first


def test_auto_precision_chooses_the_fastest_only_when_clearly_faster() -> None:
    assert choose_precision({"float32": 1.0, "int8": 0.4})[0] == "int8"
    assert choose_precision({"float32": 1.0, "int8": 0.4, "bfloat16": 0.3})[0] == "bfloat16"
    assert choose_precision({"float32": 1.0, "int8": 0.9})[0] == "float32"  # within noise: stay exact
    assert choose_precision({"float32": 1.0, "int8": 2.0, "bfloat16": 40.0})[0] == "float32"


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_tries_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, native_bf16: bool) -> None:
    """Both machines simulated: an AVX2-only CPU (bf16 ~40x slower: never timed, never chosen) and one with
    AVX-512 BF16 where bf16 measured fastest."""
    import gpt.runtime

    monkeypatch.setattr(gpt.runtime, "cpu_has_native_bf16",
                        lambda: (native_bf16, "this CPU has avx512_bf16 (AVX512)" if native_bf16
                                 else "this CPU has no native bf16 (AVX2)"))
    monkeypatch.setattr(sampling, "_auto_choices", {})
    monkeypatch.setattr(sampling, "has_fbgemm", lambda: False)  # int8-dynamic is no candidate here
    timed = []

    def fake_seconds(model: GPT) -> float:
        precision = getattr(model.lm_head, "precision", "float32")
        timed.append(precision)
        return {"float32": 1.0, "int8": 0.5, "bfloat16": 0.25}[precision]

    monkeypatch.setattr(sampling, "_linear_pass_seconds", fake_seconds)
    model = random_model(40)
    _, precision, reason = decoding_model(model, "auto")
    if native_bf16:
        assert list(dict.fromkeys(timed)) == ["float32", "int8", "bfloat16"] and precision == "bfloat16"
    else:
        assert list(dict.fromkeys(timed)) == ["float32", "int8"] and precision == "int8"
        assert "no native bf16 (AVX2)" in reason
    assert "faster than float32" in reason


def test_auto_takes_the_fastest_of_several_rounds_so_a_busy_moment_does_not_decide(monkeypatch) -> None:
    monkeypatch.setattr(sampling, "_auto_choices", {})
    monkeypatch.setattr(sampling, "has_fbgemm", lambda: False)
    import gpt.runtime

    monkeypatch.setattr(gpt.runtime, "cpu_has_native_bf16", lambda: (False, "no bf16"))
    calls = {"float32": 0, "int8": 0}

    def busy_then_quiet(model: GPT) -> float:
        precision = getattr(model.lm_head, "precision", "float32")
        calls[precision] += 1
        if precision == "int8" and calls[precision] == 2:
            return 50.0  # the machine was busy during one int8 pass
        return {"float32": 1.0, "int8": 0.4}[precision]

    monkeypatch.setattr(sampling, "_linear_pass_seconds", busy_then_quiet)
    assert decoding_model(random_model(40), "auto")[1] == "int8"
    assert calls == {"float32": sampling.AUTO_ROUNDS + 1, "int8": sampling.AUTO_ROUNDS + 1}


@pytest.mark.skipif(not sampling.has_fbgemm(), reason="fbgemm's int8 kernels are x86 only")
def test_int8_dynamic_decodes_on_the_cpu() -> None:
    tokenizer = compact_tokenizer()
    model = random_model(tokenizer.vocab_size)
    config = SamplingConfig(temperature=0, max_new_tokens=6, stop_at_eot=False, precision="int8-dynamic")
    assert len(list(stream_generate(model, tokenizer, "the cat", config))) == 6
