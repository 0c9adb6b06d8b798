"""The model card: a run folder's README.md, what was trained on what, how well, and how to reproduce it.

Figures are labelled with what they are: the final evaluation over the whole validation split
(`scope: "full"`) is the run's result; in-training evaluations over the first `eval_batches` batches are
estimates and are labelled so. The runs table, `eval` and this card show the same final figure.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpt.run import CARD_FILE, DataRef, RunConfig, atomic_write_text, read_metrics


def _table(rows: Iterable[tuple[str, Any]]) -> str:
    lines = ["| field | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _prepare_command(data: DataRef) -> list[str]:
    """The `prepare` command that rebuilds the run's data folder, when its meta.json says enough."""
    from gpt.data.clean import CleanConfig

    meta = data.meta
    if not meta.get("inputs") or not data.dir:
        return []
    encoding = meta.get("encoding") or "auto"
    extra = ["--encoding", encoding] if encoding != "auto" else []
    command = shlex.join(["python", "-m", "gpt", "prepare", *meta["inputs"], *extra, "--out", data.dir])
    if meta.get("cleaning") not in (None, CleanConfig().to_dict()):
        command += f"  # with the cleaning options in {data.dir}/meta.json"
    return [command]


def final_evaluation(rows: list[dict]) -> dict | None:
    """The last whole-split evaluation of a run's eval rows, or None (runs from before it existed)."""
    full = [row for row in rows if row.get("kind", "eval") == "eval" and row.get("scope") == "full"]
    return full[-1] if full else None


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def result_rows(rows: list[dict], status: dict | None) -> list[tuple[str, str]]:
    """The labelled result lines of a run's metrics (shared by the card and the CLI summary)."""
    evals = [row for row in rows if row.get("kind") == "eval"]
    trains = [row for row in rows if row.get("kind") == "train"]
    result = []
    if status:
        result.append(("status", f"{status.get('status')} at step {status.get('step')}"))
    final = final_evaluation(evals)
    if final:
        result += [
            ("validation loss, whole split (nats/token)", f"{_number(final.get('val_loss'), 4)} at step "
                                                          f"{final['step']} ({final.get('eval_tokens', 0):,} tokens)"),
            ("perplexity, whole split", _number(final.get("perplexity"), 2)),
            ("bits per byte, whole split", _number(final.get("bits_per_byte"), 4)),
        ]
    estimates = [row for row in evals if row.get("scope") != "full" and row.get("val_loss") is not None]
    if estimates:
        best = min(estimates, key=lambda row: row["val_loss"])
        last = estimates[-1]
        label = "estimate" if final else "in-training estimate (first eval batches)"
        result += [
            (f"last validation loss, {label}", f"{_number(last['val_loss'], 4)} at step {last['step']}"),
            (f"last bits per byte, {label}", _number(last.get("bits_per_byte"), 4)),
            (f"best validation loss, {label}", f"{_number(best['val_loss'], 4)} at step {best['step']}"),
        ]
    if trains:
        last_train = trains[-1]
        result += [
            ("tokens seen", f"{last_train['tokens']:,}"),
            ("training time", f"{last_train['elapsed']:.0f} s"),
            ("throughput", f"{_number(last_train.get('tokens_per_second'), 0)} tokens/s"),
        ]
    return result


def write_model_card(run_dir: str | Path, config: RunConfig, *, status: dict | None = None,
                     links: Iterable[tuple[str, str]] = ()) -> Path:
    """Write README.md into the run folder. `links`: (label, text) lines such as the W&B run page."""
    run_dir = Path(run_dir)
    text = card_markdown(run_dir.name, read_metrics(run_dir), config, status=status, links=links)
    return atomic_write_text(run_dir / CARD_FILE, text)


def card_markdown(name: str, rows: list[dict], config: RunConfig, *, status: dict | None = None,
                  links: Iterable[tuple[str, str]] = (), intro: Iterable[str] = ()) -> str:
    """The card of a run named `name` with metrics `rows`; `intro`: markdown lines placed before the
    result (the Hub card's usage and loss curve, `gpt/hub.py`)."""
    samples = [row for row in rows if row.get("kind") == "sample"]
    model, meta = config.model, config.data.meta
    parts = [f"# {name}", "", "A GPT trained from scratch with GPT Playground.", "", *intro]
    result = result_rows(rows, status)
    parts += ["## Result", "", _table(result) if result else "No evaluation yet.", ""]
    parts += ["## Model", "", _table([("parameters", f"{model.num_parameters():,}"), *model.to_dict().items()]), ""]
    if config.train is not None:
        parts += ["## Training", "", _table([("preset", config.preset or "(none)"), *config.train.to_dict().items()]),
                  ""]
    if config.runtime:
        parts += ["## Machine", "", _table(config.runtime.items()), ""]
    parts += ["## Data", "", _table([("folder", config.data.dir), ("tokenizer", config.tokenizer.name)]
                                    + [(k, meta[k]) for k in ("source", "train_tokens", "val_tokens",
                                                              "train_bytes", "val_bytes") if k in meta]), ""]
    links = list(links)
    if links:
        parts += ["## Links", "", *(f"- {label}: {text}" for label, text in links), ""]
    if samples:
        parts += ["## Last sample", "", f"Prompt {samples[-1]['prompt']!r} at step {samples[-1]['step']}:", "",
                  "```", samples[-1]["text"], "```", ""]
    if config.command:
        parts += ["## Reproduce", "", "```bash", *_prepare_command(config.data), config.command, "```", ""]
    return "\n".join(parts)
