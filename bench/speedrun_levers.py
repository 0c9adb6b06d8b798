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

# name -> (extra `python -m gpt train` flags, what the lever is)
LEVERS: dict[str, tuple[list[str], str]] = {
    "baseline": ([], "the preset as it is"),
    "relu2": (["--activation", "relu2"], "ReLU² instead of GELU in the MLP"),
    "dropout01": (["--dropout", "0.1"], "dropout 0.1"),
    "vocab4096": (["--vocab-limit", "4096"], "compact vocabulary cut to the 4,096 most frequent training tokens"),
    "dropout02": (["--dropout", "0.2"], "dropout 0.2"),
    "wd03": (["--weight-decay", "0.3"], "weight decay 0.3 (AdamW matrices and Muon)"),
    "ema99": (["--ema-decay", "0.99"], "EMA of the weights (decay 0.99) is evaluated and saved"),
    "wd06": (["--weight-decay", "0.6"], "weight decay 0.6"),
    "ema995": (["--ema-decay", "0.995"], "EMA of the weights, decay 0.995"),
    "combo-reg": (["--dropout", "0.1", "--weight-decay", "0.3", "--ema-decay", "0.99"],
                  "together: dropout 0.1, weight decay 0.3, EMA 0.99"),
    "ema998": (["--ema-decay", "0.998"], "EMA of the weights, decay 0.998"),
    "wd03-ema998": (["--weight-decay", "0.3", "--ema-decay", "0.998"], "together: weight decay 0.3, EMA 0.998"),
    "qk-norm": (["--qk-norm"], "QK-norm (RMS-normalised queries and keys)"),
    "x0": (["--x0-shortcuts"], "x0 shortcuts (each block reads a mix of x and the input embedding)"),
    "qk-norm-ema": (["--qk-norm"], "QK-norm, on the recipe with weight averaging"),
    "softcap15": (["--logit-softcap", "15"], "logit soft-cap 15"),
    "zero-init": (["--zero-init-proj"], "zero-initialised residual projections"),
    "wsd": (["--schedule", "wsd"], "warmup-stable-decay schedule (cooldown 30%)"),
    "value-emb": (["--value-embeddings"], "value embeddings mixed into every layer's values"),
    "untied": (["--no-tie-embeddings"], "untied LM head"),
    "rope": (["--position", "rope"], "rotary position embeddings"),
}


def run_lever(name: str, args: argparse.Namespace) -> None:
    flags, _ = LEVERS[name]
    command = [sys.executable, "-m", "bench.speedrun_cpu", "--dev", "--runs", "1", "--preset", args.preset,
               "--seconds", str(args.seconds), "--out", str(args.out / name), "--plot", str(args.out / f"{name}.svg"),
               "--results", str(args.out / f"{name}.json"), "--", *flags]
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def preset_ema(result: dict) -> float:
    """The EMA decay the preset itself had when the lever ran (the recipe the lever was added to)."""
    config = json.loads((Path(result["runs"][0]["run"]) / "config.json").read_text())
    flags = result.get("train_flags") or []
    given = "--ema-decay" in flags
    return 0.0 if given else float(config["train"].get("ema_decay", 0.0))


def table(out: Path) -> str:
    """Markdown: each lever against the recipe it was added to (the preset without or with weight averaging)."""
    results = {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*.json"))}
    lines = ["| lever | flags | added to | dev bits/byte | vs that recipe | tokens/s | runs |",
             "|---|---|---|---|---|---|---|"]
    for name, (flags, what) in LEVERS.items():
        if name not in results:
            continue
        result = results[name]
        ema = preset_ema(result)
        reference = results.get("ema998" if ema else "baseline", {}).get("median_bits_per_byte")
        recipe = f"preset + EMA {ema:g}" if ema else "preset"
        bpb = result["median_bits_per_byte"]
        delta = f"{bpb - reference:+.3f}" if reference is not None and name != "baseline" else ""
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
