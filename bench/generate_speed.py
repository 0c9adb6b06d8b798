"""Batch-1 generation speed: our KV-cached sampler against Hugging Face `generate` on identical weights.

A model of the chosen preset shape gets random weights, is exported with `gpt.hf.export_hf` and loaded by
`transformers.GPT2LMHeadModel`; both generate the same number of tokens from the same prompt, interleaved
(one run of each per round, the best round reported), so machine noise hits both alike. Rows:

- greedy: HF against ours in float32 (token ids checked identical: the exact path) and ours with int8,
  int8-dynamic (fbgemm, x86) and bfloat16 weights (bfloat16 only where the CPU has native bf16,
  `gpt.runtime.cpu_has_native_bf16`); for those, how many greedy tokens match float32; what `auto` picks;
- sampled (temperature 0.8, top-k 50, top-p 0.95): HF's warpers (a full sort per token) against our chain,
  in float32 and in what `auto` picks;
- with `--compact`, the same shape with a compact vocabulary (11,900 tokens, the size of the shipped model's
  corpus), whose output layer is a quarter of the full one;
- the shipped model (checkpoints/shakespeare-5min) as the app runs it (stage view on), and the change in
  validation loss that int8 / bfloat16 weights cost it (on the last 10% of tinyshakespeare.txt, the
  validation end of its contiguous split).

    python bench/generate_speed.py                      # seed preset, 200 tokens, CPU, torch's threads
    python bench/generate_speed.py --threads 1 --compact  # steadier on a machine other jobs share

With two threads, every small op waits for both; when other processes compete for the cores (a shared
machine), that wait dominates and the numbers swing tenfold, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpt.data.folder import token_id_map  # noqa: E402
from gpt.evaluate import evaluate  # noqa: E402
from gpt.hf import export_hf  # noqa: E402
from gpt.model import GPT, GPTConfig  # noqa: E402
from gpt.run import DEFAULT_RUN, Run  # noqa: E402
from gpt.runtime import cpu_capability, cpu_has_native_bf16  # noqa: E402
from gpt.sampling import SamplingConfig, decoding_model, has_fbgemm, stream_generate  # noqa: E402
from gpt.tokenizer import Tokenizer, gpt2_tokenizer  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
SAMPLED = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
COMPACT_VOCAB = 11_900
CORPUS = ROOT / "assets" / "data" / "tinyshakespeare.txt"


def ours(model: GPT, tokenizer: Tokenizer, config: SamplingConfig) -> tuple[float, list[int]]:
    start = time.perf_counter()
    ids = [step.token_id for step in stream_generate(model, tokenizer, PROMPT, config)]
    if model.token_embedding.weight.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, ids


def hugging_face(hf_model: torch.nn.Module, prompt_ids: list[int], tokens: int, sampled: bool,
                 device: str) -> tuple[float, list[int]]:
    prompt = torch.tensor([prompt_ids], device=device)
    options = {"do_sample": True, **SAMPLED} if sampled else {"do_sample": False}
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf_model.generate(prompt, max_new_tokens=tokens, pad_token_id=0, **options)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out[0, prompt.size(1):].tolist()


def hf_twin(model: GPT, device: str) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, folder)
        hf_model = GPT2LMHeadModel.from_pretrained(folder).eval().to(device)
    hf_model.generation_config.eos_token_id = None  # always generate exactly --tokens tokens
    return hf_model


def race(entrants: dict, repeats: int) -> dict[str, tuple[float, list[int]]]:
    """Best (seconds, token ids) of each entrant, run one after the other in every round."""
    best: dict[str, tuple[float, list[int]]] = {}
    for _ in range(repeats):
        for name, run in entrants.items():
            seconds, ids = run()
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, ids)
    return best


def agreement(ids: list[int], reference: list[int]) -> str:
    same = next((i for i, (a, b) in enumerate(zip(ids, reference, strict=True)) if a != b), len(reference))
    return f"first {same} of {len(reference)} greedy tokens as float32"


def report(title: str, results: dict, tokens: int, baseline: str, notes: dict | None = None) -> None:
    print(f"\n{title}")
    base = tokens / results[baseline][0]
    for name, (seconds, _) in results.items():
        rate = tokens / seconds
        note = f"  ({notes[name]})" if notes and name in notes else ""
        print(f"  {name:<34}{rate:8.1f} tokens/s  {rate / base:5.2f}x{note}")


def precisions() -> tuple[list[str], str]:
    """The lossy precisions worth timing here, and why bfloat16 is not among them (or "")."""
    native, evidence = cpu_has_native_bf16()
    names = ["int8", *(["int8-dynamic"] if has_fbgemm() else []), *(["bfloat16"] if native else [])]
    return names, "" if native else f"bfloat16 skipped: {evidence}"


def shape_rows(config: GPTConfig, tokens: int, repeats: int, device: str, label: str, sampled: bool) -> None:
    torch.manual_seed(0)
    model = GPT(config).eval().to(device)
    tokenizer = gpt2_tokenizer() if config.vocab_size == gpt2_tokenizer().vocab_size else \
        Tokenizer(range(config.vocab_size - 1))
    prompt_ids = tokenizer.encode(PROMPT)
    hf_model = hf_twin(model, device)
    lossy, skipped = precisions() if device == "cpu" else ([], "")
    _, auto, why = decoding_model(model, "auto")  # measured once here, outside the timing
    greedy = SamplingConfig(temperature=0, max_new_tokens=tokens, stop_at_eot=False)
    hf = "Hugging Face generate (float32)"
    entrants = {hf: lambda n=tokens: hugging_face(hf_model, prompt_ids, n, False, device),
                "ours, float32": lambda n=tokens: ours(model, tokenizer, greedy.replace(max_new_tokens=n))}
    for precision in lossy:
        entrants[f"ours, {precision} weights"] = lambda n=tokens, p=precision: ours(
            model, tokenizer, greedy.replace(max_new_tokens=n, precision=p))
    for run in entrants.values():
        run(8)  # warm-up (and the int8 / bf16 copies made)
    results = race(entrants, repeats)
    if results["ours, float32"][1] != results[hf][1]:
        raise SystemExit("float32 generations differ from Hugging Face: the weights or the math do not match")
    reference = results["ours, float32"][1]
    notes = {"ours, float32": "token ids identical to Hugging Face: yes"}
    notes.update({name: agreement(ids, reference) for name, (_, ids) in results.items()
                  if name.startswith("ours, ") and name != "ours, float32"})
    report(f"{label}: greedy, {tokens} tokens after a {len(prompt_ids)}-token prompt", results, tokens, hf, notes)
    print(f"  auto picks {auto}: {why}" + (f"; {skipped}" if skipped else ""))
    if not sampled:
        return
    chain = SamplingConfig(**SAMPLED, max_new_tokens=tokens, stop_at_eot=False, seed=0)
    entrants = {hf: lambda: hugging_face(hf_model, prompt_ids, tokens, True, device),
                "ours, float32": lambda: ours(model, tokenizer, chain)}
    if auto != "float32":
        entrants[f"ours, auto (-> {auto})"] = lambda: ours(model, tokenizer, chain.replace(precision="auto"))
    report(f"{label}: sampled (temperature 0.8, top-k 50, top-p 0.95)", race(entrants, repeats), tokens, hf)


def validation_tokens(tokenizer: Tokenizer) -> np.ndarray:
    """GPT-2 ids of the last 10% of the corpus, spelled with the run's own tokens (what `evaluate` reads)."""
    text = CORPUS.read_text(encoding="utf-8")
    return np.array(tokenizer.to_gpt2(tokenizer.encode(text[int(len(text) * 0.9):])), dtype=np.int64)


def shipped_rows(tokens: int, repeats: int) -> None:
    if not (DEFAULT_RUN / "model.safetensors").is_file():
        print(f"\nno shipped model at {DEFAULT_RUN}: skipped")
        return
    loaded = Run.open(DEFAULT_RUN).load("last")
    model, tokenizer = loaded.model, loaded.tokenizer
    lossy, skipped = precisions()
    app = SamplingConfig(max_new_tokens=tokens, stop_at_eot=False, seed=0, top_candidates=10)
    _, auto, why = decoding_model(model, "auto")
    entrants = {f"{precision}, as the app runs it": lambda p=precision: ours(model, tokenizer, app.replace(precision=p))
                for precision in dict.fromkeys(["float32", auto])}
    entrants["float32, no stage view"] = lambda: ours(model, tokenizer, app.replace(top_candidates=0))
    for precision in lossy:
        decoding_model(model, precision)
    c = model.config
    report(f"shipped model {DEFAULT_RUN.name} ({c.n_layer} layers x {c.n_embd}, vocabulary {c.vocab_size:,}, "
           f"context {c.context_length}): temperature 0.8, {tokens} tokens, stage view of 10 candidates",
           race(entrants, repeats), tokens, "float32, as the app runs it")
    print(f"  auto picks {auto}: {why}")
    val = validation_tokens(tokenizer)
    id_map = token_id_map(tokenizer)
    base, count = evaluate(model, val, batch_size=8, device=torch.device("cpu"), id_map=id_map)
    print(f"  validation loss over {count:,} tokens (last 10% of {CORPUS.name}): float32 {base:.4f} nats/token")
    for precision in lossy:
        loss, _ = evaluate(decoding_model(model, precision)[0], val, batch_size=8, device=torch.device("cpu"),
                           id_map=id_map)
        print(f"  {precision:>8} weights: {loss:.4f} ({loss - base:+.4f} nats/token, {(loss - base) / base:+.2%})")
    if skipped:
        print(f"  {skipped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="seed", choices=["tiny", "quick-cpu", "seed", "gpt2"])
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the best of each is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compact", action="store_true",
                        help=f"also the preset's shape with a compact vocabulary of {COMPACT_VOCAB:,} tokens")
    parser.add_argument("--no-shipped", dest="shipped", action="store_false", help="leave out the shipped model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig.from_preset(args.preset)
    room = config.context_length - len(gpt2_tokenizer().encode(PROMPT))
    if args.tokens > room:  # HF GPT-2 cannot go past its context; ours would crop and re-prefill
        print(f"--tokens {args.tokens} lowered to {room} to stay inside the {args.preset} context")
        args.tokens = room
    print(f"preset {args.preset} ({config.num_parameters():,} parameters), batch 1, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, CPU capability {cpu_capability()}, "
          f"torch {torch.__version__}")
    shape_rows(config, args.tokens, args.repeats, args.device, f"{args.preset}, full GPT-2 vocabulary", True)
    if args.compact:
        compact = GPTConfig(**{**config.to_dict(), "vocab_size": COMPACT_VOCAB})
        shape_rows(compact, args.tokens, args.repeats, args.device,
                   f"{args.preset}, compact vocabulary of {COMPACT_VOCAB:,}", False)
    if args.shipped and args.device == "cpu":
        shipped_rows(args.tokens, args.repeats)


if __name__ == "__main__":
    main()
