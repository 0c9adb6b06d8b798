"""The GPU check: one command that measures every CUDA path of the project on one GPU and prints one table.

    python -m bench.gpu_check [--out DIR] [--dry-run] [levers, see --help]

Sections, in the order they run (the table lists the tests first):
  matmul   the measured bf16 peak: an 8192^3 product on random data, timed with CUDA events (median)
  train    `gpt2` (124M, context 1024) and `seed` through the project's own `Trainer` (bf16 autocast,
           fused AdamW, torch.compile, flash SDPA): tokens/s over timed bursts of optimizer steps (CUDA
           events around `Trainer.run(max_steps=N)`, after warm-up steps that include compilation), MFU
           against the 989 TFLOP/s dense bf16 spec and against the matmul peak, peak memory
  generate batch-1 greedy generation (`gpt.sampling.stream_generate`, KV cache) against Hugging Face
           `generate` on identical weights (`gpt.hf.export_hf`), tokens/s and whether the ids agree
  tests    `pytest -m cuda tests/test_cuda.py` in a subprocess: pass / fail / skip counts
Each section's failure is recorded in its row and the others still run. Results go to DIR/gpu_check.json
(rewritten after every section, so a run stopped at its time limit still leaves what it measured) with the
tests' DIR/pytest_cuda.xml and .log; DIR is --out, else $OUT (the device tool brings $OUT back), else
bench/results/. Exit status 1 when a CUDA test or a section failed.

`--dry-run` runs the same code on the CPU with tiny shapes in seconds (tests/test_gpu_check.py runs it), so
the script cannot rot between device loans: `python -m bench.gpu_check --dry-run --out /tmp/gpu-dry`.

How to run it on the device (one H200, ~15 minutes of device time per task, each start costing minutes):
1. Here: `python -m bench.gpu_check --dry-run --out /tmp/gpu-dry` passes (tests/test_gpu_check.py runs it).
   Nothing needs installing there: the check imports only what the device image has (torch, triton,
   transformers, tiktoken, safetensors, numpy, pandas, pytest); the corpus is prepared without ftfy.
2. One `run` call with no carry, timeout_s 420 (the check starts no section after --time-limit 330 s; an
   estimate, not yet measured, is 5 minutes, which leaves a rerun of what failed, e.g. `--only train
   --time-limit 120` with timeout_s 240, in the rest of the 15 minutes):
       export PYTHONUNBUFFERED=1 && set -o pipefail && python3 -m bench.gpu_check 2>&1 | tee $OUT/gpu_check.log
   The table is the last thing printed (the reply's output_tail holds it); gpu_check.json, pytest_cuda.xml
   and the logs come back from $OUT. Then give_back unless you rerun at once. Leave the card's settings alone.
Levers to try within the device time: --no-compile, --compile-mode reduce-overhead (CUDA graphs) or
max-autotune (long compile), --gpt2-shape 16x8,32x4,64x2 (micro-batch x accumulation; each shape is a row
and compiles anew), --sdpa auto, --model-option KEY=VALUE (any GPTConfig field, e.g. a future chunked
cross-entropy), --train-option KEY=VALUE (any TrainConfig field, e.g. precision=fp16 or optimizer=muon).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpt.data import CleanConfig, prepare_dataset
from gpt.errors import UserInputError
from gpt.hf import export_hf
from gpt.model import GPT, GPTConfig
from gpt.sampling import SamplingConfig, stream_generate
from gpt.tokenizer import gpt2_tokenizer
from gpt.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "assets" / "data" / "tinyshakespeare.txt"
CUDA_TESTS = "tests/test_cuda.py"
SPEC_TFLOPS = 989.0  # H100/H200 SXM dense bf16 tensor-core peak (vendor datasheet), the MFU denominator
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
SECTIONS = ("matmul", "train", "generate", "tests")
TRAIN_PRESETS = ("gpt2", "seed")
# --dry-run: every preset becomes this shape (vocabulary untouched), every knob its smallest useful value.
DRY_RUN_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "context_length": 32}
DRY_RUN_DEFAULTS = {"gpt2_shape": "2x2", "seed_shape": "2x1", "steps": 2, "warmup": 1, "rounds": 2,
                    "matmul_size": 128, "matmul_repeats": 3, "gen_tokens": 8, "gen_repeats": 1,
                    "corpus_chars": 20_000}
GPU_DEFAULTS = {"gpt2_shape": "32x4", "seed_shape": "128x1", "steps": 10, "warmup": 3, "rounds": 2,
                "matmul_size": 8192, "matmul_repeats": 10, "gen_tokens": 200, "gen_repeats": 3,
                "corpus_chars": None}


# -- small pure helpers (tested on the CPU) ----------------------------------------------------------
def parse_shape(text: str) -> list[tuple[int, int]]:
    """'32x4,16x8' -> [(32, 4), (16, 8)]: micro-batch windows x gradient accumulation steps."""
    shapes = []
    for part in text.split(","):
        batch, sep, accum = part.strip().lower().partition("x")
        if not sep or not batch.isdigit() or not accum.isdigit() or int(batch) < 1 or int(accum) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not BATCHxACCUM (e.g. 32x4: 32 windows per "
                                             "micro-batch, 4 micro-batches per step)")
        shapes.append((int(batch), int(accum)))
    return shapes


def parse_option(text: str) -> tuple[str, object]:
    """'KEY=VALUE' -> (key, value): VALUE as JSON when it parses (numbers, true/false, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def matmul_flops(size: int) -> int:
    """FLOPs of one (size x size) @ (size x size) product: a multiply and an add per inner term."""
    return 2 * size**3


def mfu(tokens_per_second: float | None, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over a peak (None when either is unknown)."""
    if not tokens_per_second or not peak_flops:
        return None
    return tokens_per_second * flops_per_token / peak_flops


def first_difference(ours: list[int], theirs: list[int]) -> int | None:
    """Index of the first position where two id sequences differ (a length difference counts), else None."""
    for index, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return index
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


def parse_junit(path: str | Path) -> dict:
    """Counts and failed test ids from a pytest --junitxml file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors",
                                                                               "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for suite in suites for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "total": counts["tests"], "failed_tests": failed}


@dataclass
class Timing:
    seconds: float = math.nan


@contextlib.contextmanager
def device_timer(device: torch.device) -> Iterator[Timing]:
    """Seconds of the work inside: CUDA events on a GPU (the device synchronized before and after, so
    nothing queued earlier is counted and everything queued inside is), perf_counter on a CPU."""
    timing = Timing()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        yield timing
        end.record()
        torch.cuda.synchronize(device)
        timing.seconds = start.elapsed_time(end) / 1000
    else:
        begin = time.perf_counter()
        yield timing
        timing.seconds = time.perf_counter() - begin


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Bytes of the largest allocation high-water mark since the last reset (GPU only)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    """Drop compiled graphs and cached blocks between rows, so each row starts from an empty card."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def imported_packages() -> dict[str, str]:
    """Versions of the installed distributions this process imported: what the device must have."""
    providers = importlib.metadata.packages_distributions()
    names = {dist for module in list(sys.modules) for dist in providers.get(module.partition(".")[0], [])}
    versions = {}
    for name in sorted(names, key=str.lower):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


# -- the table ----------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "n/a"


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.1f} GiB" if value is not None else "n/a"


def _tflops(value: float) -> str:
    return f"{value:.1f} TFLOP/s" if value >= 10 else f"{value:.3g} TFLOP/s"


def _count(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def _row_error(row: dict) -> str | None:
    if "not_run" in row:
        return f"not run: {row['not_run']}"
    if "error" in row:
        return f"error: {row['error']}"
    return None


def format_table(results: dict) -> str:
    """The summary as a Markdown table (pasteable into the README) with a title line above it."""
    meta = results["meta"]
    title = (f"GPU check on {meta['device_name']} (torch {meta['torch']}, CUDA {meta['cuda'] or 'none'}, "
             f"CPU {meta['cpu_capability']}), {results.get('total_seconds', 0):.0f} s")
    if meta["dry_run"]:
        title = "DRY RUN on the CPU with tiny shapes (the figures mean nothing): " + title
    lines = [title, "", "| check | configuration | tokens/s | MFU (989 TFLOP/s spec) | MFU (measured peak) | "
             "peak memory | notes |", "|---|---|---|---|---|---|---|"]

    def add(*cells: str) -> None:
        lines.append("| " + " | ".join(cells) + " |")

    tests = results.get("tests", {"not_run": "not asked for"})
    notes = _row_error(tests) or (f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                                  f"{tests['skipped']} skipped ({tests['seconds']:.0f} s)")
    if tests.get("failed_tests"):
        notes += "; failed: " + ", ".join(tests["failed_tests"])
    add("CUDA tests", f"`pytest -m cuda {CUDA_TESTS}`", "", "", "", "", notes)

    matmul = results.get("matmul", {"not_run": "not asked for"})
    notes = _row_error(matmul) or f"{_tflops(matmul['tflops'])} (median of {matmul['repeats']})"
    what = f"{matmul['dtype']} {matmul['size']}^3, {matmul['timer']}" if "tflops" in matmul else ""
    add("matmul peak", what, "", "", "", "", notes)

    for row in results.get("training", []):
        what = f"{row['batch_size']}x{row['grad_accum_steps']}, compile {row['compile']}, sdpa {row['sdpa']}"
        if "parameters" in row:
            what = f"{row['parameters'] / 1e6:.0f}M, ctx {row['context_length']}, {row['precision']}, " + what
        notes = _row_error(row) or (f"step {1000 * row['step_seconds']:.1f} ms, {_tflops(row['tflops'])}; "
                                    f"trainer's own figure {_count(row['trainer_tokens_per_second'])} tokens/s; "
                                    f"loss {row['train_loss']:.2f}")
        add(f"train {row['preset']}", what, _count(row.get("tokens_per_second")), _pct(row.get("mfu_spec")),
            _pct(row.get("mfu_measured")), _gib(row.get("peak_memory_bytes")), notes)

    for row in results.get("generation", []):
        what = f"{row['dtype']}, greedy, batch 1, {row['new_tokens']} tokens"
        if "parameters" in row:
            what = f"{row['parameters'] / 1e6:.0f}M, " + what
        speed = notes = ""
        if _row_error(row):
            notes = _row_error(row)
        else:
            speed = f"{row['tokens_per_second']:,.0f} (HF {row['hf_tokens_per_second']:,.0f})"
            same = "yes" if row["first_difference"] is None else f"no, from token {row['first_difference']}"
            notes = f"{row['ratio']:.2f}x Hugging Face generate; identical ids: {same}"
        add(f"generate {row['preset']}", what, speed, "", "", _gib(row.get("peak_memory_bytes")), notes)

    peaks = [row["peak_memory_bytes"] for row in results.get("training", []) + results.get("generation", [])
             if row.get("peak_memory_bytes") is not None]
    lines += ["", f"peak GPU memory of the whole check: {_gib(max(peaks) if peaks else None)}"]
    return "\n".join(lines)


# -- sections -----------------------------------------------------------------------------------------
def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int,
                        inner: int = 10) -> dict:
    """FLOP/s of a large product on random data: median over `repeats` timings of `inner` products each
    (so launch gaps do not count), after warm-up (cuBLAS handle, kernel selection)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        with device_timer(device) as timing:
            for _ in range(inner):
                a @ b
        seconds.append(timing.seconds / inner)
    median = statistics.median(seconds)
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
            "timer": "CUDA events" if device.type == "cuda" else "perf_counter",
            "seconds_per_product": seconds, "tflops": matmul_flops(size) / median / 1e12}


def prepare_corpus(out_dir: Path, chars: int | None, repeats: int) -> Path:
    """The bundled Tiny Shakespeare (its first `chars` characters, `repeats` times over) prepared into
    out_dir/data with the project's own `prepare_dataset`. Without the mojibake repair: the corpus is plain
    ASCII (the repair changes nothing in it) and the device image has no ftfy."""
    text = CORPUS.read_text(encoding="utf-8")[:chars] * repeats
    source = out_dir / "corpus.txt"
    source.write_text(text, encoding="utf-8")
    prepare_dataset([source], out_dir / "data", clean_config=CleanConfig(fix_unicode=False))
    return out_dir / "data"


def train_throughput(preset: str, shape: tuple[int, int], data_dir: Path, device: torch.device,
                     args: argparse.Namespace, matmul_tflops: float | None) -> dict:
    """Tokens/s of the project's trainer: warm-up steps (compilation included), then `rounds` timed
    bursts of `steps` optimizer steps. The figure is the median burst."""
    batch, accum = shape
    model_options = {**(DRY_RUN_MODEL if args.dry_run else {}), **dict(args.model_option)}
    model_config = GPTConfig.from_preset(preset, **model_options)
    total_steps = args.warmup + args.rounds * args.steps
    # No evaluation, sample or snapshot inside the timed steps; a train row (the trainer's own figure) every step.
    timing_options = {"batch_size": batch, "grad_accum_steps": accum, "max_steps": total_steps + 1,
                      "eval_interval": total_steps + 1, "eval_batches": 1, "log_interval": 1, "sample_tokens": 0,
                      "snapshots": 0, "compile": args.compile, "device": device.type}
    train_config = TrainConfig.from_preset(preset, **{**timing_options, **dict(args.train_option)})
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as run_dir, attention_backend(args.sdpa):
        trainer = Trainer(model_config, train_config, data_dir, Path(run_dir) / "run", on_row=rows.append)
        if args.compile_mode:  # the trainer compiles with the default mode; this swaps in another one
            trainer.train_model = torch.compile(trainer.model, mode=args.compile_mode)
        begin = time.perf_counter()
        status = trainer.run(max_steps=args.warmup)  # step-0 evaluation and checkpoint, compilation
        warmup_seconds = time.perf_counter() - begin
        reset_peak_memory(device)
        bursts, timed_rows = [], []
        for _ in range(args.rounds):
            if status != "running":
                raise RuntimeError(f"the trainer stopped with status {status!r}: {rows[-1].get('message')}")
            first_row = len(rows)
            with device_timer(device) as timing:
                status = trainer.run(max_steps=args.steps)
            bursts.append(timing.seconds)
            timed_rows += [row for row in rows[first_row:] if row["kind"] == "train"]
        peak = peak_memory(device)
        seconds = statistics.median(bursts)
        tokens_per_second = args.steps * trainer.tokens_per_step / seconds
        flops_per_token = trainer.model_config.flops_per_token()
        result = {
            "parameters": trainer.model.num_parameters(), "context_length": trainer.model_config.context_length,
            "precision": trainer.precision, "tokens_per_step": trainer.tokens_per_step,
            "warmup_seconds": warmup_seconds, "burst_seconds": bursts, "step_seconds": seconds / args.steps,
            "tokens_per_second": tokens_per_second, "flops_per_token": flops_per_token,
            "tflops": tokens_per_second * flops_per_token / 1e12,
            "mfu_spec": mfu(tokens_per_second, flops_per_token, args.spec_tflops * 1e12),
            "mfu_measured": mfu(tokens_per_second, flops_per_token, matmul_tflops * 1e12 if matmul_tflops else None),
            "peak_memory_bytes": peak,
            "trainer_tokens_per_second": statistics.median(row["tokens_per_second"] for row in timed_rows),
            "trainer_mfu": statistics.median(row["mfu"] for row in timed_rows) if "mfu" in timed_rows[0] else None,
            "train_loss": timed_rows[-1]["train_loss"],
        }
        del trainer
    return result


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """`flash`: only the flash kernel may run (an error if it cannot), `auto`: PyTorch chooses."""
    return sdpa_kernel(SDPBackend.FLASH_ATTENTION) if name == "flash" else contextlib.nullcontext()


def generation_speed(preset: str, device: torch.device, args: argparse.Namespace) -> dict:
    """Greedy batch-1 tokens/s of our KV-cached sampler and of Hugging Face `generate` on the same weights."""
    from transformers import GPT2LMHeadModel

    dtype = getattr(torch, args.gen_dtype)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, **(DRY_RUN_MODEL if args.dry_run else {}))).eval()
    tokenizer = gpt2_tokenizer()
    prompt = tokenizer.encode(PROMPT)
    new_tokens = min(args.gen_tokens, model.config.context_length - len(prompt))  # HF cannot pass its context
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, folder)
        hf_model = GPT2LMHeadModel.from_pretrained(folder).eval()
    hf_model.generation_config.eos_token_id = None  # always exactly new_tokens tokens
    model.to(device=device, dtype=dtype)
    hf_model.to(device=device, dtype=dtype)
    prompt_ids = torch.tensor([prompt], device=device)

    def ours(count: int) -> list[int]:
        config = SamplingConfig(temperature=0, max_new_tokens=count, stop_at_eot=False)
        return [step.token_id for step in stream_generate(model, tokenizer, PROMPT, config)]

    def theirs(count: int) -> list[int]:
        with torch.inference_mode():
            out = hf_model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=False,
                                    max_new_tokens=count, pad_token_id=tokenizer.eot_id)
        return out[0, len(prompt):].tolist()

    ours(4), theirs(4)  # warm-up: kernels, caches, allocator
    reset_peak_memory(device)
    times: dict[str, list[float]] = {"ours": [], "hf": []}
    ids: dict[str, list[int]] = {}
    for _ in range(args.gen_repeats):
        for name, generate in (("ours", ours), ("hf", theirs)):
            with device_timer(device) as timing:
                ids[name] = generate(new_tokens)
            times[name].append(timing.seconds)
    rate = new_tokens / statistics.median(times["ours"])
    hf_rate = new_tokens / statistics.median(times["hf"])
    return {"parameters": model.num_parameters(), "dtype": args.gen_dtype, "prompt_tokens": len(prompt),
            "new_tokens": new_tokens, "seconds": times["ours"], "hf_seconds": times["hf"],
            "tokens_per_second": rate, "hf_tokens_per_second": hf_rate, "ratio": rate / hf_rate,
            "first_difference": first_difference(ids["ours"], ids["hf"]), "peak_memory_bytes": peak_memory(device)}


def run_cuda_tests(out_dir: Path, timeout: float) -> dict:
    """`pytest -m cuda tests/test_cuda.py` in a subprocess (its own CUDA context): counts from its junit XML."""
    xml, log = out_dir / "pytest_cuda.xml", out_dir / "pytest_cuda.log"
    xml.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               CUDA_TESTS]
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): {(done.stdout + done.stderr)[-500:]}")
    return {"returncode": done.returncode, "seconds": time.perf_counter() - begin, **parse_junit(xml)}


# -- the command ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Defaults shown as GPU / --dry-run.")
    parser.add_argument("--out", type=Path, help="results folder (default: $OUT if set, else bench/results/)")
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny shapes (seconds)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--time-limit", type=float, default=330.0, metavar="S",
                        help="start no section after S seconds (default 330, for a 420 s device call)")
    levers = parser.add_argument_group("training levers")
    levers.add_argument("--gpt2-shape", type=parse_shape, metavar="BxA[,BxA]",
                        help=f"micro-batch x accumulation of the gpt2 rows ({GPU_DEFAULTS['gpt2_shape']} / "
                             f"{DRY_RUN_DEFAULTS['gpt2_shape']})")
    levers.add_argument("--seed-shape", type=parse_shape, metavar="BxA[,BxA]",
                        help=f"the same for the seed rows ({GPU_DEFAULTS['seed_shape']} / "
                             f"{DRY_RUN_DEFAULTS['seed_shape']})")
    levers.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on / off)")
    levers.add_argument("--compile-mode", choices=("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                        help="a torch.compile mode instead of the trainer's default (reduce-overhead: CUDA graphs)")
    levers.add_argument("--sdpa", choices=("flash", "auto"), default="flash",
                        help="attention kernel: flash only (an error if it cannot run), or PyTorch's choice")
    levers.add_argument("--model-option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a GPTConfig field for every row (repeatable)")
    levers.add_argument("--train-option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig field for every row (repeatable), e.g. precision=fp16")
    levers.add_argument("--steps", type=int, help="optimizer steps per timed burst (10 / 2)")
    levers.add_argument("--warmup", type=int, help="untimed steps first, compilation included (3 / 1)")
    levers.add_argument("--rounds", type=int, help="timed bursts per row; the median is reported (2 / 2)")
    levers.add_argument("--corpus-chars", type=int, help="use only the first N characters of the corpus")
    levers.add_argument("--corpus-repeats", type=int, default=1, help="repeat the corpus N times (larger batches)")
    other = parser.add_argument_group("other sections")
    other.add_argument("--spec-tflops", type=float, default=SPEC_TFLOPS,
                       help=f"the spec peak for MFU (default {SPEC_TFLOPS:g}, H100/H200 dense bf16)")
    other.add_argument("--matmul-size", type=int, help="side of the timed square product (8192 / 128)")
    other.add_argument("--matmul-repeats", type=int, help="timings of the product, median reported (10 / 3)")
    other.add_argument("--gen-presets", default="gpt2,seed", help="presets to generate with (gpt2,seed)")
    other.add_argument("--gen-tokens", type=int, help="new tokens per generation (200 / 8)")
    other.add_argument("--gen-repeats", type=int, help="timed generations each, median reported (3 / 1)")
    other.add_argument("--gen-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="weights dtype of both generators")
    args = parser.parse_args(argv)
    defaults = DRY_RUN_DEFAULTS if args.dry_run else GPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, parse_shape(value) if name.endswith("_shape") else value)
    if args.compile is None:
        args.compile = not args.dry_run
    for name, low in (("steps", 1), ("rounds", 1), ("warmup", 0), ("matmul_size", 1), ("matmul_repeats", 1),
                      ("gen_tokens", 1), ("gen_repeats", 1), ("corpus_repeats", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}")
    shaped = sorted({"batch_size", "grad_accum_steps"} & {key for key, _ in args.train_option})
    if shaped:
        parser.error(f"give {', '.join(shaped)} with --gpt2-shape / --seed-shape, not --train-option")
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; run on the device (see the docstring) or use --dry-run")
    device = torch.device("cpu" if args.dry_run else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"meta": {
        "dry_run": args.dry_run, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__, "cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv[1:] if argv is None else argv,
        "options": {key: value if isinstance(value, int | float | str | bool | None) else str(value)
                    for key, value in vars(args).items()}}}
    failed = False

    def write(final: bool = False) -> None:
        results["total_seconds"] = time.perf_counter() - started
        if final:
            results["meta"]["packages"] = imported_packages()
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    def section(name: str, measure: Callable[[], dict], row: dict | None = None) -> dict:
        """Run one measurement; a failure (or the time limit) becomes the row's note, and the check goes on."""
        nonlocal failed
        row = dict(row or {})
        elapsed = time.perf_counter() - started
        if elapsed > args.time_limit:
            row["not_run"] = f"time limit ({elapsed:.0f} s > {args.time_limit:.0f} s)"
            return row
        print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
        try:  # one broken lever (a shape that does not fit, a compile error) must not cost the other rows
            row.update(measure())
        except Exception as error:  # noqa: BLE001 - recorded in the table and the JSON, with the traceback
            failed = True
            traceback.print_exc()
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            row["error"] = f"{type(error).__name__}: {message}"[:300]
        free_memory(device)
        return row

    if "matmul" in args.only:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        results["matmul"] = section("matmul peak", lambda: measure_matmul_peak(device, dtype, args.matmul_size,
                                                                                args.matmul_repeats))
        write()
    matmul_tflops = results.get("matmul", {}).get("tflops")
    if "train" in args.only:
        results["training"] = []
        with tempfile.TemporaryDirectory() as folder:
            data_dir = prepare_corpus(Path(folder), args.corpus_chars, args.corpus_repeats)
            for preset in TRAIN_PRESETS:
                for shape in getattr(args, f"{preset}_shape"):
                    row = {"preset": preset, "batch_size": shape[0], "grad_accum_steps": shape[1],
                           "compile": args.compile_mode or args.compile, "sdpa": args.sdpa}
                    results["training"].append(section(
                        f"train {preset} {shape[0]}x{shape[1]}",
                        lambda p=preset, s=shape: train_throughput(p, s, data_dir, device, args, matmul_tflops),
                        row))
                    write()
    if "generate" in args.only:
        results["generation"] = []
        for preset in [name.strip() for name in args.gen_presets.split(",") if name.strip()]:
            row = {"preset": preset, "dtype": args.gen_dtype, "new_tokens": args.gen_tokens}
            results["generation"].append(section(f"generate {preset}",
                                                 lambda p=preset: generation_speed(p, device, args), row))
            write()
    if "tests" in args.only:
        # the subprocess may run until a minute past the time limit, inside the device call's timeout
        timeout = max(60.0, args.time_limit + 60 - (time.perf_counter() - started))
        results["tests"] = section("pytest -m cuda", lambda: run_cuda_tests(args.out, timeout))
        tests = results["tests"]
        failed = failed or bool(tests.get("failed") or tests.get("errors"))
        write()
    write(final=True)
    print("\n" + format_table(results))
    print(f"\nresults: {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as error:
        sys.exit(f"error: {error}")
