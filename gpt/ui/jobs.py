"""One training job per server, which the UI polls through the run's `metrics.jsonl`.

Start always takes one path: the Train tab resolves the preset and the fields into a complete
`RunConfig`, `JobManager.start` writes it as the run's `config.json` (`gpt.run.create_run`), and the job
trains from that file. The registry (`JOBS`) is a module global, so every browser session, and the same
page after a reload, finds the running job again. Two kinds of job, with the same face to the UI:

- `ProcessJob` (the default): `python -m gpt train --config RUN/config.json` in a child process, so the app
  trains exactly as the command line does and a crash in training cannot take the web server down.
  stdout/stderr go to `train.log` in the run folder. Stop sends SIGTERM, which the trainer turns into a
  graceful stop with a checkpoint.
- `BurstJob` (on Hugging Face ZeroGPU, where a GPU exists only inside `@spaces.GPU` calls, 60 s by default,
  run in a separate process with everything crossing it pickled): a thread that calls `train_burst` again
  and again; each call starts the run from its config file or resumes it from its checkpoint, trains for
  `BURST_SECONDS` on the GPU, saves, and returns only the status string (CPU state and plain data cross
  the boundary, never CUDA tensors). torch.compile is refused there. Stop is honoured at the next burst,
  which then ends the run as `stopped` with a final evaluation and checkpoint.
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

from gpt.errors import UserInputError
from gpt.run import CONFIG_FILE, Run, RunConfig, create_run, log_path
from gpt.train import Trainer
from gpt.ui import zerogpu

# A burst trains this long; its GPU call (`duration`) adds room for start-up, the evaluation and the save,
# and stays within ZeroGPU's default of 60 s per call.
BURST_SECONDS = 40.0
BURST_DURATION = 60


def train_command(run_dir: Path) -> list[str]:
    """The child process's command: train the run its config file describes."""
    return [sys.executable, "-m", "gpt", "train", "--config", str(run_dir / CONFIG_FILE), "--no-progress"]


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
        return _read_last_error(log_path(self.run_dir))

    def request_stop(self) -> None:
        self.stop_requested = True
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _train_burst(run_dir: str, seconds: float, stop: bool) -> str:
    """One GPU call of a `BurstJob`: start the run from its config file or resume it, train up to `seconds`,
    save; returns its status (a plain string: nothing else crosses the ZeroGPU process boundary).
    With `stop`, end the run now as `stopped` (final evaluation and checkpoint)."""
    run = Run.open(run_dir)
    if run.has_trainer_state():
        trainer = Trainer.resume(run.dir, on_zerogpu=zerogpu.ON_ZEROGPU)
    else:
        trainer = Trainer.from_config(run.dir / CONFIG_FILE, on_zerogpu=zerogpu.ON_ZEROGPU)
    if stop:
        trainer.request_stop()
    status = trainer.run(max_seconds=seconds)
    if status == "running":
        trainer.save()  # marks the run diverged instead when its weights went bad
    return trainer.status


train_burst = zerogpu.gpu(_train_burst, duration=BURST_DURATION)


@dataclass
class BurstJob:
    """Training in bounded bursts from a thread of the server (for ZeroGPU)."""

    run_dir: Path
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
        with open(log_path(self.run_dir), "a", encoding="utf-8") as log:
            log.write(line.rstrip("\n") + "\n")

    def _loop(self) -> None:
        try:
            status = "running"
            while status == "running":
                stop = self.stop_requested
                status = train_burst(str(self.run_dir), self.burst_seconds, stop)
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
        return _read_last_error(log_path(self.run_dir))

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

    def start(self, config: RunConfig, run_dir: Path) -> ProcessJob | BurstJob:
        """Write `config` as a new run in `run_dir` and train it; refuse while another job runs."""
        with self._lock:
            if self._job is not None and self._job.is_running():
                raise UserInputError(
                    f"a training job is already running on this server: '{self._job.name}'. "
                    "Stop it first (one job at a time)."
                )
            create_run(run_dir, config)
            command = train_command(run_dir)
            with open(log_path(run_dir), "ab") as log:
                log.write(f"$ {' '.join(command)}\n".encode())
                if self.burst_seconds is None:
                    log.flush()
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
                    self._job = ProcessJob(run_dir=run_dir, process=process)
                    return self._job
            job = BurstJob(run_dir=run_dir, burst_seconds=self.burst_seconds)
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
