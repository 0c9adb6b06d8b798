"""Text generation: the sampling controls and a streaming generator over a KV-cached model.

Each step turns the model's next-token logits into a distribution with the controls, in this order:
1. repetition penalty (CTRL): logits of tokens seen in the last `penalty_window` tokens (0 = all of the
   prompt and the generated text) are divided by the penalty when positive, multiplied when negative;
2. temperature: logits / temperature; temperature 0 is greedy (the most likely token after step 1);
3. top-k: keep the k most likely tokens (0 = off);
4. top-p (nucleus): keep the smallest set of most likely tokens whose probability reaches p (1.0 = off);
then samples from it with a `torch.Generator` seeded by `seed` (same seed, same text).

`stream_generate` yields a `GenerationStep` per token with the new text (bytes of a multi-byte UTF-8
character are held back until the character is complete) and, with `top_candidates > 0`, the most likely
tokens with their probabilities before the controls (softmax of the raw logits) and after them (the
distribution actually sampled from). Text goes in and out through the run's `Tokenizer`, so compact
vocabularies work; prompt text the vocabulary cannot encode is reported with the offending pieces.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from gpt.errors import UserInputError, is_int, is_number
from gpt.model import GPT, SlidingDecoder
from gpt.tokenizer import Tokenizer


@dataclass
class SamplingConfig:
    """The generation controls; validated at construction (`UserInputError` saying what is allowed)."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    penalty_window: int = 0
    max_new_tokens: int = 200
    stop_at_eot: bool = True
    seed: int | None = None
    top_candidates: int = 0

    def __post_init__(self) -> None:
        if not is_number(self.temperature) or self.temperature < 0:
            raise UserInputError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise UserInputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise UserInputError(f"top_p must be in (0, 1] (1.0 = off), got {self.top_p!r}")
        if not is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise UserInputError(
                f"repetition_penalty must be a number > 0 (1.0 = off, above 1 discourages repeats), "
                f"got {self.repetition_penalty!r}"
            )
        if not is_int(self.penalty_window) or self.penalty_window < 0:
            raise UserInputError(
                f"penalty_window must be an integer >= 0 (0 = the whole context), got {self.penalty_window!r}"
            )
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise UserInputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.stop_at_eot, bool):
            raise UserInputError(f"stop_at_eot must be true or false, got {self.stop_at_eot!r}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise UserInputError(f"seed must be a non-negative integer or empty (random), got {self.seed!r}")
        if not is_int(self.top_candidates) or self.top_candidates < 0:
            raise UserInputError(f"top_candidates must be an integer >= 0, got {self.top_candidates!r}")


@dataclass
class GenerationStep:
    """One generated token. `text` is the newly completed text (may be "" while a character is partial).

    `finish_reason` is None except on the last step: "eot" (the model ended the text; `text` is then
    "", the token is not shown) or "length" (max_new_tokens reached).
    """

    text: str
    token_id: int
    candidates_before: list[tuple[int, float]] = field(default_factory=list)
    candidates_after: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None


# -- the controls, on one row of logits (V,) ------------------------------------------------------------
def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float, window: int) -> torch.Tensor:
    """CTRL penalty on the tokens of the last `window` ids of `context` (1-D; window 0 = all)."""
    if penalty == 1.0 or context.numel() == 0:
        return logits
    recent = context[-window:] if window > 0 else context
    scores = logits.gather(0, recent)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(0, recent, scores)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties with the k-th kept too); the rest become -inf. k = 0: off."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability reaches p. p = 1: off."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the most likely token always stays (mass 0 < p)
    drop = torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token_probs(logits: torch.Tensor, context: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """The distribution (V,) the next token is drawn from: all controls applied to raw logits (V,).

    Greedy (temperature 0) gives a one-hot distribution on the best token after the penalty."""
    logits = apply_repetition_penalty(logits.float(), context, config.repetition_penalty, config.penalty_window)
    if config.temperature == 0:
        return F.one_hot(logits.argmax(), logits.size(-1)).float()
    logits = filter_top_k(logits / config.temperature, config.top_k)
    return F.softmax(filter_top_p(logits, config.top_p), dim=-1)


def top_candidates(probs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely (token_id, probability) pairs of a distribution (V,)."""
    values, ids = torch.topk(probs, min(n, probs.size(-1)))
    return list(zip(ids.tolist(), values.tolist(), strict=True))


# -- generation -----------------------------------------------------------------------------------------
class TextStream:
    """Token ids in, text pieces out; bytes of an unfinished UTF-8 character wait for the next token.

    Bytes that can never form a character become U+FFFD, exactly as `tokenizer.decode` would show them."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token ("" while a character is still partial)."""
        return self._utf8.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """Whatever is held back, at the end of the text (U+FFFD for an unfinished character)."""
        return self._utf8.decode(b"", final=True)


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Model ids of the prompt; an empty prompt starts from <|endoftext|> (a document boundary). Pieces
    outside a compact vocabulary are spelled with shorter tokens (`prompt_note` says which)."""
    try:
        ids = tokenizer.encode(prompt)
    except UserInputError:
        shown = ", ".join(repr(piece) for piece in dict.fromkeys(tokenizer.unknown_tokens(prompt)))
        raise UserInputError(
            f"the prompt uses token(s) that this model's vocabulary of {tokenizer.vocab_size} tokens does not "
            f"have and cannot spell from smaller tokens: {shown}; rephrase the prompt without them"
        ) from None
    return ids or [tokenizer.eot_id]


def prompt_note(tokenizer: Tokenizer, prompt: str) -> str:
    """A line for the user when the prompt has pieces a compact vocabulary lacks ("" otherwise)."""
    unknown = list(dict.fromkeys(tokenizer.unknown_tokens(prompt)))
    if not unknown:
        return ""
    shown = ", ".join(repr(piece) for piece in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
    return (f"{len(unknown)} piece(s) of the prompt are not in this model's vocabulary of {tokenizer.vocab_size} "
            f"tokens and were spelled with smaller tokens it knows: {shown}")


def stream_generate(
    model: GPT, tokenizer: Tokenizer, prompt: str, config: SamplingConfig
) -> Iterator[GenerationStep]:
    """Generate text after `prompt`, one `GenerationStep` per token (batch 1, KV cache).

    Puts the model in eval mode. Raises `UserInputError` for a prompt the vocabulary cannot encode."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserInputError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}; "
            "use the tokenizer the model was trained with"
        )
    prompt_ids = encode_prompt(tokenizer, prompt)
    model.eval()
    device = model.token_embedding.weight.device
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    history = torch.empty(len(prompt_ids) + config.max_new_tokens, dtype=torch.long, device=device)
    history[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
    length = len(prompt_ids)
    text_stream = TextStream(tokenizer)
    decoder = SlidingDecoder(model)
    logits = decoder.prefill(history[None, :length])[0]
    for index in range(config.max_new_tokens):
        with torch.inference_mode():
            logits = logits[: tokenizer.vocab_size]  # a padded model vocabulary never yields unknown ids
            probs = next_token_probs(logits, history[:length], config)
            if config.temperature == 0:
                token = probs.argmax().view(1)
            else:
                token = torch.multinomial(probs, 1, generator=generator)
            history[length] = token[0]
            length += 1
            before, after = [], []
            if config.top_candidates:
                before = top_candidates(F.softmax(logits.float(), dim=-1), config.top_candidates)
                after = top_candidates(probs, config.top_candidates)
        token_id = int(token[0])
        finish_reason = None
        if config.stop_at_eot and token_id == tokenizer.eot_id:
            finish_reason, text = "eot", text_stream.flush()
        else:
            text = text_stream.push(token_id)
            if index == config.max_new_tokens - 1:
                finish_reason, text = "length", text + text_stream.flush()
        yield GenerationStep(text, token_id, before, after, finish_reason)
        if finish_reason is not None:
            return
        logits = decoder.step(token)[0]


def generate(model: GPT, tokenizer: Tokenizer, prompt: str, config: SamplingConfig) -> str:
    """The generated text (without the prompt), all at once."""
    return "".join(step.text for step in stream_generate(model, tokenizer, prompt, config))
