"""Training throughput on CPU: our GPT against Hugging Face `GPT2LMHeadModel` of the same shape.

    python -m bench.train_speed [--steps 10] [--rounds 3] [--context 128] [--batch 8]

Both models get the `seed` preset's shape (6 layers, 8 heads, n_embd 384, FFN 1536, GPT-2 vocabulary) at the
given context, fp32, and are trained by the same loop as `gpt/train.py`'s step: a random batch from Tiny
Shakespeare, forward, mean cross-entropy, backward, gradient clipping, fused AdamW (decay on matrices only).
The two models alternate step by step so that a change in machine load hits both; the figure per model is
the median over rounds. Like `python -m gpt train`, the process first makes glibc reuse freed memory
(`reuse_freed_cpu_memory`; both models gain from it; `--default-malloc` leaves the allocator alone, to
measure that lever). Prints tokens/s, the ratio, the core count and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from gpt.config import TrainConfig
from gpt.data import get_batch, load_split, prepare_dataset
from gpt.model import GPT, GPTConfig
from gpt.optim import configure_optimizers
from gpt.runtime import reuse_freed_cpu_memory

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_TOKENS_PER_SECOND = 586  # a popular minimal GPT trainer, this configuration, these 2 cores


def hf_model(config: GPTConfig) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.n_embd,
                           n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_hidden_size,
                           activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           attn_implementation="sdpa")
    return GPT2LMHeadModel(hf_config)


def make_step(model: torch.nn.Module, hf: bool, tokens, args: argparse.Namespace) -> Callable[[int], None]:
    (optimizer,) = configure_optimizers(model, TrainConfig(max_steps=1), torch.device("cpu"))
    generator = torch.Generator()
    model.train()

    def step(index: int) -> None:
        generator.manual_seed(index)
        x, y = get_batch(tokens, args.batch, args.context, generator)
        if hf:
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        else:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--data", help="prepared data folder (default: Tiny Shakespeare prepared in a temp dir)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is (the trainer's CLI makes it reuse freed memory)")
    args = parser.parse_args()
    if not args.default_malloc:
        reuse_freed_cpu_memory()

    if args.data:
        tokens = load_split(args.data, "train")
    else:
        folder = Path(tempfile.mkdtemp()) / "shakespeare"
        prepare_dataset([ROOT / "assets" / "data" / "tinyshakespeare.txt"], folder)
        tokens = load_split(folder, "train")
    config = GPTConfig.from_preset("seed", context_length=args.context)
    torch.manual_seed(0)
    models = {"ours (gpt.model.GPT)": (GPT(config), False), "Hugging Face GPT2LMHeadModel": (hf_model(config), True)}
    steps = {name: make_step(model, hf, tokens, args) for name, (model, hf) in models.items()}
    for step in steps.values():  # warm-up: allocator, kernels
        for index in range(2):
            step(index)
    print(f"seed shape ({config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd}, FFN "
          f"{config.ffn_hidden_size}, vocab {config.vocab_size}), context {args.context}, batch {args.batch}, fp32; "
          f"{sum(p.numel() for p in models['ours (gpt.model.GPT)'][0].parameters()):,} parameters")
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    tokens_per_step = args.batch * args.context
    names = list(steps)
    for round_index in range(args.rounds):
        seconds = dict.fromkeys(names, 0.0)
        for index in range(args.steps):  # alternate step by step (and who goes first) so load drift hits both
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                start = time.perf_counter()
                steps[name](1000 * round_index + index)
                seconds[name] += time.perf_counter() - start
        for name in names:
            rates[name].append(args.steps * tokens_per_step / seconds[name])
            print(f"round {round_index + 1}: {name:32s} {rates[name][-1]:8.0f} tokens/s")
    load_after = os.getloadavg()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ours, theirs = medians.values()
    print(f"\nmedian tokens/s: ours {ours:.0f}, Hugging Face {theirs:.0f}; ratio ours/HF = {ours / theirs:.2f}")
    print(f"ours / reference {REFERENCE_TOKENS_PER_SECOND} tokens/s = {ours / REFERENCE_TOKENS_PER_SECOND:.2f}")
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}, "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
