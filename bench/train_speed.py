"""Training throughput on CPU: our GPT against Hugging Face `GPT2LMHeadModel` of the same shape.

    python -m bench.train_speed [--preset seed] [--steps 10] [--rounds 3] [--context 128] [--batch 8]
                                [--precision fp32] [--with-full-logits] [--data DIR] [--default-malloc]

Both models get the preset's shape in GPT-2's architecture (default `seed`: 6 layers, 8 heads, n_embd 384,
FFN 1536, full GPT-2 vocabulary; `quick-cpu`: 4 x 192 with its compact vocabulary of the data, without its
QK-norm, which Hugging Face's GPT-2 lacks) at the given context and are
trained by the same loop as `gpt/train.py`'s step: a random batch from Tiny Shakespeare, forward, mean
cross-entropy, backward, gradient clipping, fused AdamW (decay on matrices only; both models, whatever the
preset's optimizer). Ours asks for the loss only (`model(x, y, return_logits=False)`, as the trainer does:
the chunked cross-entropy of `gpt/model.py`, which never holds the whole logits); Hugging Face's logits go
through `F.cross_entropy`. Both run in fp32; `--precision auto` runs ours at the precision the trainer
would choose here (bf16 autocast where `gpt.runtime`'s calibration measured bf16 faster on this CPU).
`--with-full-logits` adds ours with the whole logits and `F.cross_entropy` (the path before the chunked
loss) to the same loop, to measure that lever alone.

The models alternate step by step (and who goes first) so that a change in machine load hits all of them;
tokens/s per model is the median over rounds; a ratio is the median over steps of the paired step times
(robust to load spikes on a shared machine). Like `python -m gpt train`, the process first makes glibc
reuse freed memory (`reuse_freed_cpu_memory`; every model gains from it; `--default-malloc` leaves the
allocator alone, to measure that lever). Prints the CPU capability, the precision and why, tokens/s, the
ratios, the core count and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from gpt.config import PRESETS, TrainConfig, resolve_preset
from gpt.data import get_batch, load_split, prepare_dataset, token_id_map
from gpt.model import GPT, GPTConfig
from gpt.optim import configure_optimizers
from gpt.runtime import cpu_capability, low_precision_dtype, resolve_precision, reuse_freed_cpu_memory
from gpt.vocab import tokenizer_for

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_TOKENS_PER_SECOND = 586  # a popular minimal GPT trainer, the seed shape at context 128, these 2 cores
OURS = "ours (gpt.model.GPT)"
OURS_FULL_LOGITS = "ours, whole logits + F.cross_entropy"
HF = "Hugging Face GPT2LMHeadModel"


def hf_model(config: GPTConfig) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.n_embd,
                           n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_hidden_size,
                           activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           attn_implementation="sdpa")
    return GPT2LMHeadModel(hf_config)


def make_step(name: str, model: torch.nn.Module, tokens, id_map, autocast_dtype: torch.dtype | None,
              args: argparse.Namespace) -> Callable[[int], None]:
    """One training step of `name`'s model on batch number `index` (the same batches for every model)."""
    (optimizer,) = configure_optimizers(model, TrainConfig(max_steps=1), torch.device("cpu"))
    generator = torch.Generator()
    model.train()

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if name == HF:
            logits = model(input_ids=x).logits
            return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        return model(x, y, return_logits=name == OURS_FULL_LOGITS)[1]

    def step(index: int) -> None:
        generator.manual_seed(index)
        x, y = get_batch(tokens, args.batch, args.context, generator, id_map=id_map)
        autocast = (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "ffn_hidden")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", choices=sorted(PRESETS),
                        help="model shape (and vocabulary) of this preset")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                        help="ours (auto: what the trainer picks on this CPU); Hugging Face always runs fp32")
    parser.add_argument("--with-full-logits", action="store_true",
                        help="also time ours with the whole logits and F.cross_entropy, in the same loop")
    parser.add_argument("--data", help="prepared data folder (default: Tiny Shakespeare prepared in a temp dir)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is (the trainer's CLI makes it reuse freed memory)")
    args = parser.parse_args()
    if not args.default_malloc:
        reuse_freed_cpu_memory()

    folder = args.data
    if folder is None:
        folder = Path(tempfile.mkdtemp()) / "shakespeare"
        prepare_dataset([ROOT / "assets" / "data" / "tinyshakespeare.txt"], folder)
    tokens = load_split(folder, "train")
    _, preset_train = resolve_preset(args.preset)
    tokenizer = tokenizer_for(preset_train.vocab, folder, preset_train.vocab_limit)
    # The preset's shape only, in GPT-2's architecture (a preset's levers, e.g. QK-norm, have no HF twin).
    shape = {key: value for key, value in PRESETS[args.preset].model.items() if key in SHAPE_FIELDS}
    config = GPTConfig(**shape, context_length=args.context, vocab_size=tokenizer.vocab_size)
    choice = resolve_precision(args.precision, torch.device("cpu"), model_config=config)
    ours_dtype = None if choice.precision == "fp32" else low_precision_dtype(choice.precision)

    names = [OURS, HF] + ([OURS_FULL_LOGITS] if args.with_full_logits else [])
    steps = {}
    for name in names:
        torch.manual_seed(0)
        model = hf_model(config) if name == HF else GPT(config)
        steps[name] = make_step(name, model, tokens, token_id_map(tokenizer), None if name == HF else ours_dtype, args)
    for step in steps.values():  # warm-up: allocator, kernels
        for index in range(2):
            step(index)
    print(f"{args.preset} shape ({config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd}, FFN "
          f"{config.ffn_hidden_size}, vocab {config.vocab_size}), context {args.context}, batch {args.batch}; "
          f"{config.num_parameters():,} parameters")
    print(f"CPU capability {cpu_capability()}; ours in {choice.precision} ({choice.reason}), Hugging Face in fp32")
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}  # every timed step, in order
    tokens_per_step = args.batch * args.context
    for round_index in range(args.rounds):
        for index in range(args.steps):  # alternate step by step (and who goes first) so load drift hits all
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                start = time.perf_counter()
                steps[name](1000 * round_index + index)
                seconds[name].append(time.perf_counter() - start)
        for name in names:
            rates[name].append(args.steps * tokens_per_step / sum(seconds[name][-args.steps :]))
        print(f"round {round_index + 1}: " + ", ".join(f"{name} {rates[name][-1]:.0f}" for name in names)
              + " tokens/s")
    load_after = os.getloadavg()
    medians = {name: statistics.median(values) for name, values in rates.items()}

    def ratio(a: str, b: str) -> str:
        """How much faster a is than b: the median over steps of b's step time / a's step time, the two
        steps run back to back (a load spike that hits one step of a pair is an outlier, not a shift)."""
        return f"{statistics.median(tb / ta for ta, tb in zip(seconds[a], seconds[b], strict=True)):.2f}"

    print(f"\nmedian tokens/s: ours {medians[OURS]:.0f}, Hugging Face {medians[HF]:.0f}; "
          f"ours/HF {ratio(OURS, HF)} (median of {len(seconds[OURS])} paired steps)")
    if args.with_full_logits:
        print(f"ours with the whole logits: {medians[OURS_FULL_LOGITS]:.0f} tokens/s; chunked loss / whole logits "
              f"{ratio(OURS, OURS_FULL_LOGITS)}; whole logits / HF {ratio(OURS_FULL_LOGITS, HF)}")
    if args.preset == "seed" and args.context == 128 and args.batch == 8:
        print(f"ours / reference {REFERENCE_TOKENS_PER_SECOND} tokens/s = "
              f"{medians[OURS] / REFERENCE_TOKENS_PER_SECOND:.2f}")
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}, "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
