"""The GPT model: a GPT-2-style decoder-only transformer with a few switchable design choices.

With the default options (`gelu`, `learned`, `layernorm`, bias on) the model is the same function as
Hugging Face's `GPT2LMHeadModel` given the same weights (see `gpt/hf.py`).

    idx (B, T) -> token embedding (+ learned position embedding) -> dropout
               -> n_layer x Block: x + Attention(Norm(x)); x + FeedForward(Norm(x))   (pre-norm)
               -> final Norm -> LM head (tied to the token embedding) -> logits (B, T, vocab_size)

Options (fields of `GPTConfig`): activation `gelu` (GPT-2's tanh approximation) | `relu` | `swiglu`,
position `learned` | `rope`, norm `layernorm` | `rmsnorm`, bias on/off, dropout, FFN width, context
length, vocabulary size. Presets (shape + recipe) are in `gpt/config.py`; `GPTConfig.from_preset`.

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

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gpt.errors import UserInputError
from gpt.fields import check_fields, from_dict, option

ACTIVATIONS = ("gelu", "relu", "swiglu")
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
    dropout: float = option(0.0, label="Dropout", help="dropout after embeddings, attention and FFN",
                            minimum=0.0, maximum=1.0, exclusive_maximum=True, step=0.05)
    bias: bool = option(True, label="Bias", help="biases in linear layers and LayerNorm (GPT-2: on)")
    activation: str = option("gelu", label="Activation", help="FFN activation (gelu: GPT-2's tanh form)",
                             choices=ACTIVATIONS)
    position: str = option("learned", label="Position encoding",
                           help="learned position table (GPT-2) or rotary embeddings", choices=POSITIONS)
    norm: str = option("layernorm", label="Normalisation", help="LayerNorm (GPT-2) or RMSNorm", choices=NORMS)

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
        """Number of parameters of `GPT(self)`, the tied LM head counted once."""
        d, h = self.n_embd, self.ffn_hidden_size
        norm = 2 * d if (self.norm == "layernorm" and self.bias) else d
        attention = 4 * d * d + (4 * d if self.bias else 0)
        if self.activation == "swiglu":
            ffn = 3 * d * h + ((2 * h + d) if self.bias else 0)
        else:
            ffn = 2 * d * h + ((h + d) if self.bias else 0)
        block = 2 * norm + attention + ffn
        return self._embedding_parameters() + self._position_parameters() + self.n_layer * block + norm

    def _embedding_parameters(self) -> int:
        return self.vocab_size * self.n_embd

    def _position_parameters(self) -> int:
        return self.context_length * self.n_embd if self.position == "learned" else 0

    def flops_per_token(self) -> int:
        """Estimated training FLOPs per token (forward + backward) at full context.

        6 * N + 12 * n_layer * n_embd * context_length (PaLM appendix B, as in nanoGPT), where N leaves
        out the learned position table (a lookup, no multiply) but keeps the token embedding, whose tied
        copy is the LM head matmul.
        """
        n = self.num_parameters() - self._position_parameters()
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
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) at positions start..start+T-1. `kv`: this layer's cache buffers (B, H, ctx, hs),
        holding the first `start` positions; the new keys/values are written into them.
        Returns (B, T, C) and, with `return_attention`, the probabilities (B, H, T, start+T)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
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
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=T > 1 and start == 0,
            )  # (B, H, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y)), probs


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> GELU (tanh approximation, as GPT-2) or ReLU -> Linear."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_hidden_size, bias=config.bias)
        self.act = nn.GELU(approximate="tanh") if config.activation == "gelu" else nn.ReLU()
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
    """Pre-norm transformer block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.ffn = SwiGLU(config) if config.activation == "swiglu" else FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attn(self.norm1(x), rope, kv, start, return_attention)
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
    One backward pass per forward: the buffers are handed to autograd (no `retain_graph`).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
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
                log_probs = torch.log_softmax((hidden_c[rows] @ weight_c.t()).float(), dim=1)  # (n, V) fp32
                picked = log_probs.gather(1, safe_targets[rows])  # (n, 1)
                total -= torch.where(valid[rows, None], picked, 0.0).sum()
                grad_logits = log_probs.exp_()  # softmax, in place
                grad_logits.scatter_add_(1, safe_targets[rows], torch.full_like(picked, -1.0))  # - one_hot
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
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        if ctx.grads is None:
            raise RuntimeError("LinearCrossEntropy supports one backward pass per forward (no retain_graph)")
        grad_hidden, grad_weight, count = ctx.grads
        ctx.grads = None  # autograd can take these buffers over instead of copying them
        scale = grad_output / count
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(scale).to(ctx.dtypes[0])
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(ctx.dtypes[1])
        return grad_hidden, grad_weight, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of the logits `hidden @ weight.T` against `targets`, never holding
    more than one block of logits (`loss_chunks`). hidden (N, C), weight (V, C), targets (N,) with
    `IGNORE_INDEX` ignored; NaN when every target is ignored, as `F.cross_entropy`.

    With gradients wanted it is `LinearCrossEntropy`; without (evaluation) a plain loop over the blocks.
    Under fp16 autocast (CUDA, with a gradient scaler) it is the whole-logits path: the fused gradients
    would be rounded to fp16 before the scaler's factor reaches them."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        return F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=IGNORE_INDEX)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets)
    total = sum(F.cross_entropy(F.linear(hidden[rows], weight).float(), targets[rows], ignore_index=IGNORE_INDEX,
                                reduction="sum") for rows in loss_chunks(hidden.size(0), weight.size(0)))
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
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied: one matrix for input and output
        self.apply(self._init_weights)
        residual_std = INIT_STD / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.proj.weight, mean=0.0, std=residual_std)

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

    def _run_blocks(
        self, idx: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final-normed hidden states (B, T, C) of idx (B, T), and the attention probabilities."""
        x = self._embed(idx, 0)  # (B, T, C)
        rope = self.rotary(0, idx.size(1)) if self.rotary is not None else None
        attentions = []
        for block in self.blocks:
            x, probs = block(x, rope, return_attention=return_attention)
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
            return None, chunked_cross_entropy(x.view(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def forward_with_attention(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, V) and, per layer, the attention probabilities (B, n_head, T, T) (explicit path)."""
        x, attentions = self._run_blocks(idx, return_attention=True)
        return self.lm_head(x), attentions

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
        rope = self.rotary(start, T) if self.rotary is not None else None
        for layer, block in enumerate(self.blocks):
            x, _ = block(x, rope, (cache.keys[layer], cache.values[layer]), start)
        cache.length = start + T
        return self.lm_head(self.final_norm(x[:, -1]))  # (B, V)


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
