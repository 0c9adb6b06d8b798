"""The GPT model: a GPT-2-style decoder-only transformer with a few switchable design choices.

With the default options (`gelu`, `learned`, `layernorm`, bias on) the model is the same function as
Hugging Face's `GPT2LMHeadModel` given the same weights (see `gpt/hf.py`).

    idx (B, T) -> token embedding (+ learned position embedding) -> dropout
               -> n_layer x Block: x + Attention(Norm(x)); x + FeedForward(Norm(x))   (pre-norm)
               -> final Norm -> LM head (tied to the token embedding by default) -> logits (B, T, vocab_size)

Options (fields of `GPTConfig`): activation `gelu` (GPT-2's tanh approximation) | `relu` | `relu2` (ReLU
squared) | `swiglu`, position `learned` | `rope`, norm `layernorm` | `rmsnorm`, bias on/off, dropout, FFN
width, context length, vocabulary size, and the small-model speedrun levers (modded-nanogpt, nanochat):
`qk_norm`, an untied LM head (`tie_embeddings=False`), `logit_softcap`, `value_embeddings` (a second token
table mixed into each layer's values: v = a_l v + b_l ve), `x0_shortcuts` (each block reads
a_l x + b_l x0, x0 the input embedding), `zero_init_proj`. Defaults are GPT-2's. Presets (shape +
recipe) are in `gpt/config.py`; `GPTConfig.from_preset`.

Attention runs through `F.scaled_dot_product_attention`. `GPT.forward_with_attention` takes an explicit
path (softmax(QK^T / sqrt(d)) V written out) that also returns every layer's attention probabilities.

Loss without logits (training): `model(idx, targets, return_logits=False)` returns `(None, loss)` and never
holds the whole (B*T, vocab_size) logits or their gradient: `chunked_cross_entropy` computes the LM head and
the cross-entropy a block of rows at a time (with the full GPT-2 vocabulary, 8 x 128 tokens, each of those
tensors is 206 MB in fp32). With gradients on, each block's gradients are computed right away in the forward
pass (as Liger-Kernel's fused linear cross-entropy does), so the three LM-head matmuls are done once each and
nothing is recomputed. Same loss and gradients as `F.cross_entropy(lm_head(x))` within float rounding.

KV cache (generation):
    cache = model.new_cache(batch_size=1)          # KVCache: per-layer K/V buffers of context_length slots
    logits = model.forward_cached(idx, cache)      # idx (B, T) continues the cached sequence;
                                                   # returns next-token logits (B, vocab_size), cache grows by T
`forward_cached` refuses to go past `context_length`. `SlidingDecoder` handles long generations:
`prefill(ids)` then `step(token)` repeatedly; each returns next-token logits. When the cache is full and
another token arrives, the window is cropped to its most recent `keep` tokens (default 3/4 of the
context) and the cache is rebuilt from them by one prefill ("crop and re-prefill"). The logits it returns
are always exactly `model(decoder.window)[:, -1]`: the model sees at most `context_length` tokens and
positions always start at 0, which learned position embeddings require.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gpt.errors import UserInputError
from gpt.fields import check_fields, from_dict, option

ACTIVATIONS = ("gelu", "relu", "relu2", "swiglu")
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
NORM_EPS = 1e-5
ROPE_BASE = 10000.0
INIT_STD = 0.02
# `chunked_cross_entropy` holds at most this many bytes of fp32 logits at once. Each extra block costs a pass
# over the (V, C) weight gradient and thinner matmuls: on 2 CPU cores 2 blocks of the `seed` benchmark's
# 206 MB ran ~5% slower than 1 (bench/train_speed.py), so blocks stay big; the seed preset's own batch
# (16 x 256 tokens, 823 MB of logits) takes 4 blocks, and its peak memory per step drops from 6.0 to 1.6 GB.
LOSS_CHUNK_BYTES = 256 * 2**20
IGNORE_INDEX = -1  # targets equal to this are left out of the loss


@dataclass
class GPTConfig:
    """Shape and options of a GPT. Validated at construction (`UserInputError` with what to change).

    `ffn_hidden=None` means 4 * n_embd for gelu/relu, and for swiglu (which has three matrices instead of
    two) 8/3 * n_embd rounded up to a multiple of 64, which keeps the parameter count about the same.
    Presets (model shape + training recipe together) live in `gpt/config.py`.
    """

    vocab_size: int = option(50257, label="Vocabulary size", help="rows of the token embedding", minimum=1)
    context_length: int = option(1024, label="Context length", help="tokens the model sees at once", minimum=1,
                                 ui_maximum=2048)
    n_layer: int = option(12, label="Layers", help="transformer blocks", minimum=1, ui_maximum=48)
    n_head: int = option(12, label="Heads", help="attention heads per layer (must divide n_embd)", minimum=1)
    n_embd: int = option(768, label="Width (n_embd)", help="residual stream width", minimum=1)
    ffn_hidden: int | None = option(None, label="FFN width (0 = default)",
                                    help="hidden width of the feed-forward layer; unset: 4 x n_embd "
                                         "(SwiGLU: 8/3 x n_embd rounded to 64)", minimum=1, optional=True)
    dropout: float = option(0.0, label="Dropout", help="dropout after the embeddings and each attention and FFN "
                            "output, and on the attention weights unless attention_dropout is off",
                            minimum=0.0, maximum=1.0, exclusive_maximum=True, step=0.05)
    attention_dropout: bool = option(True, label="Dropout on attention weights",
                                     help="dropout also drops attention probabilities (GPT-2: on); off: only "
                                          "after the embeddings and each residual branch, and on a CPU "
                                          "attention keeps its fast kernel")
    bias: bool = option(True, label="Bias", help="biases in linear layers and LayerNorm (GPT-2: on)")
    activation: str = option("gelu", label="Activation", help="FFN activation (gelu: GPT-2's tanh form)",
                             choices=ACTIVATIONS)
    position: str = option("learned", label="Position encoding",
                           help="learned position table (GPT-2) or rotary embeddings", choices=POSITIONS)
    norm: str = option("layernorm", label="Normalisation", help="LayerNorm (GPT-2) or RMSNorm", choices=NORMS)
    qk_norm: bool = option(False, label="QK-norm", help="RMS-normalise each head's queries and keys before "
                           "attention (OLMo 2, modded-nanogpt)")
    tie_embeddings: bool = option(True, label="Tied LM head", help="the LM head reuses the token embedding "
                                  "(GPT-2); off: a separate output matrix")
    logit_softcap: float | None = option(None, label="Logit soft-cap (0 = off)", help="logits become "
                                         "cap x tanh(logits / cap) (Gemma 2, modded-nanogpt: 15-30)",
                                         minimum=0, exclusive_minimum=True, optional=True)
    value_embeddings: bool = option(False, label="Value embeddings", help="a second token embedding mixed "
                                    "into every layer's attention values (modded-nanogpt)")
    x0_shortcuts: bool = option(False, label="Input shortcuts (x0)", help="each block reads a learned mix of "
                                "the residual stream and the input embedding (modded-nanogpt)")
    zero_init_proj: bool = option(False, label="Zero-initialised projections", help="the residual output "
                                  "projections start at zero, so each block starts as the identity")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.n_embd % self.n_head != 0:
            divisors = [h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0]
            raise UserInputError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"n_head values that divide {self.n_embd}: {', '.join(map(str, divisors))}", field="n_head"
            )
        if self.position == "rope" and self.head_size % 2 != 0:
            raise UserInputError(
                f"RoPE needs an even head size, but n_embd / n_head = {self.n_embd} / {self.n_head} = "
                f"{self.head_size}; change n_embd or n_head, or use position 'learned'", field="position"
            )

    # -- derived sizes ------------------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden_size(self) -> int:
        """The FFN width actually used (resolves `ffn_hidden=None`)."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.activation == "swiglu":
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd

    def num_parameters(self) -> int:
        """Number of parameters of `GPT(self)` (a tied LM head counted once)."""
        d, h = self.n_embd, self.ffn_hidden_size
        norm = 2 * d if (self.norm == "layernorm" and self.bias) else d
        attention = 4 * d * d + (4 * d if self.bias else 0)
        if self.activation == "swiglu":
            ffn = 3 * d * h + ((2 * h + d) if self.bias else 0)
        else:
            ffn = 2 * d * h + ((h + d) if self.bias else 0)
        block = 2 * norm + attention + ffn + 2 * self.value_embeddings + 2 * self.x0_shortcuts  # + mixing scalars
        return self._embedding_parameters() + self._position_parameters() + self.n_layer * block + norm

    def _embedding_parameters(self) -> int:
        """Token tables: the embedding, an untied LM head, the value embedding."""
        return self.vocab_size * self.n_embd * (1 + (not self.tie_embeddings) + self.value_embeddings)

    def _position_parameters(self) -> int:
        return self.context_length * self.n_embd if self.position == "learned" else 0

    def flops_per_token(self) -> int:
        """Estimated training FLOPs per token (forward + backward) at full context.

        6 * N + 12 * n_layer * n_embd * context_length (PaLM appendix B, as in nanoGPT), where N leaves
        out the lookup-only tables (learned positions, the value embedding, the input embedding of an
        untied model) but keeps the LM head matmul (the tied token embedding's copy).
        """
        lookup_tables = self.value_embeddings + (not self.tie_embeddings)  # the input table when untied
        lookups = self._position_parameters() + lookup_tables * self.vocab_size * self.n_embd
        n = self.num_parameters() - lookups
        return 6 * n + 12 * self.n_layer * self.n_embd * self.context_length

    # -- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        """Build from a dict (e.g. a run's config.json); unknown keys are an error naming the allowed ones."""
        return from_dict(cls, data, "model")

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> GPTConfig:
        """A preset's model shape (see `gpt/config.py`) with some fields overridden."""
        from gpt.config import get_preset  # presets import this module: resolved at call time

        return cls.from_dict({**get_preset(name).model, **overrides})


# -- building blocks ------------------------------------------------------------------------------------
def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embedding tables (RoPE, "rotate half" layout as in GPT-NeoX / Llama)."""

    def __init__(self, head_size: int, context_length: int, base: float = ROPE_BASE) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size))  # (hs/2,)
        angles = torch.outer(torch.arange(context_length, dtype=torch.float64), inv_freq)  # (C, hs/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions start..start+length-1, each (length, hs/2)."""
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hs) queries or keys by their positions' angles."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention written out. q (B, H, T, hs), k and v (B, H, S, hs) with S >= T, the queries being
    the last T of the S positions. Returns the output (B, H, T, hs) and the probabilities (B, H, T, S)."""
    T, S = q.size(-2), k.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, S)
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    probs = F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return probs @ v, probs


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused QKV projection and an optional KV cache slot."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_size = config.n_head, config.head_size
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # residual projection
        # PyTorch's CPU attention with dropout_p > 0 ran 3.5x slower than without (7.1 ms against 2.0,
        # forward + backward at B8 x H4 x T128 x hs48), which is why attention dropout can be switched off.
        self.attention_dropout = config.dropout if config.attention_dropout else 0.0
        self.resid_dropout = nn.Dropout(config.dropout)
        self.qk_norm = config.qk_norm
        # v = value_mix[0] * v + value_mix[1] * ve, ve the value embedding of the tokens (modded-nanogpt's init)
        self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if config.value_embeddings else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
        return_attention: bool = False,
        ve: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) at positions start..start+T-1. `kv`: this layer's cache buffers (B, H, ctx, hs),
        holding the first `start` positions; the new keys/values are written into them. `ve` (B, T, C):
        the value embedding of the tokens, when the model has one.
        Returns (B, T, C) and, with `return_attention`, the probabilities (B, H, T, start+T)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        if self.value_mix is not None:
            v = self.value_mix[0] * v + self.value_mix[1] * ve
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_size,), eps=NORM_EPS), F.rms_norm(k, (self.head_size,), eps=NORM_EPS)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            keys, values = kv
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
            k, v = keys[:, :, : start + T], values[:, :, : start + T]  # (B, H, start+T, hs)
        probs = None
        if return_attention:
            y, probs = explicit_attention(q, k, v)
        else:
            # Same-length causal attention uses is_causal; one new query sees every cached key; a chunk
            # after cached positions needs the offset mask (is_causal aligns the mask top-left).
            mask = None
            if T > 1 and start > 0:
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            # PyTorch's CPU attention kernel runs bf16 2.3-2.5x slower than fp32 (forward + backward,
            # B8 x H4-8 x T128 x hs48, on an AMX CPU where bf16 matmuls run 4-10x faster), and q, k, v are
            # small next to the matmuls around them: under CPU autocast attention runs in fp32 (autocast
            # itself would cast them back to bf16).
            cpu_low_precision = q.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            with torch.autocast("cpu", enabled=False) if cpu_low_precision else contextlib.nullcontext():
                if cpu_low_precision:
                    q, k, v = q.float(), k.float(), v.float()
                y = F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=mask,
                    dropout_p=self.attention_dropout if self.training else 0.0,
                    is_causal=T > 1 and start == 0,
                )  # (B, H, T, hs)
            if cpu_low_precision:
                y = y.to(torch.get_autocast_dtype("cpu"))
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y)), probs


class ReLUSquared(nn.Module):
    """relu(x)^2 (Primer, So et al. 2021; modded-nanogpt's MLP activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> GELU (tanh approximation, as GPT-2), ReLU or ReLU² -> Linear."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_hidden_size, bias=config.bias)
        activations = {"gelu": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "relu2": ReLUSquared}
        self.act = activations[config.activation]()
        self.proj = nn.Linear(config.ffn_hidden_size, config.n_embd, bias=config.bias)  # residual projection
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))  # (B, T, C) -> (B, T, h) -> (B, T, C)


class SwiGLU(nn.Module):
    """Gated MLP: proj(silu(x W_gate) * (x W_up)); the gate and up projections share one fused Linear."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 2 * config.ffn_hidden_size, bias=config.bias)
        self.proj = nn.Linear(config.ffn_hidden_size, config.n_embd, bias=config.bias)  # residual projection
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, h) each
        return self.dropout(self.proj(F.silu(gate) * up))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + ffn(norm2(x)).

    With x0 shortcuts the block first replaces x by x0_mix[0] * x + x0_mix[1] * x0 (x0: the input
    embedding), starting as the identity (1, 0)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.ffn = SwiGLU(config) if config.activation == "swiglu" else FeedForward(config)
        self.x0_mix = nn.Parameter(torch.tensor([1.0, 0.0])) if config.x0_shortcuts else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
        return_attention: bool = False,
        x0: torch.Tensor | None = None,
        ve: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C); x0 (B, T, C) the input embedding (used with x0 shortcuts); ve: see attention."""
        if self.x0_mix is not None:
            x = self.x0_mix[0] * x + self.x0_mix[1] * x0
        attended, probs = self.attn(self.norm1(x), rope, kv, start, return_attention, ve)
        x = x + attended
        x = x + self.ffn(self.norm2(x))
        return x, probs


# -- the loss without the whole logits -------------------------------------------------------------------
def loss_chunks(rows: int, vocab_size: int) -> list[slice]:
    """Row blocks of about equal size, each at most `LOSS_CHUNK_BYTES` of fp32 logits (or one row)."""
    count = max(1, min(rows, math.ceil(4 * rows * vocab_size / LOSS_CHUNK_BYTES)))
    size = math.ceil(rows / count)
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the logits `hidden @ weight.T` against `targets`, one block of rows at a time.

    hidden (N, C), weight (V, C), targets (N,) with `IGNORE_INDEX` for rows to leave out. The forward pass
    also computes the gradients: per block, d loss / d logits = softmax - one_hot (up to the 1/count of the
    mean), turned into the block's logits in place, then the two matmuls that carry it to hidden and
    weight; the block is dropped before the next. So each of the LM head's three matmuls runs once, as in
    the plain path, and backward only scales the sums by grad_output / count. Under autocast the matmuls
    run in the autocast dtype and the softmax in fp32, as autocast runs `F.cross_entropy(F.linear(...))`.
    One backward pass per forward: the buffers are handed to autograd (no `retain_graph`). With `softcap`
    the logits are softcap x tanh(hidden @ weight.T / softcap), and the block's gradient is multiplied by
    that function's derivative, 1 - tanh².
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                softcap: float | None = None) -> torch.Tensor:
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else hidden.dtype
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device_type, enabled=False):
            hidden_c, weight_c = hidden.to(dtype), weight.to(dtype)  # (N, C), (V, C); no copy when same dtype
            valid = targets != IGNORE_INDEX  # (N,)
            count = valid.sum().to(torch.float32)
            keep = valid.to(dtype)[:, None]  # (N, 1): 1, or 0 where the target is ignored
            safe_targets = torch.where(valid, targets, 0)[:, None]  # (N, 1)
            total = torch.zeros((), device=hidden.device, dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden_c) if want_hidden else None
            grad_weight = None
            for rows in loss_chunks(hidden.size(0), weight.size(0)):
                logits = (hidden_c[rows] @ weight_c.t()).float()  # (n, V) fp32
                capped = None
                if softcap is not None:
                    capped = torch.tanh_(logits.div_(softcap))  # tanh(raw / softcap), in place
                    logits = capped * softcap
                log_probs = torch.log_softmax(logits, dim=1)
                picked = log_probs.gather(1, safe_targets[rows])  # (n, 1)
                total -= torch.where(valid[rows, None], picked, 0.0).sum()
                grad_logits = log_probs.exp_()  # softmax, in place
                grad_logits.scatter_add_(1, safe_targets[rows], torch.full_like(picked, -1.0))  # - one_hot
                if capped is not None:
                    grad_logits.mul_(1.0 - capped.square_())  # through softcap x tanh(raw / softcap)
                grad_logits = grad_logits.to(dtype)  # (n, V); ignored rows are zeroed on the small operands
                if want_hidden:
                    block_hidden = grad_hidden[rows]
                    torch.mm(grad_logits, weight_c, out=block_hidden)  # (n, C)
                    block_hidden.mul_(keep[rows])
                if want_weight:
                    kept = hidden_c[rows] * keep[rows]  # (n, C)
                    if grad_weight is None:
                        grad_weight = (grad_logits.t() @ kept).float()  # (V, C)
                    elif dtype == torch.float32:
                        grad_weight.addmm_(grad_logits.t(), kept)  # accumulates inside the matmul
                    else:
                        grad_weight += grad_logits.t() @ kept  # a low-precision block, summed in fp32
        ctx.grads = (grad_hidden, grad_weight, count)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        if ctx.grads is None:
            raise RuntimeError("LinearCrossEntropy supports one backward pass per forward (no retain_graph)")
        grad_hidden, grad_weight, count = ctx.grads
        ctx.grads = None  # autograd can take these buffers over instead of copying them
        scale = grad_output / count
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(scale).to(ctx.dtypes[0])
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(ctx.dtypes[1])
        return grad_hidden, grad_weight, None, None


def soft_cap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """softcap x tanh(logits / softcap), or the logits unchanged when softcap is None."""
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          softcap: float | None = None) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of the logits `soft_cap(hidden @ weight.T)` against `targets`, never holding
    more than one block of logits (`loss_chunks`). hidden (N, C), weight (V, C), targets (N,) with
    `IGNORE_INDEX` ignored; NaN when every target is ignored, as `F.cross_entropy`.

    With gradients wanted it is `LinearCrossEntropy`; without (evaluation) a plain loop over the blocks.
    Under fp16 autocast (CUDA, with a gradient scaler) it is the whole-logits path: the fused gradients
    would be rounded to fp16 before the scaler's factor reaches them."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        logits = soft_cap(F.linear(hidden, weight).float(), softcap)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, softcap)
    total = sum(F.cross_entropy(soft_cap(F.linear(hidden[rows], weight).float(), softcap), targets[rows],
                                ignore_index=IGNORE_INDEX, reduction="sum")
                for rows in loss_chunks(hidden.size(0), weight.size(0)))
    return total / (targets != IGNORE_INDEX).sum()


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated to `context_length` slots.

    `keys`/`values`: (n_layer, B, n_head, context_length, head_size); slots `0..length-1` are filled.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (config.n_layer, batch_size, config.n_head, config.context_length, config.head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = config.context_length
        self.length = 0

    def reset(self) -> None:
        self.length = 0


class GPT(nn.Module):
    """The language model. `forward(idx, targets)` for training, `forward_cached` for generation."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = (
            nn.Embedding(config.context_length, config.n_embd) if config.position == "learned" else None
        )
        self.rotary = Rotary(config.head_size, config.context_length) if config.position == "rope" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = make_norm(config)
        self.value_embedding = nn.Embedding(config.vocab_size, config.n_embd) if config.value_embeddings else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # tied: one matrix for input and output
        self.apply(self._init_weights)
        residual_std = INIT_STD / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            for proj in (block.attn.proj, block.ffn.proj):
                if config.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2 initialisation: normal(0, 0.02) weights, zero biases, norms at identity."""
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Parameters of this module, the tied LM head counted once."""
        return sum(p.numel() for p in self.parameters())

    # -- forward passes -------------------------------------------------------------------------------
    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        """Token (+ learned position) embedding of idx (B, T) at positions start.. -> (B, T, C)."""
        T = idx.size(1)
        if start + T > self.config.context_length:
            raise UserInputError(
                f"sequence of {start + T} tokens is longer than the model's context length "
                f"({self.config.context_length}); crop it to the last {self.config.context_length} tokens"
            )
        x = self.token_embedding(idx)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(start, start + T, device=idx.device))
        return self.dropout(x)

    def _value_embed(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The value embedding of idx (B, T) -> (B, T, C), or None when the model has none."""
        return self.value_embedding(idx) if self.value_embedding is not None else None

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of final-normed hidden states (..., C): the LM head, then the soft-cap if any."""
        return soft_cap(self.lm_head(x), self.config.logit_softcap)

    def set_dropout(self, p: float) -> None:
        """Train with dropout probability `p` from now on (a schedule's choice: `TrainConfig.dropout_start_fraction`);
        `config.dropout` keeps the run's planned value, and attention weights drop only where
        `config.attention_dropout` says so."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(module, CausalSelfAttention):
                module.attention_dropout = p if self.config.attention_dropout else 0.0

    def _run_blocks(
        self, idx: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final-normed hidden states (B, T, C) of idx (B, T), and the attention probabilities."""
        x = self._embed(idx, 0)  # (B, T, C)
        x0, ve = x, self._value_embed(idx)
        rope = self.rotary(0, idx.size(1)) if self.rotary is not None else None
        attentions = []
        for block in self.blocks:
            x, probs = block(x, rope, return_attention=return_attention, x0=x0, ve=ve)
            if probs is not None:
                attentions.append(probs)
        return self.final_norm(x), attentions

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) int64 -> logits (B, T, V); with targets (B, T) also the mean cross-entropy
        (targets equal to -1 are ignored). `return_logits=False` (with targets; for training) returns
        `(None, loss)` by `chunked_cross_entropy`, which never holds the whole logits or their gradient."""
        x, _ = self._run_blocks(idx, return_attention=False)  # (B, T, C)
        if targets is not None and not return_logits:
            return None, chunked_cross_entropy(x.view(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                               self.config.logit_softcap)
        logits = self.head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def forward_with_attention(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, V) and, per layer, the attention probabilities (B, n_head, T, T) (explicit path)."""
        x, attentions = self._run_blocks(idx, return_attention=True)
        return self.head(x), attentions

    # -- generation with a KV cache -------------------------------------------------------------------
    def new_cache(self, batch_size: int = 1) -> KVCache:
        weight = self.token_embedding.weight
        return KVCache(self.config, batch_size, weight.device, weight.dtype)

    @torch.inference_mode()
    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Continue the cached sequences with idx (B, T): next-token logits (B, V) after the last new token.

        The cache grows by T; positions continue from `cache.length`. Raises `UserInputError` when the
        cache would exceed the context length (use `SlidingDecoder` for long generations)."""
        start, T = cache.length, idx.size(1)
        x = self._embed(idx, start)  # (B, T, C)
        x0, ve = x, self._value_embed(idx)
        rope = self.rotary(start, T) if self.rotary is not None else None
        for layer, block in enumerate(self.blocks):
            x, _ = block(x, rope, (cache.keys[layer], cache.values[layer]), start, x0=x0, ve=ve)
        cache.length = start + T
        return self.head(self.final_norm(x[:, -1]))  # (B, V)


class SlidingDecoder:
    """Token-by-token decoding of a batch of sequences of any length, with a KV cache.

    The window (the tokens in the cache) holds at most `context_length` tokens. When it is full and a
    token arrives, the window keeps its last `keep` tokens (the new one included) and the cache is
    rebuilt from them by one prefill. `keep` defaults to 3/4 of the context: a re-prefill every
    context/4 tokens, with at least 3/4 of the context always visible. `keep=context_length` re-prefills
    every step, which is the exact "last context_length tokens" rule at the cost of speed.
    """

    def __init__(self, model: GPT, batch_size: int = 1, keep: int | None = None) -> None:
        context = model.config.context_length
        self.keep = max(1, (3 * context) // 4) if keep is None else keep
        if not 1 <= self.keep <= context:
            raise UserInputError(f"keep must be between 1 and the context length ({context}), got {keep}")
        self.model = model
        self.cache = model.new_cache(batch_size)
        self.tokens = torch.zeros(batch_size, context, dtype=torch.long, device=self.cache.keys.device)

    @property
    def window(self) -> torch.Tensor:
        """The tokens the cache holds, (B, length)."""
        return self.tokens[:, : self.cache.length]

    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Start over from idx (B, T) (cropped to its last context_length tokens): next-token logits (B, V)."""
        idx = idx[:, -self.cache.capacity :]
        self.cache.reset()
        self.tokens[:, : idx.size(1)] = idx
        return self.model.forward_cached(idx, self.cache)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence, token (B,) or (B, 1): next-token logits (B, V)."""
        token = token.view(-1, 1)
        length = self.cache.length
        if length >= self.cache.capacity:
            recent = torch.cat((self.tokens[:, length - self.keep + 1 : length], token), dim=1)
            return self.prefill(recent)
        self.tokens[:, length] = token[:, 0]
        return self.model.forward_cached(token, self.cache)
