"""One training job per server, which the UI polls through the run's `metrics.jsonl`.

The registry (`JOBS`) is a module global, so every browser session, and the same page after a reload,
finds the running job again. Two kinds of job, with the same face to the UI:

- `ProcessJob` (the default): `python -m gpt train ...` in a child process, so the app trains exactly as
  the command line does and a crash in training cannot take the web server down. stdout/stderr go to
  `train.log` in the run folder. Stop sends SIGTERM, which the trainer turns into a graceful stop with a
  checkpoint.
- `BurstJob` (on Hugging Face ZeroGPU, where a GPU exists only inside `@spaces.GPU` calls of about a
  minute): a thread that calls `train_burst` again and again; each call resumes the run from its
  checkpoint, trains for `burst_seconds` on the GPU and saves. Stop is honoured at the next burst, which
  then ends the run as `stopped` with a final evaluation and checkpoint.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from gpt.checkpoint import STATE_FILE
from gpt.errors import UserInputError
from gpt.model import GPTConfig
from gpt.train import TrainConfig, Trainer
from gpt.ui import zerogpu

LOG_NAME = "train.log"
BURST_SECONDS = 45.0


def train_arguments(model: GPTConfig, train: TrainConfig, data_dir: Path, run_dir: Path, preset: str) -> list[str]:
    """The `python -m gpt train` arguments that give exactly these configs (every field spelled out)."""
    args = ["--data", str(data_dir), "--preset", preset, "--out", str(run_dir), "--no-progress"]
    model_fields = {k: v for k, v in model.to_dict().items() if k != "vocab_size"}
    for name, value in {**model_fields, **train.to_dict()}.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return args


def _read_last_error(log_path: Path) -> str:
    """The `error: ...` line of a log (as the command line prints it), else its last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


@dataclass
class ProcessJob:
    """A `python -m gpt train` child process."""

    run_dir: Path
    process: subprocess.Popen
    stop_requested: bool = False

    @property
    def name(self) -> str:
        return self.run_dir.name

    def is_running(self) -> bool:
        return self.process.poll() is None

    def returncode(self) -> int | None:
        return self.process.poll()

    def last_error(self) -> str:
        return _read_last_error(self.run_dir / LOG_NAME)

    def request_stop(self) -> None:
        self.stop_requested = True
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _train_burst(model: dict, train: dict, data_dir: str, run_dir: str, command: str, seconds: float,
                stop: bool) -> str:
    """One GPU call of a `BurstJob`: start or resume the run, train up to `seconds`, save; returns its status.
    With `stop`, end the run now as `stopped` (final evaluation and checkpoint)."""
    if (Path(run_dir) / STATE_FILE).is_file():
        trainer = Trainer.resume(run_dir)
    else:
        trainer = Trainer(GPTConfig.from_dict(model), TrainConfig.from_dict(train), data_dir, run_dir,
                          command=command)
    if stop:
        trainer.request_stop()
    status = trainer.run(max_seconds=seconds)
    if status == "running":
        trainer.save()
    return status


train_burst = zerogpu.gpu(_train_burst, duration=int(BURST_SECONDS) + 30)


@dataclass
class BurstJob:
    """Training in bounded bursts from a thread of the server (for ZeroGPU)."""

    run_dir: Path
    model: GPTConfig
    train: TrainConfig
    data_dir: Path
    command: str
    burst_seconds: float
    stop_requested: bool = False
    _returncode: int | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"train-{self.name}", daemon=True)
        self._thread.start()

    def _log(self, line: str) -> None:
        with open(self.run_dir / LOG_NAME, "a", encoding="utf-8") as log:
            log.write(line.rstrip("\n") + "\n")

    def _loop(self) -> None:
        try:
            status = "running"
            while status == "running":
                stop = self.stop_requested
                status = train_burst(self.model.to_dict(), self.train.to_dict(), str(self.data_dir),
                                     str(self.run_dir), self.command, self.burst_seconds, stop)
                self._log(f"burst ended: {status}")
            self._returncode = 0 if status in ("finished", "stopped") else 1
        except UserInputError as error:
            self._log(f"error: {error}")
            self._returncode = 2
        except Exception:  # a crash in training must not take the server down; it goes to the log
            self._log(traceback.format_exc())
            self._returncode = 1

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def returncode(self) -> int | None:
        return None if self.is_running() else self._returncode

    def last_error(self) -> str:
        return _read_last_error(self.run_dir / LOG_NAME)

    def request_stop(self) -> None:
        self.stop_requested = True

    def wait(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class JobManager:
    """Starts at most one training job at a time and remembers the last one.

    `burst_seconds=None`: jobs are `python -m gpt train` processes; a number: `BurstJob`s of that length."""

    def __init__(self, burst_seconds: float | None = None) -> None:
        self.burst_seconds = burst_seconds
        self._lock = threading.Lock()
        self._job: ProcessJob | BurstJob | None = None

    def current(self) -> ProcessJob | BurstJob | None:
        """The running job, or the last one that ran (finished, stopped or failed)."""
        return self._job

    def start(self, model: GPTConfig, train: TrainConfig, data_dir: Path, run_dir: Path,
              preset: str) -> ProcessJob | BurstJob:
        """Train `model` with `train` on `data_dir` into `run_dir`; refuse while another job runs."""
        with self._lock:
            if self._job is not None and self._job.is_running():
                raise UserInputError(
                    f"a training job is already running on this server: '{self._job.name}'. "
                    "Stop it first (one job at a time)."
                )
            run_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "gpt", "train", *train_arguments(model, train, data_dir, run_dir, preset)]
            with open(run_dir / LOG_NAME, "ab") as log:
                log.write(f"$ {' '.join(command)}\n".encode())
                if self.burst_seconds is None:
                    log.flush()
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
                    self._job = ProcessJob(run_dir=run_dir, process=process)
                    return self._job
            job = BurstJob(run_dir=run_dir, model=model, train=train, data_dir=data_dir,
                           command=" ".join(command[1:]), burst_seconds=self.burst_seconds)
            job.start()
            self._job = job
            return job

    def stop(self) -> ProcessJob | BurstJob | None:
        """Ask the running job to stop gracefully; returns it, or None when nothing runs."""
        with self._lock:
            job = self._job
            if job is None or not job.is_running():
                return None
            job.request_stop()
            return job

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop a running job and wait for it (called when the server process exits)."""
        job = self.stop()
        if job is not None:
            job.wait(timeout)


JOBS = JobManager(burst_seconds=BURST_SECONDS if zerogpu.ON_ZEROGPU else None)
atexit.register(JOBS.shutdown)
