"""Inspect tab speed and size: the handler's time and the JSON it sends, old against new, and the cost of the
trainer's head probe.

1. A random model of the `seed` shape (6 layers x 8 heads x 384, context 256, full GPT-2 vocabulary) in an
   app runs folder, and a text of exactly 128 tokens. New: `gpt.ui.inspect_tab.inspect_text` (the /inspect
   endpoint: every view but the logit lens, the head-type scores of the checkpoint included; first call
   and warm calls), then `logit_lens_view` and `embedding_views`, which the page chains after it. Old: the
   same views as the app built them before this change (`gpt/inspection.py` from `--old-rev`, loaded from
   git: the attention grid as one plotly subplot per head), side by side in the same process. Sizes are
   the JSON the components send (`postprocess` + json.dumps).
2. The head probe (`gpt.inspection.score_probe`) against a training step of the `quick-cpu` shape (4 x 4 x
   192, context 128, compact vocabulary of 11,900 tokens, batch 8, its optimizers in fp32): the share of
   training time that scoring the probe at every evaluation (every `eval_interval` = 100 steps) costs.

    python bench/inspect_speed.py                  # torch's threads; --threads 2 for a 2-core figure
    python bench/inspect_speed.py --old-rev 859b275 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402

from gpt import inspection  # noqa: E402
from gpt.config import resolve_preset  # noqa: E402
from gpt.model import GPT  # noqa: E402
from gpt.optim import configure_optimizers  # noqa: E402
from gpt.run import LAST_FILE, DataRef, RunConfig, create_run, save_weights  # noqa: E402
from gpt.runtime import cpu_capability  # noqa: E402
from gpt.tokenizer import gpt2_tokenizer  # noqa: E402
from gpt.ui import inspect_tab  # noqa: E402
from gpt.ui.common import AppDirs  # noqa: E402

CORPUS = ROOT / "assets" / "data" / "tinyshakespeare.txt"
TOKENS = 128
COMPACT_VOCAB = 11_900


def text_of(tokens: int) -> str:
    """A Tiny Shakespeare passage of exactly `tokens` GPT-2 tokens."""
    tokenizer = gpt2_tokenizer()
    return tokenizer.decode(tokenizer.encode(CORPUS.read_text(encoding="utf-8")[:5000])[:tokens])


def sent_bytes(values: list) -> int:
    """The JSON size of handler outputs as Gradio sends them (plots as plotly JSON, tables as records,
    HTML and markdown as strings; states stay on the server)."""
    plot, table = gr.Plot(render=False), gr.Dataframe(render=False)
    sent = []
    for value in values:
        if hasattr(value, "to_plotly_json"):
            sent.append(plot.postprocess(value).model_dump())
        elif hasattr(value, "to_dict") and hasattr(value, "columns"):
            sent.append(table.postprocess(value).model_dump())
        elif isinstance(value, str | int | float) or value is None or (isinstance(value, dict) and "__type__" in value):
            sent.append(value)
    return len(json.dumps(sent, default=str))


class Timing:
    """Wall-clock seconds of a first call and of the best of the warm calls (the one other jobs on a shared
    machine disturbed least), with its CPU seconds (all threads; with 2 threads the wall time on an idle
    machine lies between cpu / 2 and cpu)."""

    def __init__(self, function, repeats: int) -> None:
        start = time.perf_counter()
        self.result = function()
        self.first = time.perf_counter() - start
        walls, cpus = [], []
        for _ in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            self.result = function()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        best = walls.index(min(walls))
        self.warm, self.cpu = walls[best], cpus[best]

    def __str__(self) -> str:
        return f"first {self.first:6.2f} s, warm {self.warm:6.2f} s ({self.cpu:5.2f} CPU s)"


def old_inspection(rev: str):
    """`gpt/inspection.py` as it was at `rev` (figures and numbers in one module), or None without git."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:gpt/inspection.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"(old code not available from git revision {rev}: {error})")
        return None
    path = Path(tempfile.mkdtemp(prefix="old-inspection-")) / "old_inspection.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_inspection", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_inspection"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def old_handler(old, loaded, text: str) -> list:
    """What the old /inspect handler computed and sent (its body at the old revision, minus the dropdowns)."""
    maps = old.compute_attention(loaded.model, loaded.tokenizer, text)
    losses = old.token_losses(loaded.model, loaded.tokenizer, text)
    return ["summary", old.attention_grid_figure(maps), old.attention_head_figure(maps, 0, 0),
            old.head_view_figure(maps, 0, 0), old.head_statistics(maps), old.token_loss_html(losses, loaded.tokenizer)]


def inspect_bench(repeats: int, old_rev: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="inspect-bench-"))
    dirs = AppDirs(data=root / "data", runs=root / "runs")
    model_config, _ = resolve_preset("seed")
    torch.manual_seed(0)
    model = GPT(model_config)
    create_run(dirs.runs / "seed-random", RunConfig(model=model_config, train=None, data=DataRef(),
                                                    tokenizer=gpt2_tokenizer()))
    save_weights(model, dirs.runs / "seed-random" / LAST_FILE, step=0)
    text = text_of(TOKENS)
    print(f"seed shape ({model_config.n_layer} layers x {model_config.n_head} heads x {model_config.n_embd}, "
          f"vocabulary {model_config.vocab_size:,}), a text of {TOKENS} tokens:")
    new = Timing(lambda: inspect_tab.inspect_text(dirs, "seed-random", "last", text), repeats)
    lens = Timing(lambda: inspect_tab.logit_lens_view(dirs, "seed-random", "last", text), repeats)
    embeddings = Timing(lambda: inspect_tab.embedding_views(dirs, "seed-random", "last"), repeats)
    sizes = [sent_bytes(list(timing.result)) for timing in (new, lens, embeddings)]
    grid = len(json.dumps(new.result[1]))
    print(f"  new /inspect      {new}; sends {sizes[0] / 1e6:5.2f} MB (attention grid {grid / 1e6:.2f} MB); the "
          "first call loads the checkpoint and scores its probe")
    print(f"  new /logit_lens   {lens}; sends {sizes[1] / 1e6:5.2f} MB")
    print(f"  new /embeddings   {embeddings}; sends {sizes[2] / 1e6:5.2f} MB")
    warm, cpu = new.warm + lens.warm + embeddings.warm, new.cpu + lens.cpu + embeddings.cpu
    print(f"  new, one text     warm {warm:6.2f} s ({cpu:5.2f} CPU s), {sum(sizes) / 1e6:5.2f} MB (the three, chained)")
    probe = inspection.make_probe(model_config.context_length, range(50_000), gpt2_tokenizer().eot_id, seed=1,
                                  text_tokens=np.random.default_rng(0).integers(0, 50_000, 40_000))
    scoring = Timing(lambda: inspection.score_probe(model, probe), max(1, repeats // 2))
    print(f"  head probe of a checkpoint (with {len(probe.text)} validation windows; once per checkpoint file, "
          f"in the first call): {scoring.warm:.2f} s ({scoring.cpu:.2f} CPU s)")
    old = old_inspection(old_rev)
    if old is not None:
        loaded = inspect_tab.load_picked(dirs, "seed-random", "last")
        before = Timing(lambda: old_handler(old, loaded, text), repeats)
        old_size, old_grid = sent_bytes(before.result), sent_bytes([before.result[1]])
        print(f"  old /inspect ({old_rev}) {before}; sends {old_size / 1e6:5.2f} MB (attention grid "
              f"{old_grid / 1e6:.2f} MB)")
        print(f"  old /inspect over new /inspect: {before.cpu / new.cpu:.1f}x the CPU time, "
              f"{old_size / sizes[0]:.1f}x the bytes")


def probe_bench(repeats: int) -> None:
    model_config, train_config = resolve_preset("quick-cpu", model_overrides={"vocab_size": COMPACT_VOCAB})
    torch.manual_seed(0)
    model = GPT(model_config)
    device = torch.device("cpu")
    optimizers = configure_optimizers(model, train_config, device, ortho_dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    C, B = model_config.context_length, train_config.batch_size

    def step() -> None:
        windows = torch.randint(0, COMPACT_VOCAB, (B, C + 1), generator=generator)
        _, loss = model(windows[:, :-1], windows[:, 1:], return_logits=False)  # as the trainer runs it
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    rng = np.random.default_rng(0)
    probe = inspection.make_probe(C, range(COMPACT_VOCAB - 1), COMPACT_VOCAB - 1, seed=1,
                                  text_tokens=rng.integers(0, COMPACT_VOCAB - 1, 40_000))
    step()  # warm-up
    step_seconds = Timing(step, repeats).cpu
    model.train()
    probe_seconds = Timing(lambda: inspection.score_probe(model, probe), repeats).cpu
    share = probe_seconds / (train_config.eval_interval * step_seconds + probe_seconds)
    print(f"quick-cpu shape ({model_config.n_layer} x {model_config.n_head} x {model_config.n_embd}, context {C}, "
          f"vocabulary {COMPACT_VOCAB:,}, batch {B}, {train_config.optimizer} in fp32):")
    print(f"  training step {step_seconds:.3f} CPU s; head probe ({len(probe.repeated)} x {probe.repeated.shape[1]} "
          f"repeated tokens + {len(probe.text)} windows of {C + 1}) {probe_seconds:.3f} CPU s = "
          f"{probe_seconds / step_seconds:.2f} steps")
    print(f"  at every evaluation (every {train_config.eval_interval} steps): {share:.2%} of training time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="warm calls per measurement (the best is shown)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--old-rev", default="859b275", help="git revision of the old Inspect code")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU capability {cpu_capability()}, {torch.get_num_threads()} torch threads")
    inspect_bench(args.repeats, args.old_rev)
    probe_bench(args.repeats)


if __name__ == "__main__":
    main()
