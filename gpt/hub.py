"""The Hugging Face Hub: push a run as a model repository, and pull one (or any GPT-2 model) back as a run.

A pushed repository holds, in one commit:
- at its root, the Hugging Face GPT-2 export of one checkpoint (`gpt/hf.py`: config.json, model.safetensors,
  generation_config.json, vocab.json, merges.txt) plus tokenizer_config.json, so that
  `AutoModelForCausalLM.from_pretrained(id)` and `pipeline("text-generation", model=id)` load it. A run
  GPT-2's architecture cannot express (rope, rmsnorm, swiglu, bias off) has none of these files, and its
  card gives `gpt/hf.py`'s reason;
- `playground/`: the run folder (config.json, model.safetensors, best.safetensors, snapshots/, metrics.jsonl),
  which `pull` restores as a full run. `trainer_state.pt` stays home: it only serves resuming, and it is a
  torch file a downloader should not have to trust;
- README.md, the Hub's model card (YAML front matter, then `gpt/card.py`'s card), and loss_curve.png.

`stage(run, folder)` writes exactly that folder. `push` first checks what it can without uploading (the
repository id, offline mode, a token, that the Hub answers within a few seconds, that it accepts the token),
stages into a temporary folder, then calls `create_repo` and one `upload_folder` commit, so a failure leaves
the repository's files as they were.

`pull(source, out_dir)` takes a local folder (a staged or downloaded repository, a run folder, or a Hugging
Face GPT-2 folder) or a Hub id (`gpt2`, or a repository pushed here), builds the run in a hidden folder next
to `out_dir`, and moves it into place only once its weights load.

Tokens are passed in, or found by huggingface_hub (HF_TOKEN, then the file `hf auth login` writes). They are
never printed, logged, written to disk or put into an error message.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt.card import card_markdown, write_model_card
from gpt.errors import UserInputError
from gpt.run import (
    BEST_FILE,
    CONFIG_FILE,
    LAST_FILE,
    METRICS_FILE,
    SNAPSHOTS_DIR,
    DataRef,
    Run,
    RunConfig,
    atomic_write_text,
    check_weights_file,
    create_run,
    has_checkpoint,
    save_weights,
    train_command,
)
from gpt.tokenizer import GPT2_VOCAB_SIZE

HUB_RUN_DIR = "playground"
HUB_CARD_FILE = "README.md"
CURVE_FILE = "loss_curve.png"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DEFAULT_LICENSE = "other"  # the weights' license is the uploader's to choose (--license)
# Files of a run folder that travel (never trainer_state.pt or train.log); snapshots match SNAPSHOT_NAME.
RUN_FILES = (CONFIG_FILE, LAST_FILE, BEST_FILE, METRICS_FILE)
SNAPSHOT_NAME = re.compile(r"^step_\d+\.safetensors$")
# Files an earlier push may have left that this one replaces: deleted in the same commit when this push does
# not upload them, so a run without a transformers export never leaves an older run's export behind.
STALE_PATTERNS = [f"{HUB_RUN_DIR}/*", "*.safetensors", "config.json", "generation_config.json", "vocab.json",
                  "merges.txt", TOKENIZER_CONFIG_FILE, CURVE_FILE]
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_EOT = "<|endoftext|>"
Progress = Callable[[float, str], None]


# -- checks before any upload -------------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """`OWNER/NAME` or `NAME` as the Hub spells repository ids, or a clear error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id = str(repo_id or "").strip()
    if not repo_id:
        raise UserInputError("give a repository name: OWNER/NAME (or NAME for your own account)", field="repo")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserInputError(f"{repo_id!r} is not a Hugging Face repository id: use OWNER/NAME with letters, digits, "
                             "'-', '_' and '.' (at most 96 characters)", field="repo") from None
    return repo_id


def hub_url(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


def _check_offline(action: str) -> None:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise UserInputError(f"cannot {action}: the Hugging Face Hub is off here (HF_HUB_OFFLINE is set); nothing "
                             "was sent. Unset HF_HUB_OFFLINE on a machine with a network, or download the run as a "
                             "zip instead")


def _check_reachable(action: str) -> None:
    """Fail at once when the Hub gives no answer within `gpt.data.load.HUB_CHECK_SECONDS` (the client's own
    retries would take tens of seconds)."""
    from gpt.data.load import hub_unreachable

    reason = hub_unreachable()
    if reason:
        raise UserInputError(f"cannot {action}: the Hugging Face Hub is unreachable ({reason}); nothing was sent")


def _token(token: str | None, server_token: bool = True) -> str:
    """The token given, else (with `server_token`) the one huggingface_hub finds (HF_TOKEN, then the
    `hf auth login` file)."""
    from huggingface_hub import get_token

    token = (token or "").strip() or (get_token() if server_token else None)
    if not token and not server_token:
        raise UserInputError("paste your own Hugging Face token with write access: on a Space the server's token "
                             "is never used for a visitor's push", field="token")
    if not token:
        raise UserInputError("pushing needs a Hugging Face token with write access: set HF_TOKEN, or log in with "
                             "`hf auth login` (in the app: paste one into the token field)", field="token")
    return token


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


@contextlib.contextmanager
def _hub_errors(action: str, token: str | None, after: str = "nothing was uploaded") -> Iterator[None]:
    """Turn what huggingface_hub raises while doing `action` into one line (the token never in it)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except OfflineModeIsEnabled:
        raise UserInputError(f"cannot {action}: the Hugging Face Hub is off here (HF_HUB_OFFLINE is set); "
                             f"{after}") from None
    except (GatedRepoError, RepositoryNotFoundError):
        raise UserInputError(f"cannot {action}: the repository does not exist, or it is private or gated and the "
                             "token (if any) may not read it") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            message = "the Hub refused the token (invalid or expired)"
        elif status == 403:
            message = "the token may not do this (it needs write access to that owner)"
        else:
            message = f"the Hub answered {status}: {str(error).splitlines()[0]}"
        raise UserInputError(_scrub(f"cannot {action}: {message}; {after}", token)) from None
    except LocalEntryNotFoundError as error:
        raise UserInputError(_scrub(f"cannot {action}: {str(error).splitlines()[0]}", token)) from None
    except Exception as error:
        if not isinstance(error, OSError) and not type(error).__module__.startswith("httpx"):
            raise  # not the network: a bug, shown as one
        raise UserInputError(f"cannot {action}: the connection to the Hub failed ({type(error).__name__}); "
                             f"{after}") from None


# -- the repository's files ---------------------------------------------------------------------------------
@dataclass
class Staged:
    """A folder laid out as the repository will be: `export_refusal` says why it has no transformers export."""

    folder: Path
    checkpoint: str
    step: int
    export_refusal: str | None

    @property
    def exported(self) -> bool:
        return self.export_refusal is None


def _write_tokenizer_config(folder: Path, context_length: int) -> None:
    """tokenizer_config.json: the GPT-2 tokenizer with this model's context as its maximum length."""
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "bos_token": _EOT,
              "eos_token": _EOT, "unk_token": _EOT, "add_prefix_space": False}
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _copy_run_files(source: Path, target: Path) -> None:
    """The run's travelling files (RUN_FILES and its snapshots) from `source` into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    snapshots = sorted(p for p in (source / SNAPSHOTS_DIR).glob("*") if SNAPSHOT_NAME.match(p.name))
    for snapshot in snapshots:
        (target / SNAPSHOTS_DIR).mkdir(exist_ok=True)
        shutil.copyfile(snapshot, target / SNAPSHOTS_DIR / snapshot.name)


def _front_matter(staged: Staged, license: str) -> list[str]:
    tags = ["gpt-playground", "text-generation", "pytorch", "safetensors"] + (["gpt2"] if staged.exported else [])
    lines = ["---"]
    if staged.exported:
        lines += ["library_name: transformers", "pipeline_tag: text-generation"]
    lines += [f"license: {license}", "tags:", *(f"- {tag}" for tag in tags), "---", ""]
    return lines


def _usage(run: Run, repo_id: str, staged: Staged) -> list[str]:
    """The card's "Use it" and "Restore" sections, and the loss curve's caption."""
    train = run.config.train
    prompt = (train.sample_prompt if train is not None and train.sample_prompt else "") or "Once upon a time"
    if staged.exported:
        lines = ["## Use it with transformers", "",
                 f"The files at the root are checkpoint `{staged.checkpoint}` (step {staged.step}) as a Hugging Face "
                 "GPT-2 model (`GPT2LMHeadModel`) with the GPT-2 tokenizer.", "", "```python",
                 "from transformers import pipeline", "",
                 f'generator = pipeline("text-generation", model="{repo_id}")',
                 f'print(generator({prompt!r}, max_new_tokens=60, do_sample=True)[0]["generated_text"])', "```", ""]
        if run.config.tokenizer.vocab_size < GPT2_VOCAB_SIZE:
            lines += [f"The run used a compact vocabulary of {run.config.tokenizer.vocab_size:,} GPT-2 tokens: the "
                      "others have all-zero embeddings (their logit is 0) and generation_config.json suppresses "
                      "them, so `generate` never produces them.", ""]
    else:
        lines = ["## No transformers export", "", staged.export_refusal or "", "",
                 "Load it with GPT Playground instead (below).", ""]
    snapshots = sum(1 for info in run.checkpoints() if info.name.startswith("snapshot:"))
    lines += ["## Restore it in GPT Playground", "", "```bash",
              f"python -m gpt pull {repo_id} --out checkpoints/{run.name}", "```", "",
              f"`{HUB_RUN_DIR}/` holds the run folder: its config.json, weights, {snapshots} snapshot(s) across "
              "training and metrics.jsonl, so the Generate and Inspect tabs work on it as on the original (the "
              "trainer state is not uploaded, so training cannot be resumed from this copy).", ""]
    if (staged.folder / CURVE_FILE).is_file():
        batches = train.eval_batches if train is not None else None
        estimate = f"over the first {batches} validation batches" if batches else "over part of the validation split"
        lines += ["## Loss curve", "", f"![Training and validation loss of {run.name}]({CURVE_FILE})", "",
                  f"Loss in nats per token. The line is the training loss; the dots are in-training estimates "
                  f"{estimate}; the final evaluation over the whole validation split (the run's result, when it "
                  "has one) is the last, larger dot and is named in the legend.", ""]
    return lines


def stage(run: Run, folder: str | Path, *, repo_id: str, checkpoint: str = "last",
          license: str = DEFAULT_LICENSE) -> Staged:
    """Write into `folder` (new or empty) every file the repository `repo_id` gets; see the module docstring."""
    from gpt.figures import loss_curve_png, loss_curve_series
    from gpt.hf import export_hf

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise UserInputError(f"{folder} is not empty; stage a repository into a new folder")
    if not _LICENSE.match(license):
        raise UserInputError(f"license {license!r} is not a Hub license id (such as mit, apache-2.0, cc-by-4.0, other)",
                             field="license")
    loaded = run.load(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        export_hf(loaded.model, folder, loaded.tokenizer)
        _write_tokenizer_config(folder, run.config.model.context_length)
        refusal = None
    except UserInputError as error:  # the architecture has no GPT-2 form: the reason goes into the card
        refusal = str(error)
    _copy_run_files(run.dir, folder / HUB_RUN_DIR)
    rows = run.metrics()
    if loss_curve_series(rows):
        (folder / CURVE_FILE).write_bytes(loss_curve_png(rows, run.name))
    staged = Staged(folder=folder, checkpoint=loaded.checkpoint, step=loaded.step, export_refusal=refusal)
    wandb = run.wandb_link()
    links = [("Hugging Face Hub", hub_url(repo_id))] + ([wandb] if wandb else [])
    card = card_markdown(run.name, rows, run.config, status=run.status(), links=links,
                         intro=_usage(run, repo_id, staged))
    atomic_write_text(folder / HUB_CARD_FILE, "\n".join(_front_matter(staged, license)) + card)
    return staged


# -- push ---------------------------------------------------------------------------------------------------
@dataclass
class PushResult:
    repo_id: str
    url: str
    commit_url: str
    staged: Staged
    files: int

    def summary(self) -> str:
        export = ("transformers loads it: AutoModelForCausalLM.from_pretrained"
                  f"({self.repo_id!r})" if self.staged.exported
                  else f"no transformers export ({self.staged.export_refusal})")
        return (f"pushed {self.files} files ({self.staged.checkpoint} checkpoint, step {self.staged.step}) to "
                f"{self.url} in one commit; {export}")


def push(run: Run, repo_id: str, *, private: bool = False, checkpoint: str = "last", token: str | None = None,
         server_token: bool = True,
         license: str = DEFAULT_LICENSE, progress: Progress | None = None) -> PushResult:
    """Upload `run` to the Hub model repository `repo_id` (created when missing, `private` then) in one commit."""
    from huggingface_hub import HfApi

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    repo_id = check_repo_id(repo_id)
    _, weights = run.checkpoint_path(checkpoint)
    if not weights.is_file():
        raise UserInputError(f"{run.name} has no {checkpoint} checkpoint yet ({weights.name} is missing)",
                             field="checkpoint")
    _check_offline(f"push to {repo_id}")
    token = _token(token, server_token)
    _check_reachable(f"push to {repo_id}")
    api = HfApi()
    report(0.05, "checking the token")
    with _hub_errors(f"push to {repo_id}", token):
        user = api.whoami(token=token)["name"]
    if "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    with tempfile.TemporaryDirectory(prefix="gpt-hub-") as tmp:
        report(0.1, "preparing the files (GPT-2 export, run folder, model card)")
        staged = stage(run, Path(tmp) / "repo", repo_id=repo_id, checkpoint=checkpoint, license=license)
        files = sum(1 for path in staged.folder.rglob("*") if path.is_file())
        report(0.3, f"creating {repo_id}")
        with _hub_errors(f"push to {repo_id}", token):
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        report(0.4, f"uploading {files} files in one commit")
        with _hub_errors(f"push to {repo_id}", token, after="no files were committed (a commit is all or nothing)"):
            commit = api.upload_folder(repo_id=url.repo_id, folder_path=staged.folder, token=token,
                                       commit_message=f"{run.name}: {staged.checkpoint} checkpoint (step "
                                                      f"{staged.step}) from GPT Playground",
                                       delete_patterns=STALE_PATTERNS)
    report(1.0, "pushed")
    return PushResult(repo_id=url.repo_id, url=hub_url(url.repo_id), commit_url=commit.commit_url, staged=staged,
                      files=files)


# -- pull ---------------------------------------------------------------------------------------------------
@dataclass
class PullResult:
    run_dir: Path
    kind: str  # "run": a run pushed from GPT Playground; "gpt2": Hugging Face GPT-2 weights
    source: str
    parameters: int
    step: int
    snapshots: int

    def summary(self) -> str:
        if self.kind == "run":
            return (f"restored run {self.run_dir} from {self.source} ({self.parameters:,} parameters, step "
                    f"{self.step}, {self.snapshots} snapshot(s), metrics included)")
        return f"imported {self.source} ({self.parameters:,} parameters) as run {self.run_dir}"


def _looks_like_path(source: str) -> bool:
    return "\\" in source or source.startswith((".", "~", "/")) or source.count("/") > 1


def _cached_snapshot(repo_id: str, patterns: list[str], token: str | None, why: str) -> Path:
    """The repository's files from the local Hugging Face cache, when the Hub cannot be asked."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True, token=token))
    except LocalEntryNotFoundError:
        raise UserInputError(f"cannot download {repo_id}: {why}, and it is not in the local Hugging Face cache; "
                             "give a local folder instead (e.g. one made by `python -m gpt export`)") from None


def download(repo_id: str, token: str | None = None) -> Path:
    """The files of Hub repository `repo_id` that `pull` needs, in the local Hugging Face cache: the run
    folder of a repository pushed here, else the GPT-2 config.json and model.safetensors (never pickles)."""
    from huggingface_hub import HfApi, constants

    from gpt.data.load import hub_unreachable

    repo_id = check_repo_id(repo_id)
    run_patterns, gpt2_patterns = [f"{HUB_RUN_DIR}/*"], [CONFIG_FILE, LAST_FILE]
    token = (token or "").strip() or None
    if constants.is_offline_mode():
        return _cached_snapshot(repo_id, run_patterns + gpt2_patterns, token,
                                "the Hugging Face Hub is off here (HF_HUB_OFFLINE is set)")
    reason = hub_unreachable()
    if reason:
        return _cached_snapshot(repo_id, run_patterns + gpt2_patterns, token,
                                f"the Hugging Face Hub is unreachable ({reason})")
    api = HfApi()
    with _hub_errors(f"download {repo_id}", token, after="nothing was downloaded"):
        files = api.list_repo_files(repo_id, token=token)
        patterns = run_patterns if f"{HUB_RUN_DIR}/{CONFIG_FILE}" in files else gpt2_patterns
        return Path(api.snapshot_download(repo_id, allow_patterns=patterns, token=token))


def _run_config_file(folder: Path) -> Path | None:
    """The run folder's config.json inside a pulled folder (`playground/`, or the folder itself), or None."""
    for candidate in (folder / HUB_RUN_DIR, folder):
        path = candidate / CONFIG_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and isinstance(data.get("model"), dict):
                return path
    return None


def _check_target(out: Path, overwrite: bool) -> None:
    if has_checkpoint(out) and not overwrite:
        raise UserInputError(f"{out} is already a run folder; pass --overwrite to replace it", field="out")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise UserInputError(f"{out} exists and is not a run folder; choose another --out", field="out")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} is a file; choose a folder for --out", field="out")


def _move_into_place(staging: Path, out: Path) -> None:
    """Put the finished `staging` folder at `out`, replacing the run folder there (checked by `_check_target`)."""
    if not out.exists():
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    out.rename(old / out.name)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def pull(source: str | Path, out_dir: str | Path, *, token: str | None = None, overwrite: bool = False) -> PullResult:
    """Make run folder `out_dir` from a local folder or a Hub id (see the module docstring)."""
    from gpt.hf import import_hf
    from gpt.tokenizer import gpt2_tokenizer

    out = Path(out_dir)
    _check_target(out, overwrite)
    text = str(source).strip()
    folder = Path(text).expanduser()
    links: list[tuple[str, str]] = []
    if folder.is_dir():
        label = text
    elif _looks_like_path(text) or folder.exists():
        raise UserInputError(f"{text} is not a folder; give a folder or a Hugging Face model id such as gpt2")
    else:
        folder, label = download(text, token), f"{text} on the Hugging Face Hub"
        links = [("Hugging Face Hub", hub_url(text))]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".pull-{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; run folders are shared like those the trainer makes
    try:
        config_file = _run_config_file(folder)
        if config_file is not None:
            kind, config = "run", RunConfig.read(config_file)
            if config.command is None and config.train is not None:
                config.command = train_command(out, config)
            create_run(staging, config)
            _copy_run_files(config_file.parent, staging)
            if not has_checkpoint(staging):
                raise UserInputError(f"{config_file.parent} has a {CONFIG_FILE} but no {LAST_FILE}")
        else:
            model = import_hf(folder)
            kind = "gpt2"
            config = RunConfig(model=model.config, train=None,
                               data=DataRef("", {"source": f"imported from Hugging Face {label}"}),
                               tokenizer=gpt2_tokenizer(),
                               command=shlex.join(["python", "-m", "gpt", "import-hf", text, "--out", str(out)]))
            create_run(staging, config)
            save_weights(model, staging / LAST_FILE, step=0)
        run = Run.open(staging)
        loaded = run.load("last")  # the weights match the config (and the tokenizer), or a clear error
        checkpoints = run.checkpoints()
        for info in checkpoints:
            check_weights_file(info.path, config.model)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    restored = Run.open(out)
    wandb = restored.wandb_link()
    write_model_card(out, restored.config, status=restored.status(), links=links + ([wandb] if wandb else []))
    return PullResult(run_dir=out, kind=kind, source=label, parameters=loaded.model.num_parameters(),
                      step=loaded.step, snapshots=sum(1 for info in checkpoints if info.name.startswith("snapshot:")))
