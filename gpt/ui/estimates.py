"""Back-of-the-envelope numbers the Train tab shows before a run starts.

`training_memory` is a rough estimate (weights, gradients and AdamW moments in fp32, plus stored
activations and the logits), good for "will this fit?" rather than exact accounting. It follows the
per-layer activation count of Korthikanti et al. 2022 (34·s·b·h bytes in 16-bit, plus 5·a·s²·b for
attention scores when they are materialised, as on CPU).
"""

from __future__ import annotations

from gpt.model import GPTConfig
from gpt.train import TrainConfig


def training_memory(model: GPTConfig, train: TrainConfig, precision: str, flash_attention: bool) -> dict[str, int]:
    """Estimated bytes: `state` (weights + grads + AdamW), `activations` (one micro-batch), `total`."""
    n = model.num_parameters()
    state = 16 * n  # fp32 weights, gradients, two AdamW moments
    s, b, d, a, layers = model.context_length, train.batch_size, model.n_embd, model.n_head, model.n_layer
    scale = 1.0 if precision in ("bf16", "fp16") else 2.0  # the 34·s·b·h count is for 16-bit activations
    per_layer = 34 * s * b * d + (0 if flash_attention else 5 * a * s * s * b)
    logits = 3 * b * s * model.vocab_size * 4  # logits, their softmax and gradient, in fp32
    activations = int(layers * per_layer * scale + logits)
    return {"state": state, "activations": activations, "total": state + activations}
