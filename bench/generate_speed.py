"""Batch-1 generation speed: our KV-cached sampler against Hugging Face `generate` on identical weights.

A model of the chosen preset shape gets random weights, is exported with `gpt.hf.export_hf` and loaded
by `transformers.GPT2LMHeadModel`; both then generate the same number of tokens greedily from the same
prompt (the token ids are checked to be identical). Prints tokens/s of each, the ratio and the cores.

    python bench/generate_speed.py                      # seed preset, 200 tokens, CPU
    python bench/generate_speed.py --preset gpt2 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt.hf import export_hf  # noqa: E402
from gpt.model import GPT, GPTConfig  # noqa: E402
from gpt.sampling import SamplingConfig, stream_generate  # noqa: E402
from gpt.tokenizer import gpt2_tokenizer  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


def ours(model: GPT, tokens: int) -> tuple[float, list[int]]:
    config = SamplingConfig(temperature=0, max_new_tokens=tokens, stop_at_eot=False)
    start = time.perf_counter()
    ids = [step.token_id for step in stream_generate(model, gpt2_tokenizer(), PROMPT, config)]
    if model.token_embedding.weight.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, ids


def hugging_face(hf_model: torch.nn.Module, tokens: int, device: str) -> tuple[float, list[int]]:
    prompt = torch.tensor([gpt2_tokenizer().encode(PROMPT)], device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf_model.generate(prompt, do_sample=False, max_new_tokens=tokens, pad_token_id=0)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out[0, prompt.size(1) :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="seed", choices=["tiny", "seed", "gpt2"])
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each (the best is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset)).eval()
    room = model.config.context_length - len(gpt2_tokenizer().encode(PROMPT))
    if args.tokens > room:  # HF GPT-2 cannot go past its context; ours would crop and re-prefill
        print(f"--tokens {args.tokens} lowered to {room} to stay inside the {args.preset} context")
        args.tokens = room
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, folder)
        hf_model = GPT2LMHeadModel.from_pretrained(folder).eval()
    hf_model.generation_config.eos_token_id = None  # always generate exactly --tokens tokens
    model.to(args.device)
    hf_model.to(args.device)

    ours(model, 8)  # warm-up
    hugging_face(hf_model, 8, args.device)
    our_times, hf_times = [], []
    for _ in range(args.repeats):
        seconds, our_ids = ours(model, args.tokens)
        our_times.append(seconds)
        seconds, hf_ids = hugging_face(hf_model, args.tokens, args.device)
        hf_times.append(seconds)
    if our_ids != hf_ids:
        raise SystemExit("the two generations differ: the weights or the math do not match")
    our_rate, hf_rate = args.tokens / min(our_times), args.tokens / min(hf_times)
    print(f"preset {args.preset} ({model.num_parameters():,} parameters), greedy, batch 1, "
          f"{args.tokens} new tokens after a {len(gpt2_tokenizer().encode(PROMPT))}-token prompt, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}")
    print(f"ours (KV cache):          {our_rate:8.1f} tokens/s")
    print(f"Hugging Face generate:    {hf_rate:8.1f} tokens/s")
    print(f"ratio ours / HF:          {our_rate / hf_rate:8.2f}x  (identical token ids: yes)")


if __name__ == "__main__":
    main()
