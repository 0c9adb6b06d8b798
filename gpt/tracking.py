"""Weights & Biases: mirrors a run's metrics rows to W&B (`--wandb offline|online`).

Nothing here stores or prints a key: `wandb` reads WANDB_API_KEY or its own login. The run page link
(online) or the offline folder with its `wandb sync` command is what `WandbLogger.where()` returns for
the Train tab and the model card.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt.errors import UserInputError


class WandbLogger:
    """Mirrors metrics rows to Weights & Biases; samples go into one growing table."""

    def __init__(self, mode: str, project: str, name: str, config: dict, run_dir: Path) -> None:
        import wandb

        self.wandb = wandb
        self.mode = mode
        self.samples: list[list] = []
        try:
            self.run = wandb.init(project=project, name=name, config=config, mode=mode, dir=os.environ.get(
                "WANDB_DIR", str(run_dir)), reinit="finish_previous")
        except Exception as error:  # wandb raises several types (UsageError, CommError, AuthenticationError)
            if mode == "online":
                raise UserInputError(
                    "W&B online logging needs an account: run `wandb login` (or set WANDB_API_KEY) first, "
                    f"or use --wandb offline / off ({type(error).__name__})", field="wandb"
                ) from None
            raise UserInputError(f"W&B could not start in {mode} mode: {type(error).__name__}: {error}",
                                 field="wandb") from None

    def where(self) -> tuple[str, str]:
        """("W&B run", URL) online; ("W&B offline run", "FOLDER — upload with: wandb sync FOLDER") offline."""
        if self.mode == "online" and getattr(self.run, "url", None):
            return "W&B run", self.run.url
        folder = str(Path(self.run.dir).parent)
        return "W&B offline run", f"{folder} (upload it with: wandb sync {folder})"

    def log(self, row: dict) -> None:
        kind, step = row.get("kind"), row.get("step", 0)
        if kind == "sample":
            self.samples.append([step, row["prompt"], row["text"]])
            self.run.log({"samples": self.wandb.Table(columns=["step", "prompt", "text"], data=self.samples)},
                         step=step)
        elif kind in ("train", "eval"):
            values = {f"{kind}/{k}": v for k, v in row.items()
                      if k not in ("kind", "step") and isinstance(v, int | float) and not isinstance(v, bool)}
            self.run.log(values, step=step)
        elif kind == "status":
            self.run.summary["status"] = row["status"]

    def finish(self) -> None:
        self.run.finish()
