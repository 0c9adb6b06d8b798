"""The 5-minute CPU speedrun: how good a model gets from random weights in a fixed wall-clock budget.

    python -m bench.speedrun_cpu [--preset quick-cpu] [--seconds 300] [--runs 3] [--data DIR] [--dev]
                                 [--out DIR] [--plot assets/speedrun_cpu.svg] [-- extra train flags]

Everything goes through the project's own command line: `python -m gpt prepare` (Tiny Shakespeare into a
temporary folder when --data has no prepared dataset), `python -m gpt train --max-minutes` (the trainer's
clock counts training steps only: evaluation and checkpoint saving are excluded from the budget), then
`python -m gpt eval RUN --json` over the whole validation split (deterministic, non-overlapping windows).
`--dev` trains and scores on a development slice instead, for choosing levers without looking at the
validation split: the training text alone is split again, its last ninth (about 10% of the corpus) becoming
the held-out "dev" text and the rest the training text, so no validation byte is read at all. Run i uses
seed 1337 + i; with --runs N the reported figure is the median of the N final figures.
Prints the curve (bits/byte of the in-training evaluations against training seconds; those use the
preset's `eval_batches` only), the final whole-split figure, the CPU capability and the precision the
trainer chose on it (`auto` decides for the machine: `-- --precision fp32` forces the other path, and
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` makes an AVX-512 machine
behave like an AVX2-only one), the core count and the load average, and writes the curves as an SVG (for
the README) and an interactive plotly HTML next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "assets" / "data" / "tinyshakespeare.txt"
TARGET_BITS_PER_BYTE = 2.05  # issue 12: below the best published GPU result on this split (2.12)


def gpt_cli(*args: str) -> str:
    """Run `python -m gpt ARGS` from the repository root; its stdout, or exit with its error."""
    done = subprocess.run([sys.executable, "-m", "gpt", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"python -m gpt {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def ensure_data(data: Path | None, scratch: Path) -> Path:
    if data is not None and (data / "meta.json").is_file():
        return data
    out = data or scratch / "tinyshakespeare"
    print(f"preparing {CORPUS.name} into {out}")
    gpt_cli("prepare", str(CORPUS), "--out", str(out))
    return out


def dev_slice(data: Path, scratch: Path) -> Path:
    """A dataset made of `data`'s training text only: its first 8/9 to train on, its last 1/9 held out.

    The training text is recovered exactly by decoding train.bin (GPT-2 BPE is lossless), then prepared by
    `python -m gpt prepare` like any corpus, so the dev figures come from the same code path as the real ones."""
    from gpt.data import load_split
    from gpt.tokenizer import gpt2_tokenizer

    text = gpt2_tokenizer().decode(load_split(data, "train").tolist())
    source = scratch / f"{data.name}-train-text.txt"
    source.write_text(text, encoding="utf-8")
    out = scratch / f"{data.name}-dev"
    print(f"development slice: the training text of {data} ({len(text):,} characters), its last ninth held out")
    gpt_cli("prepare", str(source), "--out", str(out), "--val-fraction", str(1 / 9), "--quiet")
    return out


def one_run(index: int, args: argparse.Namespace, data: Path, out: Path) -> dict:
    run = out / f"run-{index}"
    command = ["train", "--data", str(data), "--preset", args.preset, "--out", str(run),
               "--max-minutes", str(args.seconds / 60), "--seed", str(1337 + index), "--no-progress",
               *args.train_flags]
    print(f"run {index + 1}/{args.runs}: python -m gpt {' '.join(command)}", flush=True)
    started = time.perf_counter()
    gpt_cli(*command)
    wall = time.perf_counter() - started
    final = json.loads(gpt_cli("eval", str(run), "--data", str(data), "--json", "--device", "cpu"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [row for row in rows if row["kind"] == "eval"]
    curve = [(row["elapsed"], row["bits_per_byte"]) for row in evals if row.get("scope") != "full"]
    speeds = [row["tokens_per_second"] for row in rows if row["kind"] == "train"]
    samples = [row["text"] for row in rows if row["kind"] == "sample"]
    runtime = json.loads((run / "config.json").read_text()).get("runtime") or {}
    result = {"precision": runtime.get("precision"), "precision_reason": runtime.get("precision_reason"),
              "dropout_reason": runtime.get("dropout_reason"),
              "cpu_capability": runtime.get("cpu_capability"),
              "run": str(run), "curve": curve, "final_bits_per_byte": final["bits_per_byte"],
              "val_loss": final["val_loss"], "step": final["step"], "train_seconds": evals[-1]["elapsed"],
              "wall_seconds": wall, "tokens_per_second": statistics.median(speeds) if speeds else None,
              "sample": samples[-1] if samples else ""}
    print("  seconds  bits/byte (in-training evaluations)")
    for seconds, bpb in curve:
        print(f"  {seconds:7.1f}  {bpb:.4f}")
    split = "development slice" if args.dev else "validation split"
    print(f"  whole {split}: {result['final_bits_per_byte']:.4f} bits/byte at step {result['step']} "
          f"after {result['train_seconds']:.0f} s of training ({wall:.0f} s wall), "
          f"median {result['tokens_per_second']:.0f} tokens/s", flush=True)
    return result


def write_svg(results: list[dict], path: Path, title: str, labels: list[str] | None = None,
              y_label: str = "validation bits/byte", y_top: float | None = None) -> None:
    """A small dependency-free line chart of bits/byte against training seconds, one line per run
    (`labels`: a legend entry per run; `y_top`: the highest bits/byte shown, higher points drawn at the top)."""
    width, height, pad = 640, 400, 50
    points = [p for r in results for p in r["curve"][1:]]
    x_max = max(p[0] for p in points) or 1.0
    y_min = min(min(p[1] for p in points), TARGET_BITS_PER_BYTE) - 0.1
    y_max = y_top if y_top is not None else max(p[1] for p in points) + 0.1

    def x_of(seconds: float) -> float:
        return pad + (width - 2 * pad) * seconds / x_max

    def y_of(bpb: float) -> float:
        return height - pad - (height - 2 * pad) * (min(bpb, y_max) - y_min) / (y_max - y_min)

    def xy(seconds: float, bpb: float) -> str:
        return f"{x_of(seconds):.1f},{y_of(bpb):.1f}"

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<polyline points="{xy(0, y_min)} {xy(x_max, y_min)}" stroke="black" fill="none"/>',
             f'<polyline points="{xy(0, y_min)} {xy(0, y_max)}" stroke="black" fill="none"/>',
             f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">training seconds</text>',
             f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">'
             f'{y_label}</text>']
    for tick in range(5):
        seconds, bpb = x_max * tick / 4, y_min + (y_max - y_min) * tick / 4
        parts.append(f'<text x="{x_of(seconds):.1f}" y="{height - pad + 16}" text-anchor="middle">{seconds:.0f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{y_of(bpb):.1f}" text-anchor="end">{bpb:.2f}</text>')
    target = f"{xy(0, TARGET_BITS_PER_BYTE)} {xy(x_max, TARGET_BITS_PER_BYTE)}"
    parts.append(f'<polyline points="{target}" stroke="gray" stroke-dasharray="4" fill="none"/>')
    for i, result in enumerate(results):
        line = " ".join(xy(s, b) for s, b in result["curve"][1:])
        parts.append(f'<polyline points="{line}" stroke="{colors[i % len(colors)]}" stroke-width="2" fill="none"/>')
        end_x, end_y = x_of(result["train_seconds"]), y_of(result["final_bits_per_byte"])
        parts.append(f'<circle cx="{end_x:.1f}" cy="{end_y:.1f}" r="4" fill="{colors[i % len(colors)]}"/>')
        if labels:
            y = pad + 14 * i
            parts.append(f'<line x1="{width - pad - 150}" y1="{y - 4}" x2="{width - pad - 135}" y2="{y - 4}" '
                         f'stroke="{colors[i % len(colors)]}" stroke-width="2"/>')
            parts.append(f'<text x="{width - pad - 130}" y="{y}">{labels[i]}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def write_html(results: list[dict], path: Path, title: str) -> None:
    import plotly.graph_objects as go

    figure = go.Figure()
    for i, result in enumerate(results):
        seconds, bpb = zip(*result["curve"][1:], strict=True)
        figure.add_scatter(x=seconds, y=bpb, mode="lines+markers", name=f"run {i + 1} (in-training eval)")
        figure.add_scatter(x=[result["train_seconds"]], y=[result["final_bits_per_byte"]], mode="markers",
                           marker_size=12, name=f"run {i + 1}: whole validation split")
    figure.add_hline(y=TARGET_BITS_PER_BYTE, line_dash="dash", annotation_text=f"target {TARGET_BITS_PER_BYTE}")
    figure.update_layout(title=title, xaxis_title="training seconds", yaxis_title="validation bits/byte")
    figure.write_html(path, include_plotlyjs="cdn")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick-cpu")
    parser.add_argument("--seconds", type=float, default=300.0, help="training budget per run (default 300)")
    parser.add_argument("--runs", type=int, default=3,
                        help="independent runs (default 3); the figure is their median")
    parser.add_argument("--data", type=Path, help="prepared data folder (default: data/tinyshakespeare, "
                                                   "prepared into a temporary folder when missing)")
    parser.add_argument("--dev", action="store_true",
                        help="train on the first 8/9 of the training text and score on its last 1/9 (the "
                             "validation split is not read): for choosing levers")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--plot", type=Path, default=ROOT / "assets" / "speedrun_cpu.svg",
                        help="SVG to write (an .html plotly figure is written next to it)")
    parser.add_argument("--results", type=Path, help="also write every run's figures as JSON here")
    parser.add_argument("train_flags", nargs="*", help="extra flags for python -m gpt train, after --")
    args = parser.parse_args()
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be >= 1 and --seconds > 0")

    with tempfile.TemporaryDirectory(prefix="speedrun-") as scratch:
        data = ensure_data(args.data or ROOT / "data" / "tinyshakespeare", Path(scratch))
        if args.dev:
            data = dev_slice(data, Path(scratch))
        out = args.out or Path(scratch) / "runs"
        out.mkdir(parents=True, exist_ok=True)
        load_before = os.getloadavg()
        results = [one_run(i, args, data, out) for i in range(args.runs)]
        load_after = os.getloadavg()

    figure = statistics.median(r["final_bits_per_byte"] for r in results)
    cores = os.cpu_count()
    first = results[0]
    split = "development slice" if args.dev else "validation"
    title = (f"{args.preset}, {args.seconds:.0f} s on {cores} CPU cores ({first['cpu_capability']}, "
             f"{first['precision']}): median {figure:.3f} {split} bits/byte over {args.runs} run(s)")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    write_svg(results, args.plot, title)
    write_html(results, args.plot.with_suffix(".html"), title)
    print(f"\n{title}")
    finals = ", ".join(f"{r['final_bits_per_byte']:.4f}" for r in results)
    speeds = ", ".join(f"{r['tokens_per_second']:.0f}" for r in results)
    print(f"runs: {finals} (target {TARGET_BITS_PER_BYTE}); median training tokens/s: {speeds}")
    print(f"CPU capability {first['cpu_capability']}; precision {first['precision_reason']}")
    for number, result in enumerate(results, 1):
        if result["dropout_reason"]:
            print(f"run {number}: {result['dropout_reason']}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"sample (run 1, last in-training sample): {results[0]['sample']!r}")
    if args.results:
        summary = {"preset": args.preset, "seconds": args.seconds, "split": split, "train_flags": args.train_flags,
                   "median_bits_per_byte": figure, "cores": cores, "load_average": [load_before[0], load_after[0]],
                   "runs": results}
        args.results.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"curve: {args.plot} and {args.plot.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
