"""The command line: `python -m gpt prepare | train | eval | generate | export | import-hf`.

Each subcommand is a pair: `_add_<name>(subparsers)` declares its flags and `_run_<name>(args)` calls
the library. Bad input raises `UserInputError` in the library; `main` turns it into one line on stderr
and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gpt.errors import UserInputError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors in the same one-line form as ours."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{self.prog}: {message}")


# -- prepare ------------------------------------------------------------------------------------------
def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    """Filled in by the data pipeline work: `prepare INPUT... --out DIR`."""


# -- train / eval / generate --------------------------------------------------------------------------
def _add_train(subparsers: argparse._SubParsersAction) -> None:
    """Filled in by the trainer work: `train`, `eval`, `generate`."""


# -- export / import-hf -------------------------------------------------------------------------------
def _add_export(subparsers: argparse._SubParsersAction) -> None:
    """Filled in by the Hugging Face interop work: `export`, `import-hf`."""


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
