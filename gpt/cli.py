"""The command line: `python -m gpt prepare | train | eval | generate | export | import-hf`.

Each subcommand is a pair: `_add_<name>(subparsers)` declares its flags and `_run_<name>(args)` calls
the library. Bad input raises `UserInputError` in the library; `main` turns it into one line on stderr
and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gpt.errors import UserInputError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors in the same one-line form as ours."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{self.prog}: {message}")


# -- prepare ------------------------------------------------------------------------------------------
def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    """`prepare INPUT... --out DIR`: load, clean, split, tokenize to train.bin / val.bin / meta.json."""
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
    p.add_argument("--hf-dataset", metavar="NAME", help="a Hugging Face Hub dataset instead of files")
    p.add_argument("--hf-config", metavar="C", help="its configuration")
    p.add_argument("--hf-split", metavar="S", default="train", help="its split (train)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset already in DIR")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="tokenizer threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    clean = p.add_argument_group("cleaning (defaults keep non-English text, emoji and line breaks)")
    clean.add_argument("--no-fix-unicode", dest="fix_unicode", action="store_false",
                       help="do not repair broken Unicode (mojibake) with ftfy")
    clean.add_argument("--strip-html", action="store_true", help="remove HTML tags and decode entities")
    for name, what in (("urls", "URLs"), ("emails", "e-mail addresses"), ("phone-numbers", "phone numbers"),
                       ("numbers", "numbers")):
        clean.add_argument(f"--{name}", choices=("keep", "replace", "drop"), default="keep",
                           help=f"{what}: keep (default), replace with a placeholder, or drop")
    clean.add_argument("--remove-line-breaks", action="store_true", help="join lines with spaces")
    clean.add_argument("--no-collapse-whitespace", dest="collapse_whitespace", action="store_false",
                       help="keep runs of spaces, trailing spaces and runs of blank lines")
    clean.add_argument("--lowercase", action="store_true", help="lower-case everything")
    clean.add_argument("--to-ascii", action="store_true",
                       help="transliterate to ASCII (drops Korean, emoji and other non-Latin text)")
    clean.add_argument("--min-chars", type=int, default=0, metavar="N", help="drop documents shorter than N")
    clean.add_argument("--keep-duplicates", dest="deduplicate", action="store_false",
                       help="keep exact duplicate documents (default: drop them)")
    clean.add_argument("--remove-pattern", action="append", default=[], metavar="REGEX",
                       help="delete every match of a Python regular expression (repeatable)")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gpt.data import CleanConfig, load_hf_dataset, prepare_dataset

    config = CleanConfig(
        fix_unicode=args.fix_unicode, strip_html=args.strip_html, urls=args.urls, emails=args.emails,
        phone_numbers=args.phone_numbers, numbers=args.numbers, remove_line_breaks=args.remove_line_breaks,
        collapse_whitespace=args.collapse_whitespace, lowercase=args.lowercase, to_ascii=args.to_ascii,
        min_chars=args.min_chars, deduplicate=args.deduplicate, remove_patterns=tuple(args.remove_pattern))
    if args.threads is not None and args.threads < 1:
        raise UserInputError("--threads must be at least 1")
    if args.hf_dataset and args.inputs:
        raise UserInputError("give either INPUT files or --hf-dataset, not both")
    if not args.hf_dataset and not args.inputs:
        raise UserInputError("give at least one INPUT file (or --hf-dataset NAME)")
    source = (load_hf_dataset(args.hf_dataset, args.hf_config, args.hf_split, args.column or args.field)
              if args.hf_dataset else args.inputs)
    with tqdm(total=100, unit="%", disable=True if args.quiet else None, leave=False, file=sys.stderr,
              bar_format="{desc:<34}{bar}{percentage:3.0f}%") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.set_description_str(message, refresh=False)
            bar.update(round(fraction * 100) - bar.n)

        report = prepare_dataset(source, args.out, clean_config=config, val_fraction=args.val_fraction,
                                 overwrite=args.overwrite, progress=progress, column=args.column, field=args.field,
                                 split_on_blank_lines=args.split_on_blank_lines, num_threads=args.threads)
    print(report.summary())
    print(f"wrote {report.out_dir}/train.bin, val.bin, meta.json")
    return 0


# -- train / eval / generate --------------------------------------------------------------------------
_FIELD_TYPES = {"int": int, "float": float, "str": str}


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """One `--field-name` flag per dataclass field (default None = not given); returns the field names."""
    names = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        annotation = str(field.type)
        default = field.default if field.default is not dataclasses.MISSING else None
        if annotation == "bool":
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default: {default})")
        else:
            kind = _FIELD_TYPES[annotation.replace(" | None", "")]
            parser.add_argument(flag, dest=field.name, type=kind, default=None, metavar=kind.__name__.upper(),
                                help=f"(default: {default})")
        names.append(field.name)
    return names


def _given(args: argparse.Namespace, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    """`train`, `eval` and `generate`."""
    from gpt.model import GPTConfig
    from gpt.sampling import SamplingConfig
    from gpt.train import TRAIN_PRESETS, TrainConfig

    train = subparsers.add_parser(
        "train", help="train a GPT from scratch (or --resume a run)",
        description="Train a GPT on a prepared data folder. Every model and training option has a flag; "
                    "unset flags take the preset's value. Multi-GPU: torchrun --nproc_per_node=N -m gpt train ...")
    train.add_argument("--data", help="prepared data folder (python -m gpt prepare ... --out DIR)")
    train.add_argument("--preset", choices=list(TRAIN_PRESETS), default="tiny", help="model + training preset")
    train.add_argument("--out", help="run folder to create (default: checkpoints/<preset>-<date-time>)")
    train.add_argument("--resume", metavar="RUN", help="continue this run folder where it stopped")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    model_group = train.add_argument_group("model (GPTConfig)")
    train_group = train.add_argument_group("training (TrainConfig)")
    train.set_defaults(func=_run_train, model_fields=_add_dataclass_flags(model_group, GPTConfig, ("vocab_size",)),
                       train_fields=_add_dataclass_flags(train_group, TrainConfig))

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
                          sampling_fields=_add_dataclass_flags(sampling_group, SamplingConfig, ("top_candidates",)))


def _train_command(args: argparse.Namespace, out: str) -> str:
    """The canonical command line that reproduces this run."""
    parts = ["python", "-m", "gpt", "train", "--data", args.data, "--preset", args.preset, "--out", out]
    for name, value in _given(args, args.model_fields + args.train_fields).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gpt.model import GPTConfig
    from gpt.train import TrainConfig, Trainer, dist_info_from_env, reuse_freed_cpu_memory

    main_process = dist_info_from_env().is_main
    bar = None

    def on_row(row: dict) -> None:
        if row["kind"] == "status":
            (bar.write if bar is not None else print)(f"[{row['status']}] step {row['step']}: {row['message']}")
        elif row["kind"] == "eval" and bar is not None:
            bar.write(f"step {row['step']}: val loss {row['val_loss']:.4f}, "
                      f"bits/byte {row['bits_per_byte'] or float('nan'):.4f}")
        elif row["kind"] == "train" and bar is not None:
            bar.update(row["step"] - bar.n)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}")

    if args.resume:
        if _given(args, args.model_fields):
            raise UserInputError("a resumed run keeps its model; drop the model flags (or start a new run)")
        trainer = Trainer.resume(args.resume, data_dir=args.data, on_row=on_row, **_given(args, args.train_fields))
    else:
        if not args.data:
            raise UserInputError("train needs --data DIR (a folder made by python -m gpt prepare), or --resume RUN")
        out = args.out or str(Path("checkpoints") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        model_config = GPTConfig.from_preset(args.preset, **_given(args, args.model_fields))
        train_config = TrainConfig.from_preset(args.preset, **_given(args, args.train_fields))
        trainer = Trainer(model_config, train_config, args.data, out, command=_train_command(args, out), on_row=on_row)
    if trainer.device.type == "cpu":
        reuse_freed_cpu_memory()
    if main_process and not args.no_progress:
        bar = tqdm(total=trainer.planned_steps, initial=trainer.step, unit="step", dynamic_ncols=True)
    try:
        with trainer.stop_on_signals():
            status = trainer.run()
    finally:
        if bar is not None:
            bar.close()
        trainer.close()
    if main_process:
        print(f"{status}: {trainer.run_dir} (step {trainer.step}, best val loss {trainer.best_val_loss:.4f})")
    return 1 if status in ("diverged", "failed") else 0


def _run_eval(args: argparse.Namespace) -> int:
    from gpt.checkpoint import read_config
    from gpt.train import evaluate_run

    data = args.data or read_config(args.run)["data"]["dir"]
    result = evaluate_run(args.run, data, batch_size=args.batch_size, device=args.device,
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
    from gpt.checkpoint import load_run
    from gpt.sampling import SamplingConfig, prompt_note, stream_generate
    from gpt.train import resolve_device

    loaded = load_run(args.run, checkpoint=args.checkpoint, device=resolve_device(args.device))
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

    imp = subparsers.add_parser("import-hf", help="import a Hugging Face GPT-2 folder as a run folder")
    imp.add_argument("hf_dir", metavar="HF_DIR", help="folder with config.json + model.safetensors (GPT-2)")
    imp.add_argument("--out", required=True, metavar="RUN", help="run folder to create, e.g. checkpoints/gpt2")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing run folder's weights")
    imp.set_defaults(func=_run_import_hf)


def _run_export(args: argparse.Namespace) -> int:
    from gpt.checkpoint import load_run
    from gpt.hf import export_hf

    out = Path(args.hf)
    if (out / "config.json").exists() and not args.overwrite:
        raise UserInputError(f"{out} already holds a model; pass --overwrite to replace it")
    loaded = load_run(args.run, checkpoint=args.checkpoint)
    export_hf(loaded.model, out, loaded.tokenizer)
    print(f"exported {loaded.run_dir.name} ({loaded.checkpoint}, step {loaded.step}) to {out}: "
          f"load it with transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})")
    return 0


def _run_import_hf(args: argparse.Namespace) -> int:
    from gpt.checkpoint import CONFIG_FILE, LAST_FILE, atomic_write_json, save_weights, write_model_card
    from gpt.hf import import_hf
    from gpt.tokenizer import gpt2_tokenizer

    out = Path(args.out)
    if (out / CONFIG_FILE).exists() and not args.overwrite:
        raise UserInputError(f"{out} is already a run folder; pass --overwrite to replace it")
    model = import_hf(args.hf_dir)
    config = {
        "model": model.config.to_dict(),
        "train": {},
        "data": {"dir": "", "meta": {"source": f"imported from Hugging Face folder {args.hf_dir}"}},
        "tokenizer": gpt2_tokenizer().to_dict(),
        "command": shlex.join(["python", "-m", "gpt", "import-hf", str(args.hf_dir), "--out", str(out)]),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / LAST_FILE, step=0)
    atomic_write_json(out / CONFIG_FILE, config)
    write_model_card(out, config)
    print(f"imported {args.hf_dir} ({model.num_parameters():,} parameters) as run {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gpt", description="GPT Playground command line")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_prepare, _add_train, _add_export):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
