"""The lever table of the CPU speedrun: each lever alone against the recipe, on the development slice.

    python -m bench.speedrun_levers [--preset quick-cpu] [--seconds 300] [--out DIR] [--only NAME ...]
                                    [--table] [--plot NAME ... [--plot-file assets/speedrun_levers.svg]]

Each lever is one `python -m bench.speedrun_cpu --dev --runs 1 -- FLAGS` run (300 s of training, seed 1337,
scored on the whole development slice: the last ninth of the training text, so the validation split is
never read while levers are chosen). Results go to DIR/NAME.json; a lever whose file exists is not run
again, so an interrupted table continues where it stopped. `--table` only prints the markdown table of what
DIR holds: bits/byte on the dev slice, the change against `baseline`, and median training tokens/s.
Run one table at a time on an otherwise idle machine: two cores shared with anything else change tokens/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (extra `python -m gpt train` flags, what the lever is, the lever row it is compared with). The rows
# were run as the preset stood at the time: "baseline" is quick-cpu before weight averaging and QK-norm (now
# `--ema-power 0 --no-qk-norm`), the rows compared with "ema998" added EMA 0.998 (now `--ema-decay 0.998
# --no-qk-norm`), the rows compared with "qk-norm-ema" (QK-norm + EMA 0.998, what quick-cpu had then) changed
# its weight average, and the rows compared with "power3" were added to quick-cpu before dropout (QK-norm +
# the power average, exponent 3; on a CPU that passes over the data more than 5 times add `--dropout 0`).
LEVERS: dict[str, tuple[list[str], str, str | None]] = {
    "baseline": ([], "the preset as it was then (no averaging, no QK-norm)", None),
    "relu2": (["--activation", "relu2"], "ReLU² instead of GELU in the MLP", "baseline"),
    "dropout01": (["--dropout", "0.1"], "dropout 0.1", "baseline"),
    "vocab4096": (["--vocab-limit", "4096"], "compact vocabulary cut to the 4,096 most frequent training tokens",
                  "baseline"),
    "dropout02": (["--dropout", "0.2"], "dropout 0.2", "baseline"),
    "wd03": (["--weight-decay", "0.3"], "weight decay 0.3 (AdamW matrices and Muon)", "baseline"),
    "ema99": (["--ema-decay", "0.99"], "EMA of the weights (decay 0.99) is evaluated and saved", "baseline"),
    "wd06": (["--weight-decay", "0.6"], "weight decay 0.6", "baseline"),
    "ema995": (["--ema-decay", "0.995"], "EMA of the weights, decay 0.995", "baseline"),
    "combo-reg": (["--dropout", "0.1", "--weight-decay", "0.3", "--ema-decay", "0.99"],
                  "together: dropout 0.1, weight decay 0.3, EMA 0.99", "baseline"),
    "ema998": (["--ema-decay", "0.998"], "EMA of the weights, decay 0.998", "baseline"),
    "wd03-ema998": (["--weight-decay", "0.3", "--ema-decay", "0.998"], "together: weight decay 0.3, EMA 0.998",
                    "baseline"),
    "qk-norm": (["--qk-norm"], "QK-norm (RMS-normalised queries and keys)", "baseline"),
    "x0": (["--x0-shortcuts"], "x0 shortcuts (each block reads a mix of x and the input embedding)", "ema998"),
    "qk-norm-ema": (["--qk-norm"], "QK-norm, on the recipe with weight averaging", "ema998"),
    "softcap15": (["--logit-softcap", "15"], "logit soft-cap 15", "ema998"),
    "zero-init": (["--zero-init-proj"], "zero-initialised residual projections", "ema998"),
    "wsd": (["--schedule", "wsd"], "warmup-stable-decay schedule (cooldown 30%)", "ema998"),
    "value-emb": (["--value-embeddings"], "value embeddings mixed into every layer's values", "power3"),
    "untied": (["--no-tie-embeddings"], "untied LM head", "power3"),
    "rope": (["--position", "rope"], "rotary position embeddings", "power3"),
    "power1": (["--ema-power", "1"], "power-function weight average, exponent 1 (step t weighs t)", "qk-norm-ema"),
    "power05": (["--ema-power", "0.5"], "power-function weight average, exponent 0.5 (step t weighs t^0.5)",
                "qk-norm-ema"),
    "power3": (["--ema-power", "3"], "power-function weight average, exponent 3 (step t weighs t^3)",
               "qk-norm-ema"),
    "muon-lr03": (["--muon-learning-rate", "0.03"], "Muon learning rate 0.03 instead of 0.02", "power3"),
    "ctx256": (["--context-length", "256", "--batch-size", "4"], "context 256, batch 4 (the same tokens per step)",
               "power3"),
    "batch16": (["--batch-size", "16"], "batch 16 (twice the tokens per step, about half the steps)", "power3"),
    "dropout01-power3": (["--dropout", "0.1"], "dropout 0.1, on the recipe with the power average", "power3"),
    "min-lr0": (["--min-lr-ratio", "0"], "the cosine decays to 0 instead of 10% of the peak", "power3"),
    "heads3": (["--n-head", "3"], "3 heads of 64 instead of 4 of 48", "power3"),
    "polar-express": (["--muon-orthogonaliser", "polar-express"], "Muon orthogonalises with Polar Express",
                      "power3"),
    "normuon": (["--muon-normalise"], "NorMuon: each neuron's Muon step evened out", "power3"),
    "cautious-wd": (["--muon-cautious-weight-decay"], "cautious weight decay in Muon", "power3"),
    "muon-variants": (["--muon-orthogonaliser", "polar-express", "--muon-normalise", "--muon-cautious-weight-decay"],
                      "together: Polar Express, NorMuon, cautious weight decay", "power3"),
    "adamw-lr8e-3": (["--learning-rate", "8e-3"], "AdamW (embeddings, norms) learning rate 8e-3 instead of 5e-3",
                     "power3"),
    "layers3": (["--n-layer", "3"], "3 layers instead of 4 (fewer parameters, more steps)", "power3"),
    "muon-lr04": (["--muon-learning-rate", "0.04"], "Muon learning rate 0.04 instead of 0.02", "power3"),
    "no-clip": (["--grad-clip", "0"], "no gradient clipping (instead of norm 1)", "power3"),
    "warmup100": (["--warmup-steps", "100"], "warmup over 100 steps instead of 20", "power3"),
    "power6": (["--ema-power", "6"], "power-function weight average, exponent 6 (the last ~1/8 of the run)",
               "power3"),
    "batch4": (["--batch-size", "4"], "batch 4 (half the tokens per step, more steps)", "power3"),
    "batch6": (["--batch-size", "6"], "batch 6 (three quarters of the tokens per step)", "power3"),
    # On a CPU with AMX (bf16 2.4x faster at this shape), where 5 minutes pass over the data ~10 times; the flags
    # are against quick-cpu now, which adds dropout 0.1 (not on attention) past 5 planned epochs.
    "amx-no-dropout": (["--dropout", "0"], "quick-cpu without dropout on the AMX CPU (auto: bf16)", None),
    "amx-no-dropout-fp32": (["--dropout", "0", "--precision", "fp32"], "the same in fp32 (fewer epochs)",
                            "amx-no-dropout"),
    "amx-wd03": (["--dropout", "0", "--weight-decay", "0.3"], "weight decay 0.3 instead of dropout",
                 "amx-no-dropout"),
    "amx-dropout-attention": (["--attention-dropout"], "dropout 0.1, on attention weights too",
                              "amx-no-dropout"),
    "amx-dropout": ([], "dropout 0.1 after embeddings and residual branches (quick-cpu now)", "amx-no-dropout"),
    "amx-dropout-seed2": (["--seed", "2"], "the same, another seed", "amx-no-dropout"),
    "amx-dropout015": (["--dropout", "0.15"], "dropout 0.15", "amx-no-dropout"),
    "amx-dropout-wd03": (["--weight-decay", "0.3"], "dropout 0.1 and weight decay 0.3", "amx-no-dropout"),
    "amx-wide256": (["--n-embd", "256", "--attention-dropout"], "256 wide instead of 192, dropout on attention too",
                    "amx-no-dropout"),
    "amx-layers6": (["--n-layer", "6", "--attention-dropout"], "6 layers instead of 4, dropout on attention too",
                    "amx-no-dropout"),
    "amx-dropout-fp32": (["--precision", "fp32"], "dropout 0.1 in fp32 (~6 epochs instead of ~9)",
                         "amx-no-dropout"),
    "amx-wide256-residual": (["--n-embd", "256"], "256 wide instead of 192, with quick-cpu's dropout",
                             "amx-no-dropout"),
    "amx-muon-lr03": (["--muon-learning-rate", "0.03"], "Muon learning rate 0.03, with dropout", "amx-no-dropout"),
    "amx-power1": (["--ema-power", "1"], "power average exponent 1 (a third of the run), with dropout",
                   "amx-no-dropout"),
    "amx-batch16": (["--batch-size", "16"], "batch 16, with dropout", "amx-no-dropout"),
    "epyc-quick-cpu": ([], "quick-cpu as it is (bf16 calibrated 1.72x, dropout on: ~6.5 planned passes)", None),
    "epyc-context-warmup": (["--context-warmup-fraction", "0.3"], "short windows first: 32 tokens for the first "
                            "15% of the run, 64 for the next 15%, same tokens per step", "epyc-quick-cpu"),
    "epyc-late-dropout": (["--dropout-start-fraction", "0.5"], "late dropout: dropout only in the second half of "
                          "the run", "epyc-quick-cpu"),
    "slow-epyc-quick-cpu": ([], "quick-cpu as it is (bf16 calibrated 1.65x; the timed step planned 3.4 passes, so "
                            "dropout off; 5.5 trained)", None),
    "slow-epyc-context256-warmup": (["--context-length", "256", "--batch-size", "4", "--context-warmup-fraction",
                                     "0.5"], "context 256 at batch 4, short windows first: 64 tokens for the first "
                                    "25% of the run, 128 for the next 25%", "slow-epyc-quick-cpu"),
}
# what each compared-with row's recipe was, for the table's "added to" column
RECIPES = {"baseline": "quick-cpu as it was", "ema998": "+ EMA 0.998", "qk-norm-ema": "+ EMA 0.998 + QK-norm",
           "power3": "quick-cpu then (QK-norm + power average 3)",
           "amx-no-dropout": "quick-cpu without dropout, AMX CPU", "epyc-quick-cpu": "quick-cpu, AMD EPYC",
           "slow-epyc-quick-cpu": "quick-cpu, slower AMD EPYC"}


def run_lever(name: str, args: argparse.Namespace) -> None:
    flags = LEVERS[name][0]
    command = [sys.executable, "-m", "bench.speedrun_cpu", "--dev", "--runs", "1", "--preset", args.preset,
               "--seconds", str(args.seconds), "--out", str(args.out / name), "--plot", str(args.out / f"{name}.svg"),
               "--results", str(args.out / f"{name}.json"), "--", *flags]
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def table(out: Path) -> str:
    """Markdown: each lever against the row it is compared with (the recipe it was added to)."""
    results = {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*.json"))}
    lines = ["| lever | flags | added to | dev bits/byte | vs that recipe | tokens/s | runs |",
             "|---|---|---|---|---|---|---|"]
    for name, (flags, what, compared_with) in LEVERS.items():
        if name not in results:
            continue
        result = results[name]
        reference = results.get(compared_with, {}).get("median_bits_per_byte") if compared_with else None
        recipe = RECIPES.get(compared_with, "") if compared_with else ""
        bpb = result["median_bits_per_byte"]
        delta = f"{bpb - reference:+.3f}" if reference is not None else ""
        speeds = [run["tokens_per_second"] for run in result["runs"]]
        shown = f"`{' '.join(flags)}`" if flags else "(none)"
        lines.append(f"| {what} | {shown} | {recipe} | {bpb:.3f} | {delta} | {sum(speeds) / len(speeds):,.0f} "
                     f"| {len(result['runs'])} |")
    return "\n".join(lines)


def plot(out: Path, names: list[str], path: Path) -> None:
    """The dev-slice curves of `names` (in-training estimates, then the whole-slice figure as a dot)."""
    from bench.speedrun_cpu import write_svg

    files = {name: out / f"{name}.json" for name in names}
    results = {name: json.loads(file.read_text()) for name, file in files.items() if file.exists()}
    write_svg([result["runs"][0] for result in results.values()], path,
              "levers on the development slice (300 s each, one run)", labels=list(results),
              y_label="development-slice bits/byte", y_top=2.6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick-cpu")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "levers")
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), help="run these levers only")
    parser.add_argument("--table", action="store_true", help="print the table of DIR's results, run nothing")
    parser.add_argument("--plot", nargs="+", metavar="NAME", help="also draw these levers' curves into --plot-file")
    parser.add_argument("--plot-file", type=Path, default=ROOT / "assets" / "speedrun_levers.svg")
    args = parser.parse_args()
    if not args.table:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in args.only or LEVERS:
            if not (args.out / f"{name}.json").exists():
                run_lever(name, args)
    print(table(args.out))
    if args.plot:
        plot(args.out, args.plot, args.plot_file)
        print(f"curves: {args.plot_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
