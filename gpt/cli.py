"""The command line: `python -m gpt prepare | train | eval | generate | export | import-hf | heads | push | pull`.

Each subcommand is a pair: `_add_<name>(subparsers)` declares its flags and `_run_<name>(args)` calls
the library. Config flags are generated from the dataclass fields (`gpt/fields.py`), so every field has
a flag with its help, choices and range. Bad input raises `UserInputError` in the library; `main` turns it
into one line on stderr and exit code 2, with no traceback; under torchrun only rank 0 prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gpt.errors import UserInputError
from gpt.fields import field_specs

EXIT_USER_ERROR = 2
DEFAULT_PRESET = "tiny"


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors in the same one-line form as ours."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{self.prog}: {message}")


# -- prepare ------------------------------------------------------------------------------------------
def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    """`prepare INPUT... --out DIR`: load, clean, split, tokenize to train.bin / val.bin / meta.json.

    The cleaning flags are made from `CleanConfig`'s fields (`--strip-html/--no-strip-html`, `--urls MODE`,
    ...); `--keep-duplicates` and the repeatable `--remove-pattern` keep their first spellings."""
    from gpt.data.clean import CleanConfig
    from gpt.fields import field_spec

    p = subparsers.add_parser(
        "prepare", help="turn text files or a Hugging Face dataset into token files",
        description="Load documents, clean them, split train/validation by whole documents (validation from "
                    "the end), tokenize with GPT-2 BPE and write DIR/train.bin, DIR/val.bin, DIR/meta.json.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help=".txt .md .csv .tsv .jsonl .json .parquet files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for train.bin, val.bin and meta.json")
    p.add_argument("--column", help="text column of .csv/.tsv/.parquet (default: the column with the most text)")
    p.add_argument("--field", help="text field of .jsonl/.json (default: the field with the most text)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F", help="validation share of the text (0.1)")
    p.add_argument("--split-on-blank-lines", action="store_true",
                   help="one document per blank-line-separated block of .txt/.md (default: one per file)")
    p.add_argument("--encoding", default="auto", metavar="NAME",
                   help="text encoding of the input files: auto (UTF-8, else detected, preferring cp1252 when "
                        "unsure) or any Python codec name such as utf-8, cp1252, latin-1, cp1251, shift_jis")
    p.add_argument("--hf-dataset", metavar="NAME", help="a Hugging Face Hub dataset instead of files")
    p.add_argument("--hf-config", metavar="C", help="its configuration")
    p.add_argument("--hf-split", metavar="S", default="train", help="its split (train)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset already in DIR")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="tokenizer threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    clean = p.add_argument_group("cleaning (defaults keep non-English text, emoji and line breaks)")
    clean_fields = add_field_flags(clean, CleanConfig, skip=("remove_patterns",))
    clean.add_argument("--keep-duplicates", dest="deduplicate", action="store_const", const=False,
                       help="the same as --no-deduplicate")
    patterns = field_spec(CleanConfig, "remove_patterns")
    clean.add_argument("--remove-pattern", dest="remove_patterns", action="append", metavar="REGEX",
                       help=f"{patterns.help} (one per flag, repeatable)")
    p.set_defaults(func=_run_prepare, clean_fields=clean_fields)


def _run_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gpt.data import CleanConfig, load_hf_dataset, prepare_dataset

    config = CleanConfig(**_given(args, args.clean_fields), remove_patterns=tuple(args.remove_patterns or ()))
    if args.threads is not None and args.threads < 1:
        raise UserInputError("--threads must be at least 1")
    if args.hf_dataset and args.inputs:
        raise UserInputError("give either INPUT files or --hf-dataset, not both")
    if not args.hf_dataset and not args.inputs:
        raise UserInputError("give at least one INPUT file (or --hf-dataset NAME)")
    if args.hf_dataset:
        if args.quiet:
            import datasets

            datasets.disable_progress_bars()
        source = load_hf_dataset(args.hf_dataset, args.hf_config, args.hf_split, args.column or args.field)
    else:
        source = args.inputs
    with tqdm(total=100, unit="%", disable=True if args.quiet else None, leave=False, file=sys.stderr,
              bar_format="{desc:<34}{bar}{percentage:3.0f}%") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.set_description_str(message, refresh=False)
            bar.update(round(fraction * 100) - bar.n)

        report = prepare_dataset(source, args.out, clean_config=config, val_fraction=args.val_fraction,
                                 overwrite=args.overwrite, progress=progress, column=args.column, field=args.field,
                                 split_on_blank_lines=args.split_on_blank_lines, encoding=args.encoding,
                                 num_threads=args.threads)
    print(report.summary())
    print(f"wrote {report.out_dir}/train.bin, val.bin, meta.json")
    return 0


# -- train / eval / generate --------------------------------------------------------------------------
def add_field_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """One `--field-name` flag per `option` field of a config dataclass (default None = not given), with
    the field's help, choices and range from its metadata; returns the field names."""
    names = []
    for spec in field_specs(cls):
        if spec.name in skip:
            continue
        if spec.kind is bool:
            parser.add_argument(spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{spec.describe()} (default: {spec.default})")
        else:
            kind = {int: _int_flag, float: float, str: str}[spec.kind]
            parser.add_argument(spec.flag, dest=spec.name, type=kind, default=None, choices=spec.choices,
                                metavar=None if spec.choices else spec.kind.__name__.upper(),
                                help=f"{spec.describe()} (default: {spec.default})")
        names.append(spec.name)
    return names


def _int_flag(text: str) -> int:
    """An integer flag value; `1e3`-style and `1000.0` spellings of whole numbers are accepted."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        return int(value)


def _given(args: argparse.Namespace, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


class _PresetHelp(argparse.Action):
    """`--help` that shows each field's value under the chosen preset (`train --preset seed --help`)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, help="show this help (with --preset P before it: "
                         "the values of preset P) and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from gpt.config import get_preset

        preset = get_preset(namespace.preset or DEFAULT_PRESET)
        values_by_name = {**preset.model, **preset.train}
        for action in parser._actions:
            if action.dest in values_by_name and action.help:
                action.help += f" [{preset.name}: {values_by_name[action.dest]}]"
        parser.print_help()
        parser.exit()


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    """`train`, `eval` and `generate`."""
    from gpt.config import PRESETS, TrainConfig
    from gpt.model import GPTConfig
    from gpt.sampling import SamplingConfig

    presets = "\n".join(f"  {name:<10} {preset.description}" for name, preset in PRESETS.items())
    train = subparsers.add_parser(
        "train", help="train a GPT from scratch (or --resume a run, or --config a run's config.json)",
        add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a GPT on a prepared data folder. Every model and training option has a flag; "
                    "unset flags take the preset's value. Precision `auto` is decided for this machine (bf16 "
                    "only where it is fast here). Multi-process: torchrun --nproc_per_node=N -m gpt train ...",
        epilog=f"presets:\n{presets}")
    train.add_argument("-h", "--help", action=_PresetHelp)
    train.add_argument("--data", help="prepared data folder (python -m gpt prepare ... --out DIR)")
    train.add_argument("--preset", choices=list(PRESETS), default=None,
                       help=f"model + training preset (default: {DEFAULT_PRESET})")
    train.add_argument("--out", help="run folder to create (default: checkpoints/<preset>-<date-time>)")
    train.add_argument("--resume", metavar="RUN", help="continue this run folder where it stopped")
    train.add_argument("--config", metavar="FILE", help="train the run a config.json describes: into its own "
                       "folder when that holds no checkpoint yet, else into --out (flags given change fields)")
    train.add_argument("--dry-run", action="store_true", help="print the plan (parameters, steps, memory, "
                       "precision for this machine) and exit without training")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--default-malloc", action="store_true",
                       help="keep glibc's default allocator on CPU (see gpt.runtime.reuse_freed_cpu_memory)")
    model_group = train.add_argument_group("model (GPTConfig)")
    train_group = train.add_argument_group("training (TrainConfig)")
    train.set_defaults(func=_run_train, model_fields=add_field_flags(model_group, GPTConfig, ("vocab_size",)),
                       train_fields=add_field_flags(train_group, TrainConfig))

    evaluate = subparsers.add_parser(
        "eval", help="validation loss, perplexity and bits per byte of a run over a whole split",
        description="Deterministic evaluation over non-overlapping windows covering the whole split.")
    evaluate.add_argument("run", help="run folder (or its name under checkpoints/)")
    evaluate.add_argument("--data", help="prepared data folder (default: the one the run was trained on)")
    evaluate.add_argument("--split", choices=["val", "train"], default="val")
    evaluate.add_argument("--checkpoint", default="last", help="last | best | snapshot:STEP | file.safetensors")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_run_eval)

    generate = subparsers.add_parser("generate", help="generate text from a run, streamed to stdout")
    generate.add_argument("run", help="run folder (or its name under checkpoints/)")
    generate.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    generate.add_argument("--checkpoint", default="last", help="last | best | snapshot:STEP | file.safetensors")
    generate.add_argument("--device", default="auto")
    sampling_group = generate.add_argument_group("sampling (SamplingConfig)")
    generate.set_defaults(func=_run_generate,
                          sampling_fields=add_field_flags(sampling_group, SamplingConfig, ("top_candidates",)))


def _run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gpt.config import resolve_preset
    from gpt.runtime import dist_info_from_env, reuse_freed_cpu_memory
    from gpt.train import Trainer

    dist_info = dist_info_from_env()
    printer = _Printer()
    on_row = printer.on_row if dist_info.is_main else None
    model_given, train_given = _given(args, args.model_fields), _given(args, args.train_fields)
    chosen = [flag for flag, value in (("--resume", args.resume), ("--config", args.config)) if value]
    if len(chosen) > 1:
        raise UserInputError("give either --resume RUN or --config FILE, not both")
    if args.dry_run:
        return _dry_run(args, model_given, train_given, dist_info.world_size)
    if args.resume:
        if model_given:
            raise UserInputError("a resumed run keeps its model; drop the model flags (or start a new run)")
        trainer = Trainer.resume(args.resume, data_dir=args.data, on_row=on_row, **train_given)
    elif args.config:
        trainer = Trainer.from_config(args.config, out_dir=args.out, on_row=on_row, model_overrides=model_given,
                                      train_overrides=train_given)
    else:
        if not args.data:
            raise UserInputError("train needs --data DIR (a folder made by python -m gpt prepare), or --resume RUN "
                                 "or --config FILE")
        preset = args.preset or DEFAULT_PRESET
        out = args.out or str(Path("checkpoints") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        model_config, train_config = resolve_preset(preset, model_given, train_given)
        trainer = Trainer(model_config, train_config, args.data, out, preset=preset, on_row=on_row)
    if trainer.device.type == "cpu" and not args.default_malloc:
        reuse_freed_cpu_memory()
    if dist_info.is_main and not args.no_progress:  # the trainer's notes come in its first status line
        printer.bar = tqdm(total=trainer.planned_steps, initial=trainer.step, unit="step", dynamic_ncols=True)
    try:
        with trainer.stop_on_signals():
            status = trainer.run()
    finally:
        printer.close()
        trainer.close()
    if dist_info.is_main:
        print(f"{status}: {trainer.run_dir} (step {trainer.step}, best val loss {trainer.best_val_loss:.4f})")
    return 1 if status in ("diverged", "failed") else 0


class _Printer:
    """Prints a training run's status lines and evaluations, and drives its progress bar."""

    def __init__(self) -> None:
        self.bar = None

    def on_row(self, row: dict) -> None:
        write = self.bar.write if self.bar is not None else print
        if row["kind"] == "status":
            write(f"[{row['status']}] step {row['step']}: {row['message']}")
        elif row["kind"] == "eval" and self.bar is not None:
            label = "whole split" if row.get("scope") == "full" else "estimate"
            bpb = row["bits_per_byte"]
            write(f"step {row['step']}: val loss {row['val_loss']:.4f}, bits/byte "
                  f"{'n/a' if bpb is None else f'{bpb:.4f}'} ({label})")
        elif row["kind"] == "train" and self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{row['train_loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _dry_run(args: argparse.Namespace, model_given: dict, train_given: dict, world_size: int) -> int:
    """`train --dry-run`: the plan of what the same command would train, then exit."""
    from gpt.config import TrainConfig, resolve_preset
    from gpt.model import GPTConfig
    from gpt.plan import make_plan
    from gpt.run import Run, RunConfig

    if args.resume or args.config:
        config = Run.open(args.resume).config if args.resume else RunConfig.read(args.config)
        if config.train is None:
            raise UserInputError("that run records no training options (imported weights?)")
        model = GPTConfig.from_dict({**config.model.to_dict(), **model_given})
        train = TrainConfig.from_dict({**config.train.to_dict(), **train_given})
        data = args.data or config.data.dir
    else:
        model, train = resolve_preset(args.preset or DEFAULT_PRESET, model_given, train_given)
        data = args.data
    plan = make_plan(model, train, data, world_size=world_size)
    print("\n".join(line.replace("**", "") for line in plan.lines()))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from gpt.evaluate import evaluate_run

    result = evaluate_run(args.run, args.data, batch_size=args.batch_size, device=args.device,
                          checkpoint=args.checkpoint, split=args.split)
    if args.json:
        print(json.dumps(result))
    else:
        bpb = result["bits_per_byte"]
        print(f"{args.split} loss {result['val_loss']:.4f} nats/token, perplexity {result['perplexity']:.2f}, "
              f"bits per byte {'n/a' if bpb is None else f'{bpb:.4f}'} over {result['tokens']:,} tokens "
              f"({result['checkpoint']} checkpoint, step {result['step']})")
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from gpt.run import Run
    from gpt.runtime import resolve_device
    from gpt.sampling import SamplingConfig, prompt_note, stream_generate

    loaded = Run.open(args.run).load(args.checkpoint, device=resolve_device(args.device))
    config = SamplingConfig(**_given(args, args.sampling_fields))
    note = prompt_note(loaded.tokenizer, args.prompt)
    if note:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(args.prompt)
    for step in stream_generate(loaded.model, loaded.tokenizer, args.prompt, config):
        sys.stdout.write(step.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


# -- export / import-hf -------------------------------------------------------------------------------
def _add_export(subparsers: argparse._SubParsersAction) -> None:
    """`export RUN --hf OUT_DIR` and `import-hf HF_DIR --out RUN`."""
    export = subparsers.add_parser(
        "export", help="export a run to a Hugging Face GPT-2 folder (GPT2LMHeadModel.from_pretrained loads it)"
    )
    export.add_argument("run", help="run folder (or its name under checkpoints/)")
    export.add_argument("--hf", required=True, metavar="OUT_DIR", help="folder to write the model to")
    export.add_argument("--checkpoint", default="last", help="last | best | snapshot:STEP | a .safetensors path")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT_DIR")
    export.set_defaults(func=_run_export)

    imp = subparsers.add_parser("import-hf", help="import a Hugging Face GPT-2 folder or Hub id as a run folder")
    imp.add_argument("hf_dir", metavar="HF_DIR", help="folder with config.json + model.safetensors (GPT-2), a Hub id "
                                                      "(gpt2, OWNER/NAME), or a repository pushed by `push`")
    imp.add_argument("--out", required=True, metavar="RUN", help="run folder to create, e.g. checkpoints/gpt2")
    imp.add_argument("--overwrite", action="store_true", help="replace the run folder at --out")
    imp.set_defaults(func=_run_import_hf)


def _run_export(args: argparse.Namespace) -> int:
    from gpt.hf import export_hf
    from gpt.run import Run

    out = Path(args.hf)
    if (out / "config.json").exists() and not args.overwrite:
        raise UserInputError(f"{out} already holds a model; pass --overwrite to replace it")
    loaded = Run.open(args.run).load(args.checkpoint)
    export_hf(loaded.model, out, loaded.tokenizer)
    print(f"exported {loaded.run_dir.name} ({loaded.checkpoint}, step {loaded.step}) to {out}: "
          f"load it with transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})")
    return 0


def _run_import_hf(args: argparse.Namespace) -> int:
    """`import-hf` and `pull`: a folder or a Hub id becomes a run folder (`gpt.hub.pull`)."""
    from gpt.hub import pull
    from gpt.run import CHECKPOINTS_DIR

    out = Path(args.out) if args.out else CHECKPOINTS_DIR / Path(str(args.hf_dir).rstrip("/\\")).name
    print(pull(args.hf_dir, out, overwrite=args.overwrite).summary())
    return 0


# -- push / pull (the Hugging Face Hub) -----------------------------------------------------------------------
def _add_hub(subparsers: argparse._SubParsersAction) -> None:
    """`push RUN --repo OWNER/NAME` and `pull ID_OR_FOLDER [--out RUN]` (the same as `import-hf`)."""
    push = subparsers.add_parser(
        "push", help="upload a run to a Hugging Face Hub model repository (transformers loads it by name)",
        description="Upload, in one commit: the Hugging Face GPT-2 export of a checkpoint (with the GPT-2 tokenizer; "
                    "absent, with the reason in the card, for architectures GPT-2 cannot express), the run folder "
                    "under playground/ (config.json, weights, snapshots, metrics.jsonl) and a model card with a "
                    "loss-curve image. The token comes from HF_TOKEN or `hf auth login`; it is never a flag.")
    push.add_argument("run", help="run folder (or its name under checkpoints/)")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME", help="model repository (NAME alone: your account)")
    push.add_argument("--private", action="store_true", help="create the repository private (an existing one keeps "
                                                             "its visibility)")
    push.add_argument("--checkpoint", default="last", help="the checkpoint exported for transformers: last | best | "
                                                           "snapshot:STEP (the run folder travels whole)")
    push.add_argument("--license", default="other", metavar="ID",
                      help="license id for the card's metadata, such as mit or apache-2.0 (default: other)")
    push.set_defaults(func=_run_push)

    pull = subparsers.add_parser(
        "pull", help="a Hub model id or a folder as a run folder (the same as import-hf)",
        description="Make a run folder from a repository pushed by `push` (the full run: weights, snapshots, "
                    "metrics), from a Hugging Face GPT-2 model (`gpt2`, OWNER/NAME, or its folder), or from a local "
                    "folder of either. Only config.json, .safetensors and metrics files are downloaded.")
    pull.add_argument("hf_dir", metavar="ID_OR_FOLDER", help="Hub id (gpt2, OWNER/NAME) or a local folder")
    pull.add_argument("--out", metavar="RUN", help="run folder to create (default: checkpoints/<NAME>)")
    pull.add_argument("--overwrite", action="store_true", help="replace the run folder at --out")
    pull.set_defaults(func=_run_import_hf)


def _run_push(args: argparse.Namespace) -> int:
    from gpt.hub import push
    from gpt.run import Run

    def progress(fraction: float, message: str) -> None:
        print(f"{message}…", file=sys.stderr)

    result = push(Run.open(args.run), args.repo, private=args.private, checkpoint=args.checkpoint,
                  license=args.license, progress=progress)
    print(result.summary())
    return 0


# -- heads --------------------------------------------------------------------------------------------
def _add_heads(subparsers: argparse._SubParsersAction) -> None:
    """`heads RUN [--checkpoint C] [--json]`: head-type scores and the in-context learning score."""
    heads = subparsers.add_parser(
        "heads", help="score every attention head (previous-token, duplicate-token, induction, first-token) and "
                      "the in-context learning score",
        description="Run the run's fixed probe (random tokens repeated twice, drawn from its training seed, and "
                    "windows of its validation split) through a checkpoint: per layer x head the share of attention "
                    "on each head type's pattern (TransformerLens head_detector patterns, 1 = a perfect head), "
                    "and the in-context learning score (late minus early loss in the context, Olsson et al. 2022).")
    heads.add_argument("run", help="run folder (or its name under checkpoints/)")
    heads.add_argument("--checkpoint", default="last", help="last | best | snapshot:STEP | file.safetensors")
    heads.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    heads.add_argument("--json", action="store_true",
                       help="print one JSON object: a list of heads (layer, head and the four scores) and the "
                            "in-context learning score")
    heads.set_defaults(func=_run_heads)


def _run_heads(args: argparse.Namespace) -> int:
    from gpt.inspection import INDUCTION_THRESHOLD, head_scores_table, probe_for_run, score_probe
    from gpt.run import Run
    from gpt.runtime import resolve_device

    run = Run.open(args.run)
    loaded = run.load(args.checkpoint, device=resolve_device(args.device))
    probe = probe_for_run(run.config)
    row = score_probe(loaded.model, probe)
    table = head_scores_table(row)
    summary = {"run": run.name, "checkpoint": loaded.checkpoint, "step": loaded.step,
               "icl_score": row["icl_score"], "icl_early_loss": row["icl_early_loss"],
               "icl_late_loss": row["icl_late_loss"], "icl_positions": row["icl_positions"],
               "induction_max": row["induction_max"], "induction_head": row["induction_head"],
               "induction_threshold": INDUCTION_THRESHOLD, "probe": row["probe"], "notes": probe.notes}
    if args.json:
        print(json.dumps({**summary, "heads": table.to_dict(orient="records")}))
        return 0
    print(f"{run.name} ({loaded.checkpoint}, step {loaded.step}): share of each head's attention on its type's "
          "pattern (1 = a perfect head)")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    layer, head = row["induction_head"]
    verdict = "an induction head" if row["induction_max"] >= INDUCTION_THRESHOLD else "below the threshold"
    print(f"strongest induction head: layer {layer}, head {head} ({row['induction_max']:.3f}; {verdict} "
          f"{INDUCTION_THRESHOLD:g})")
    if row["icl_score"] is None:
        print("in-context learning score: n/a (no validation data)")
    else:
        positions = row["icl_positions"]
        print(f"in-context learning score: {row['icl_score']:+.3f} nats (loss at context positions "
              f"{positions['late'][0]}-{positions['late'][1]} minus {positions['early'][0]}-{positions['early'][1]})")
    for note in probe.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gpt", description="GPT Playground command line")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_prepare, _add_train, _add_export, _add_heads, _add_hub):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UserInputError as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {error}", file=sys.stderr)
        else:  # under torchrun every rank fails alike: rank 0 says it; the launcher stops all ranks when one
            time.sleep(1.0)  # exits, so the others leave a moment later, after rank 0 has printed its line
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
