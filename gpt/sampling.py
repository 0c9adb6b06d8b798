"""Text generation: the sampler chain, what each stage does to the distribution, and streaming decoding.

Each step turns the model's next-token logits into the distribution the token is drawn from, always in
this order (`CHAIN`; a stage whose control is off leaves the logits as they are):

 1. repetition penalty (CTRL, Keskar et al. 2019): the logit of every token that occurs in the penalty
    window is divided by the penalty when positive and multiplied by it when negative;
 2. frequency / presence penalties (OpenAI): logit[j] -= count[j] * frequency + (count[j] > 0) * presence,
    count[j] = occurrences of token j in the penalty window;
 3. DRY, "don't repeat yourself" (as in text-generation-webui and koboldcpp): when the text ends with a
    sequence that occurred before, the token that followed that earlier occurrence loses
    multiplier * base ** (match length - allowed length) from its logit, for matches of at least the
    allowed length; matches stop at the sequence breakers `DRY_SEQUENCE_BREAKERS` and at 50 tokens;
 4. temperature: logits / temperature; temperature 0 is greedy (the most likely token after 1-3, so the
    truncations below cannot change it);
 5. top-nσ (Tang et al. 2024): keep tokens whose logit is within n standard deviations of the largest;
 6. top-k: keep the k most likely tokens (ties with the k-th kept too);
 7. top-p, nucleus (Holtzman et al. 2020): keep the smallest set of most likely tokens reaching p;
 8. min-p (Nguyen et al. 2024): keep tokens at least min_p times as likely as the most likely one;
 9. typical-p, locally typical sampling (Meister et al. 2023): keep the tokens whose surprise -log p is
    closest to the distribution's entropy, until their probability reaches p;
then the token is drawn from the softmax with a `torch.Generator` seeded by `seed` (same seed, same text).
The penalty window is the last `penalty_window` tokens of the prompt and the answer (0 = all of both).
Truncations keep the most likely token, so the distribution is never empty. Temperature before the
truncations is Hugging Face's order; llama.cpp applies it last (for min-p that only rescales min_p:
min_p at temperature T first equals min_p ** T with temperature last).

`SAMPLING_PRESETS` name a few settings (greedy, the common local-LLM defaults, creative, ...).

`stream_generate` yields a `GenerationStep` per token with the new text (bytes of a multi-byte UTF-8
character are held back until the character is complete). With `top_candidates > 0` each step also
carries the stage view: for every stage the number of surviving candidates, the entropy, the most likely
tokens and the chosen token's rank and probability (`Stage`). `stream_generate_ids` continues token ids
(with `forced` tokens first: the branch of an answer at an alternative token).

Decoding precision (`precision`): "float32" is the exact model (token for token what Hugging Face gives
on the same weights). Batch-1 decoding is memory bound (every weight is read once per token), so fewer
bytes per weight is most of the speed: "int8" stores every matrix of the blocks and the output layer as
int8 per output row with a float scale (weight-only quantisation; activations go through bf16 into the
int8 kernel); "int8-dynamic" uses the same int8 rows in fbgemm's kernels, which also round each
activation vector to 8 bits on the fly (x86 CPUs); "bfloat16" stores them as bf16. "auto" times the
candidates on this model's own matrices (in turns, the fastest of 7 passes each) once per process and
model shape, and takes the fastest if it beats float32 clearly; bf16 is only a candidate where the CPU
has native bf16 (`gpt.runtime.cpu_has_native_bf16`), since elsewhere bf16 matmuls are many times slower.
"""

from __future__ import annotations

import codecs
import copy
import math
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.nn import functional as F

from gpt.errors import UserInputError, is_int, is_number
from gpt.fields import check_fields, option
from gpt.model import GPT, SlidingDecoder
from gpt.tokenizer import Tokenizer

PRECISIONS = ("float32", "int8", "int8-dynamic", "bfloat16", "auto")
DRY_SEQUENCE_BREAKERS = ("\n", ":", '"', "*")  # text-generation-webui's defaults
DRY_MAX_MATCH = 50  # longest match DRY measures (keeps base ** length finite)
AUTO_MIN_SPEEDUP = 1.2  # a lossy precision must beat float32 by this much for "auto" to choose it
CANDIDATE_SEARCH = 64  # top-p / typical-p look at this many tokens first and widen only when needed
AUTO_ROUNDS = 7  # timed passes per candidate for "auto" (the fastest counts)


@dataclass
class SamplingConfig:
    """The generation controls; validated at construction (`UserInputError` saying what is allowed)."""

    temperature: float = option(0.8, label="Temperature", minimum=0.0, step=0.05, ui_maximum=2.0,
                                help="divides the logits: below 1 sharper, above 1 flatter; 0 = greedy "
                                     "(always the most likely token)")
    top_k: int = option(0, label="Top-k", minimum=0, step=1, ui_maximum=200,
                        help="keep the k most likely tokens; 0 = off (k at or above the vocabulary keeps all)")
    top_p: float = option(1.0, label="Top-p (nucleus)", minimum=0.0, exclusive_minimum=True, maximum=1.0,
                          step=0.01, help="keep the smallest set of most likely tokens whose probability "
                                          "reaches p; 1 = off")
    min_p: float = option(0.0, label="Min-p", minimum=0.0, maximum=1.0, step=0.01,
                          help="keep tokens at least min_p times as likely as the most likely one; 0 = off")
    typical_p: float = option(1.0, label="Typical-p", minimum=0.0, exclusive_minimum=True, maximum=1.0,
                              step=0.01, help="locally typical sampling: keep the tokens whose surprise is "
                                              "closest to the entropy until their probability reaches p; 1 = off")
    top_n_sigma: float = option(0.0, label="Top-nσ", minimum=0.0, step=0.05, ui_maximum=5.0,
                                help="keep tokens whose logit is within n standard deviations of the "
                                     "largest logit; 0 = off")
    repetition_penalty: float = option(1.0, label="Repetition penalty", minimum=0.0, exclusive_minimum=True,
                                       step=0.01, ui_maximum=2.0,
                                       help="divides the positive logits (multiplies the negative ones) of "
                                            "tokens in the penalty window; 1 = off, above 1 discourages repeats")
    frequency_penalty: float = option(0.0, label="Frequency penalty", minimum=-2.0, maximum=2.0, step=0.05,
                                      help="subtracted from a token's logit once per occurrence in the penalty "
                                           "window; 0 = off, negative encourages repeats")
    presence_penalty: float = option(0.0, label="Presence penalty", minimum=-2.0, maximum=2.0, step=0.05,
                                     help="subtracted from the logit of every token that occurs in the penalty "
                                          "window; 0 = off, negative encourages repeats")
    penalty_window: int = option(0, label="Penalty window (tokens)", minimum=0, step=1, ui_maximum=1024,
                                 help="how many of the latest tokens (prompt and answer) the penalties and DRY "
                                      "look at; 0 = all of them")
    dry_multiplier: float = option(0.0, label="DRY multiplier", minimum=0.0, step=0.05, ui_maximum=5.0,
                                   help="penalise the token that would continue a repeat of earlier text; "
                                        "0 = off (0.8 is the usual setting)")
    dry_base: float = option(1.75, label="DRY base", minimum=1.0, step=0.05, ui_maximum=4.0,
                             help="how fast the DRY penalty grows with each token of the repeat")
    dry_allowed_length: int = option(2, label="DRY allowed length", minimum=1, step=1, ui_maximum=20,
                                     help="repeats up to this many tokens long go unpenalised")
    max_new_tokens: int = option(200, label="Max new tokens", minimum=1, step=1, ui_maximum=1000,
                                 help="the answer ends after this many tokens")
    stop_at_eot: bool = option(True, label="Stop at end of text",
                               help="end the answer when the model produces <|endoftext|>")
    seed: int | None = option(None, label="Seed", minimum=0, maximum=2**63 - 1, optional=True,
                              help="same seed, same text; empty = a new random draw each time")
    top_candidates: int = option(0, label="Candidates per stage", minimum=0, step=1, ui_maximum=50,
                                 help="how many of the most likely tokens each step reports per stage "
                                      "(the stage view); 0 = none")
    precision: str = option("float32", label="Decoding precision", choices=PRECISIONS,
                            help="float32 = exact; int8 / int8-dynamic / bfloat16 weights decode faster where "
                                 "the CPU has fast kernels, at a small cost in quality; auto = the fastest measured "
                                 "here")

    def __post_init__(self) -> None:
        # These three keep their own words: they say what the value means.
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise UserInputError(f"top_p must be in (0, 1] (1.0 = off), got {self.top_p!r}", field="top_p")
        if not is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise UserInputError(
                f"repetition_penalty must be a number > 0 (1.0 = off, above 1 discourages repeats), "
                f"got {self.repetition_penalty!r}", field="repetition_penalty")
        if self.seed is not None and not (is_int(self.seed) and 0 <= self.seed < 2**63):
            raise UserInputError(f"seed must be a non-negative integer below 2^63, or empty (random); "
                                 f"got {self.seed!r}",
                                 field="seed")
        check_fields(self)

    def replace(self, **changes: object) -> SamplingConfig:
        """A copy with some fields changed (validated again)."""
        return SamplingConfig(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Controls a preset sets; everything else (length, seed, precision, candidates) stays as the user has it.
SAMPLER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "top_n_sigma", "repetition_penalty",
                  "frequency_penalty", "presence_penalty", "penalty_window", "dry_multiplier", "dry_base",
                  "dry_allowed_length")
SAMPLING_PRESETS: dict[str, dict] = {
    "default": {},
    "greedy": {"temperature": 0.0},
    "pure sampling (the model as it is)": {"temperature": 1.0},
    "local-LLM default (llama.cpp)": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05},
    "precise": {"temperature": 0.5, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.1, "penalty_window": 64},
    "creative": {"temperature": 1.3, "min_p": 0.1, "dry_multiplier": 0.8},
    "typical": {"temperature": 1.0, "typical_p": 0.9},
    "hot with top-nσ": {"temperature": 2.0, "top_n_sigma": 1.0},
}
PRESET_NOTES = {
    "default": "the SamplingConfig defaults: temperature 0.8, no truncation",
    "greedy": "always the most likely token: the same text every time",
    "pure sampling (the model as it is)": "temperature 1, nothing removed: the model's own distribution",
    "local-LLM default (llama.cpp)": "llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05",
    "precise": "cool and narrow, with a mild repetition penalty over the last 64 tokens",
    "creative": "hot, with min-p 0.1 cutting the tail and DRY breaking loops (the settings their authors suggest)",
    "typical": "locally typical sampling with p = 0.9 at temperature 1",
    "hot with top-nσ": "temperature 2 stays readable: top-nσ keeps only logits near the best",
}


def preset_values(name: str) -> dict:
    """Every sampler field of preset `name` (the defaults for the controls it does not set)."""
    if name not in SAMPLING_PRESETS:
        raise UserInputError(f"unknown sampling preset {name!r}; choose one of: {', '.join(SAMPLING_PRESETS)}")
    defaults = SamplingConfig()
    return {key: SAMPLING_PRESETS[name].get(key, getattr(defaults, key)) for key in SAMPLER_FIELDS}


@dataclass
class Stage:
    """The distribution after one stage of the chain, for one generated token.

    `survivors`: tokens with probability > 0; `entropy`: in bits; `top`: the most likely (token id,
    probability) pairs; `chosen_rank`: 1-based rank of the token that was drawn (None: this stage removed
    it, which happens only for a forced token); `chosen_probability`: its probability here."""

    name: str
    setting: str
    survivors: int
    entropy: float
    top: list[tuple[int, float]]
    chosen_rank: int | None = None
    chosen_probability: float = 0.0


@dataclass
class GenerationStep:
    """One generated token. `text` is the newly completed text (may be "" while a character is partial).

    `finish_reason` is None except on the last step: "eot" (the model ended the text; `text` is then
    "", the token is not shown), "length" (max_new_tokens reached) or "stopped" (the caller's stop flag).
    `stages` is the stage view (with `top_candidates > 0`): the raw model first, the sampled distribution
    last; `candidates_before`/`candidates_after` are the `top` of those two."""

    text: str
    token_id: int
    candidates_before: list[tuple[int, float]] = field(default_factory=list)
    candidates_after: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    stages: list[Stage] = field(default_factory=list)
    forced: bool = False


# -- the stages, each on one row of logits (V,) -------------------------------------------------------------
def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float, window: int) -> torch.Tensor:
    """CTRL penalty on the tokens of the last `window` ids of `context` (1-D; window 0 = all)."""
    if penalty == 1.0 or context.numel() == 0:
        return logits
    recent = context[-window:] if window > 0 else context
    scores = logits.gather(0, recent)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(0, recent, scores)


def apply_frequency_presence(logits: torch.Tensor, context: torch.Tensor, frequency: float, presence: float,
                             window: int) -> torch.Tensor:
    """OpenAI's penalties: logits[j] - count[j] * frequency - (count[j] > 0) * presence, counting token j in
    the last `window` ids of `context` (0 = all)."""
    if (frequency == 0 and presence == 0) or context.numel() == 0:
        return logits
    recent = context[-window:] if window > 0 else context
    counts = torch.bincount(recent, minlength=logits.size(0))[: logits.size(0)].to(logits.dtype)
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def apply_dry(logits: torch.Tensor, context: torch.Tensor, multiplier: float, base: float, allowed_length: int,
              breakers: torch.Tensor, window: int = 0) -> torch.Tensor:
    """DRY on the last `window` ids of `context` (0 = all). `breakers`: bool (V,), True for the sequence
    breaker tokens.

    For each earlier position i holding the last token (whose next token is not a breaker) the match
    length is how many tokens, ending at i, equal the tokens ending the context (stopping at a breaker,
    at the start, or at `DRY_MAX_MATCH`); the token after i then loses
    multiplier * base ** (longest match - allowed_length) when the longest match >= allowed_length."""
    if multiplier == 0:
        return logits
    ids = context[-window:] if window > 0 else context
    n = ids.numel()
    if n < 2 or breakers[ids[-1]]:
        return logits
    starts = (ids[:-1] == ids[-1]).nonzero().squeeze(1)  # earlier positions of the last token
    following = ids[starts + 1]
    keep = ~breakers[following]
    starts, following = starts[keep], following[keep]
    if starts.numel() == 0:
        return logits
    lengths = torch.ones_like(starts)
    alive = torch.ones_like(starts, dtype=torch.bool)
    for back in range(1, min(DRY_MAX_MATCH, n - 1)):
        previous = ids[n - 1 - back]  # the token `back` places before the end of the text
        if breakers[previous]:
            break
        earlier = starts - back
        alive &= (earlier >= 0) & (ids[earlier.clamp(min=0)] == previous)
        if not alive.any():
            break
        lengths += alive.long()
    longest = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
    longest.scatter_reduce_(0, following, lengths, reduce="amax")
    exponent = (longest - allowed_length).to(logits.dtype)
    penalty = torch.where(longest >= allowed_length, multiplier * base ** exponent, 0.0)
    return logits - penalty


def dry_breakers(tokenizer: Tokenizer, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool (V,): the tokens that end a DRY match. As text-generation-webui does, a breaker string counts as
    the last token of 'a' + breaker (the form it takes after a word); breakers a compact vocabulary cannot
    spell are left out."""
    breakers = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    for text in DRY_SEQUENCE_BREAKERS:
        try:
            ids = tokenizer.encode("a" + text, unknown="eot")
        except UserInputError:
            continue
        if ids and ids[-1] != tokenizer.eot_id and ids[-1] < vocab_size:
            breakers[ids[-1]] = True
    return breakers


def filter_top_n_sigma(logits: torch.Tensor, n: float) -> torch.Tensor:
    """Keep logits >= max - n * std, the std over the finite logits (population std, as in the paper).
    n = 0: off."""
    if n <= 0:
        return logits
    finite = logits[torch.isfinite(logits)]
    threshold = finite.max() - n * finite.std(correction=0)
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties with the k-th kept too); the rest become -inf. k = 0: off."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _keep_leading_set(logits: torch.Tensor, probs: torch.Tensor, key: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep the tokens taken in descending `key` order until their probability reaches `mass` (the token
    that reaches it included). Only the leading candidates are ordered: a full sort of a 50k vocabulary
    costs more than the rest of the step, and the set is almost always small."""
    vocab = logits.size(-1)
    count = min(CANDIDATE_SEARCH, vocab)
    while True:
        order = torch.topk(key, count).indices
        cumulative = probs[order].cumsum(0)
        if cumulative[-1] >= mass or count == vocab:
            break
        count = min(count * 8, vocab)
    kept = int((cumulative - probs[order] < mass).sum())  # the probability before each token is below mass
    keep = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
    keep[order[: max(kept, 1)]] = True
    return logits.masked_fill(~keep, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability reaches p. p = 1: off."""
    if p >= 1.0:
        return logits
    probs = F.softmax(logits, dim=-1)
    return _keep_leading_set(logits, probs, probs, p)


def filter_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the largest probability. min_p = 0: off."""
    if min_p <= 0:
        return logits
    # p_j >= min_p * p_max  <=>  logit_j >= logit_max + log(min_p): no softmax needed
    return logits.masked_fill(logits < logits.max() + math.log(min_p), float("-inf"))


def filter_typical(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Locally typical sampling: order tokens by |-log p_j - H| (H the entropy, in nats), keep them in that
    order until their probability reaches p. p = 1: off."""
    if p >= 1.0:
        return logits
    log_probs = F.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nan_to_num(0.0).sum()
    distance = (-log_probs - entropy).abs()  # inf for removed tokens: they come last
    return _keep_leading_set(logits, probs, -distance, p)


def entropy_bits(probs: torch.Tensor) -> float:
    """Entropy of a distribution (V,) in bits."""
    positive = probs[probs > 0]
    return float(-(positive * positive.log2()).sum())


# -- the chain --------------------------------------------------------------------------------------------
CHAIN = ("repetition penalty", "frequency / presence", "DRY", "temperature", "top-nσ", "top-k", "top-p", "min-p",
         "typical-p")


def chain_settings(config: SamplingConfig) -> list[tuple[str, str | None]]:
    """(stage, its setting in words or None when it is off) for every stage of `CHAIN`, in order."""
    c = config
    window = f"the last {c.penalty_window} tokens" if c.penalty_window else "all tokens so far"
    greedy = c.temperature == 0

    def truncation(active: bool, text: str) -> str | None:
        return text if active and not greedy else None  # truncations keep the most likely token

    return [
        ("repetition penalty", f"{c.repetition_penalty:g} over {window}" if c.repetition_penalty != 1.0 else None),
        ("frequency / presence", f"-{c.frequency_penalty:g} per occurrence, -{c.presence_penalty:g} if present, "
                                 f"over {window}" if c.frequency_penalty or c.presence_penalty else None),
        ("DRY", f"{c.dry_multiplier:g} × {c.dry_base:g}^(match - {c.dry_allowed_length}) over {window}"
         if c.dry_multiplier else None),
        ("temperature", "0: greedy, the most likely token" if greedy
         else (f"÷ {c.temperature:g}" if c.temperature != 1.0 else None)),
        ("top-nσ", truncation(c.top_n_sigma > 0, f"n = {c.top_n_sigma:g}")),
        ("top-k", truncation(c.top_k > 0, f"k = {c.top_k}")),
        ("top-p", truncation(c.top_p < 1, f"p = {c.top_p:g}")),
        ("min-p", truncation(c.min_p > 0, f"min_p = {c.min_p:g}")),
        ("typical-p", truncation(c.typical_p < 1, f"p = {c.typical_p:g}")),
    ]


class Sampler:
    """The chain of one generation: the active stages of `config` in `CHAIN` order, and its random
    generator. `breakers` is `dry_breakers(...)` (needed only with DRY)."""

    def __init__(self, config: SamplingConfig, vocab_size: int, device: torch.device | str = "cpu",
                 breakers: torch.Tensor | None = None) -> None:
        c, window = config, config.penalty_window
        self.config = config
        self.greedy = c.temperature == 0
        if breakers is None:
            breakers = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.generator = None
        if c.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(c.seed)
        stages = {  # name -> function(logits, context)
            "repetition penalty": lambda x, ctx: apply_repetition_penalty(x, ctx, c.repetition_penalty, window),
            "frequency / presence": lambda x, ctx: apply_frequency_presence(x, ctx, c.frequency_penalty,
                                                                            c.presence_penalty, window),
            "DRY": lambda x, ctx: apply_dry(x, ctx, c.dry_multiplier, c.dry_base, c.dry_allowed_length,
                                            breakers, window),
            "temperature": lambda x, ctx: x / c.temperature,
            "top-nσ": lambda x, ctx: filter_top_n_sigma(x, c.top_n_sigma),
            "top-k": lambda x, ctx: filter_top_k(x, c.top_k),
            "top-p": lambda x, ctx: filter_top_p(x, c.top_p),
            "min-p": lambda x, ctx: filter_min_p(x, c.min_p),
            "typical-p": lambda x, ctx: filter_typical(x, c.typical_p),
        }
        self.settings = chain_settings(config)
        self.active = [(name, stages[name]) for name, setting in self.settings
                       if setting is not None and not (self.greedy and name == "temperature")]
        self.needs_context = any(name in ("repetition penalty", "frequency / presence", "DRY")
                                 for name, _ in self.active)

    def run(self, logits: torch.Tensor, context: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """[("model", logits), (stage, logits after it), ...] for the active stages, each fed the one before."""
        out = [("model", logits)]
        for name, stage in self.active:
            out.append((name, stage(out[-1][1], context)))
        return out

    def draw(self, logits: torch.Tensor) -> int:
        """The token: the most likely one when greedy, else a draw from softmax(logits) (inverse CDF: one
        uniform number per token, far cheaper than `torch.multinomial` over a large vocabulary)."""
        if self.greedy:
            return int(logits.argmax())
        probs = F.softmax(logits, dim=-1)
        cdf = probs.cumsum(0)
        u = torch.rand(1, generator=self.generator, device=logits.device) * cdf[-1]
        index = int(torch.searchsorted(cdf, u, right=True).clamp_(max=probs.numel() - 1))
        if probs[index] == 0:  # u rounded onto the very top of the CDF: take the last possible token
            index = int(probs.nonzero().max())
        return index

    def stage_view(self, staged: list[tuple[str, torch.Tensor]], token: int, n: int) -> list[Stage]:
        """`Stage`s for `run`'s output and the chosen token: top `n` candidates of each. Greedy ends with a
        one-token "temperature" stage (temperature 0 keeps only the most likely token)."""
        settings = dict(self.settings)
        settings["model"] = "the model's own probabilities"
        stages = []
        for name, logits in staged:
            stages.append(_stage(name, settings[name], logits, token, n))
        if self.greedy:
            best = int(staged[-1][1].argmax())
            one_hot = torch.full_like(staged[-1][1], float("-inf"))
            one_hot[best] = 0.0
            stages.append(_stage("temperature", settings["temperature"], one_hot, token, n))
        return stages


def _stage(name: str, setting: str, logits: torch.Tensor, token: int, n: int) -> Stage:
    probs = F.softmax(logits, dim=-1)
    chosen = logits[token]
    rank = int((logits > chosen).sum()) + 1 if torch.isfinite(chosen) else None
    return Stage(name=name, setting=setting, survivors=int(torch.isfinite(logits).sum()),
                 entropy=entropy_bits(probs), top=top_candidates(probs, n), chosen_rank=rank,
                 chosen_probability=float(probs[token]))


def next_token_probs(logits: torch.Tensor, context: torch.Tensor, config: SamplingConfig,
                     breakers: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution (V,) the next token is drawn from: the whole chain applied to raw logits (V,).

    Greedy (temperature 0) gives a one-hot distribution on the best token after the penalties."""
    sampler = Sampler(config, logits.size(-1), logits.device, breakers)
    final = sampler.run(logits.float(), context)[-1][1]
    if sampler.greedy:
        return F.one_hot(final.argmax(), logits.size(-1)).float()
    return F.softmax(final, dim=-1)


def top_candidates(probs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely (token_id, probability) pairs of a distribution (V,)."""
    if n <= 0:
        return []
    values, ids = torch.topk(probs, min(n, probs.size(-1)))
    return list(zip(ids.tolist(), values.tolist(), strict=True))


# -- decoding precision -----------------------------------------------------------------------------------
class QuantizedLinear(nn.Module):
    """A Linear for decoding with its weight stored in fewer bytes:

    - "int8": int8 rows with one scale each (weight-only); inputs go to the kernel in bf16;
    - "int8-dynamic": the same int8 rows in fbgemm's packed form, each input quantised to 8 bits on the fly
      (per call, its own range: a 7-bit range on CPUs without VNNI, where 8 bits could overflow);
    - "bfloat16": bf16 rows; inputs in bf16.
    The output and the bias stay in the input's dtype."""

    def __init__(self, linear: nn.Linear, precision: str) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.precision = precision
        self.out_features, self.in_features = weight.shape
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,): the row's largest |w| -> 127
        if precision == "int8":
            self.register_buffer("weight", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale.to(torch.bfloat16))
        elif precision == "int8-dynamic":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's quantized tensors say they are deprecated; fbgemm is not
                rows = torch.quantize_per_channel(weight, scale.double(), torch.zeros_like(scale, dtype=torch.long),
                                                  0, torch.qint8)
                self.packed = torch.ops.quantized.linear_prepack(rows, bias)
            self.reduce_range = not cpu_has_vnni()
            bias = None  # packed with the weight
        elif precision == "bfloat16":
            self.register_buffer("weight", weight.to(torch.bfloat16))
        else:
            raise ValueError(f"QuantizedLinear stores int8, int8-dynamic or bfloat16, not {precision}")
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (N, in)
        if self.precision == "int8-dynamic":
            y = torch.ops.quantized.linear_dynamic(flat.float().contiguous(), self.packed, self.reduce_range)
        elif self.precision == "int8":
            y = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.weight, self.scale)  # flat @ (w * s).T
        else:
            y = F.linear(flat.to(torch.bfloat16), self.weight)
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def cpu_has_vnni() -> bool:
    """Whether the CPU multiplies int8 with VNNI (no int16 overflow in fbgemm's 8-bit dot products)."""
    from gpt.runtime import cpu_flags

    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def has_fbgemm() -> bool:
    """Whether this PyTorch has fbgemm's int8 kernels (x86 builds)."""
    return bool({"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines))


def quantized_copy(model: GPT, precision: str) -> GPT:
    """A copy of `model` for decoding with every Linear of the blocks and the output layer stored in
    `precision` ("int8", "int8-dynamic" or "bfloat16"); the embeddings and norms stay as they are (the
    output layer is no longer tied to the embedding in the copy)."""
    device = model.token_embedding.weight.device
    if precision.startswith("int8") and device.type != "cpu":
        raise UserInputError(f"{precision} decoding runs on the CPU; on {device.type} use float32 or bfloat16",
                             field="precision")
    if precision == "int8-dynamic" and not has_fbgemm():
        raise UserInputError("int8-dynamic needs fbgemm's kernels, which this PyTorch build lacks (x86 only); "
                             "use int8", field="precision")
    prepared = copy.deepcopy(model).eval()
    for block in prepared.blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, QuantizedLinear(child, precision))
    prepared.lm_head = QuantizedLinear(model.lm_head, precision)
    return prepared


def _weights_version(model: GPT) -> tuple[int, ...]:
    """Changes whenever a parameter is modified in place (training, loading weights)."""
    return tuple(p._version for p in model.parameters())


def _linear_pass_seconds(model: GPT) -> float:
    """Seconds to push one token's activation (batch 1) through every matrix of the blocks and the output
    layer in turn: the memory-bound part of a decoding step."""
    layers = [m for m in model.blocks.modules() if isinstance(m, nn.Linear | QuantizedLinear)]
    layers.append(model.lm_head)
    device = model.token_embedding.weight.device
    inputs = {layer.in_features: torch.randn(1, layer.in_features, device=device) for layer in layers}
    with torch.inference_mode():
        start = time.perf_counter()
        for layer in layers:
            layer(inputs[layer.in_features])
        return time.perf_counter() - start


def time_candidates(models: dict[str, GPT], rounds: int = AUTO_ROUNDS) -> dict[str, float]:
    """The fastest of `rounds` passes (`_linear_pass_seconds`) of each model, taken in turns after one warm-up
    pass each, so a busy moment of the machine hits every candidate alike and the minimum is its own speed."""
    best = {name: math.inf for name in models}
    for attempt in range(rounds + 1):
        for name, model in models.items():
            seconds = _linear_pass_seconds(model)
            if attempt:
                best[name] = min(best[name], seconds)
    return best


def choose_precision(seconds: dict[str, float], bf16_note: str = "") -> tuple[str, str]:
    """The precision "auto" takes given measured `seconds` per candidate (float32 always among them): the
    fastest, if it beats float32 by `AUTO_MIN_SPEEDUP`; else float32. Returns (precision, why)."""
    best = min(seconds, key=seconds.get)
    measured = ", ".join(f"{name} {value * 1e3:.2f} ms" for name, value in seconds.items())
    note = f"; {bf16_note}" if bf16_note else ""
    speedup = seconds["float32"] / seconds[best] if seconds[best] > 0 else 1.0
    if best == "float32" or speedup < AUTO_MIN_SPEEDUP:
        return "float32", f"float32: nothing measured clearly faster here ({measured}){note}"
    return best, f"{best}: {speedup:.1f}x faster than float32 here ({measured}){note}"


_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {precision: (version, copy)}
_auto_choices: dict[tuple, tuple[str, str]] = {}
_prepare_lock = threading.Lock()


def _prepared_copy(model: GPT, precision: str) -> GPT:
    version = _weights_version(model)
    copies = _prepared.setdefault(model, {})
    cached = copies.get(precision)
    if cached is None or cached[0] != version:
        cached = (version, quantized_copy(model, precision))
        copies[precision] = cached
    return cached[1]


def auto_precision(model: GPT) -> tuple[str, str]:
    """(precision, why) for "auto": measured once per process for this model's shape on this machine."""
    from gpt.runtime import cpu_capability, cpu_has_native_bf16

    device = model.token_embedding.weight.device
    if device.type != "cpu":
        return "float32", f"float32: auto measures CPU kernels only, this model is on {device.type}"
    key = (repr(model.config), cpu_capability(), torch.get_num_threads())
    if key not in _auto_choices:
        native, evidence = cpu_has_native_bf16()
        candidates = ["float32", "int8", *(["int8-dynamic"] if has_fbgemm() else []), *(["bfloat16"] if native else [])]
        seconds = time_candidates({name: model if name == "float32" else _prepared_copy(model, name)
                                   for name in candidates})
        _auto_choices[key] = choose_precision(seconds, "" if native else f"bfloat16 not tried: {evidence}")
    return _auto_choices[key]


def decoding_model(model: GPT, precision: str) -> tuple[GPT, str, str]:
    """(the model to decode with, the precision it uses, why). "float32" is `model` itself; "int8",
    "int8-dynamic" and "bfloat16" are copies made once per model (again after its weights change);
    "auto" measures."""
    if precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}",
                             field="precision")
    with _prepare_lock:
        reason = "as asked"
        if precision == "auto":
            precision, reason = auto_precision(model)
        elif precision == "bfloat16" and model.token_embedding.weight.device.type == "cpu":
            from gpt.runtime import cpu_has_native_bf16

            native, evidence = cpu_has_native_bf16()
            if not native:
                reason = f"as asked, but {evidence}: expect bf16 to be slower than float32 here"
        if precision == "float32":
            return model, precision, reason
        return _prepared_copy(model, precision), precision, reason


# -- generation -------------------------------------------------------------------------------------------
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
    yield from stream_generate_ids(model, tokenizer, encode_prompt(tokenizer, prompt), config)


def stream_generate_ids(
    model: GPT, tokenizer: Tokenizer, prompt_ids: Sequence[int], config: SamplingConfig, forced: Sequence[int] = ()
) -> Iterator[GenerationStep]:
    """`stream_generate` from token ids. The first tokens are `forced` (taken instead of drawn, with their
    stage view computed as for any token; `GenerationStep.forced` marks them), then sampling goes on."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserInputError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}; "
            "use the tokenizer the model was trained with"
        )
    if not prompt_ids:
        raise UserInputError("nothing to continue: the prompt has no tokens")
    vocab = tokenizer.vocab_size
    bad = [token for token in [*prompt_ids, *forced] if not 0 <= int(token) < vocab]
    if bad:
        raise UserInputError(f"token id {bad[0]} is outside this model's vocabulary of {vocab} tokens")
    model.eval()
    decode_model, _, _ = decoding_model(model, config.precision)
    device = model.token_embedding.weight.device
    breakers = dry_breakers(tokenizer, vocab, device) if config.dry_multiplier else None
    sampler = Sampler(config, vocab, device, breakers)
    history = torch.empty(len(prompt_ids) + min(config.max_new_tokens, 1024), dtype=torch.long, device=device)
    history[: len(prompt_ids)] = torch.tensor(list(prompt_ids), dtype=torch.long)
    length = len(prompt_ids)
    text_stream = TextStream(tokenizer)
    decoder = SlidingDecoder(decode_model)
    with torch.inference_mode():
        logits = decoder.prefill(history[None, :length])[0]
    for index in range(config.max_new_tokens):
        with torch.inference_mode():
            logits = logits[:vocab].float()  # a padded model vocabulary never yields unknown ids
            staged = sampler.run(logits, history[:length] if sampler.needs_context else history[:0])
            is_forced = index < len(forced)
            token_id = int(forced[index]) if is_forced else sampler.draw(staged[-1][1])
            stages = sampler.stage_view(staged, token_id, config.top_candidates) if config.top_candidates else []
        if length == history.numel():
            history = torch.cat((history, torch.empty_like(history)))
        history[length] = token_id
        length += 1
        finish_reason = None
        if config.stop_at_eot and token_id == tokenizer.eot_id:
            finish_reason, text = "eot", text_stream.flush()
        else:
            text = text_stream.push(token_id)
            if index == config.max_new_tokens - 1:
                finish_reason, text = "length", text + text_stream.flush()
        yield GenerationStep(text, token_id, stages[0].top if stages else [], stages[-1].top if stages else [],
                             finish_reason, stages, is_forced)
        if finish_reason is not None:
            return
        with torch.inference_mode():
            logits = decoder.step(torch.tensor([token_id], device=device))[0]


def generate(model: GPT, tokenizer: Tokenizer, prompt: str, config: SamplingConfig) -> str:
    """The generated text (without the prompt), all at once."""
    return "".join(step.text for step in stream_generate(model, tokenizer, prompt, config))
