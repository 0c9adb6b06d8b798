"""How to train (`TrainConfig`) and the presets: one entry per preset = model shape + training recipe.

    model, train = resolve_preset("quick-cpu", model_overrides={"n_layer": 6}, train_overrides={"seed": 2})

A preset never names hardware: precision is `auto` and `gpt/runtime.py` decides it on the machine that
trains. `resolve_preset` is the one place a preset is applied; the resolved configs go into the run's
`config.json` (`gpt/run.py`), and the trainer reads that file, never the preset again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from gpt.errors import UserInputError
from gpt.fields import check_fields, from_dict, option
from gpt.model import GPTConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WANDB_MODES = ("off", "offline", "online")
VOCABS = ("full", "compact")
OPTIMIZERS = ("adamw", "muon")
MUON_ORTHOGONALISERS = ("newton-schulz", "polar-express")
MUON_VARIANT_FIELDS = ("muon_orthogonaliser", "muon_normalise", "muon_cautious_weight_decay")
SCHEDULES = ("cosine", "wsd")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
STOP_FIELDS = ("max_steps", "max_minutes", "epochs")
AVERAGING_FIELDS = ("ema_decay", "ema_power")  # one rule at a time
# Fields set as a group: giving any of them replaces all of a preset's (`_with_overrides`, and the one
# command line that reproduces a run, `gpt.run.train_command`, gives the whole group when any differs).
FIELD_GROUPS = (STOP_FIELDS, AVERAGING_FIELDS)


@dataclass
class TrainConfig:
    """How to train. Validated at construction (`UserInputError` says which field and what to change).

    At least one of `max_steps`, `max_minutes`, `epochs` bounds the run; the first one reached stops it.
    `batch_size` is per process and micro-batch; the global batch is batch_size x grad_accum_steps windows
    (under torchrun see `gpt.runtime.split_batch`).
    """

    batch_size: int = option(16, label="Batch size (windows)", help="windows of context_length tokens per "
                             "micro-batch", minimum=1)
    grad_accum_steps: int = option(1, label="Gradient accumulation", help="micro-batches per optimizer step",
                                   minimum=1)
    max_steps: int | None = option(None, label="Max steps", help="stop after this many optimizer steps",
                                   minimum=1, optional=True)
    max_minutes: float | None = option(None, label="Max minutes", help="stop after this much training time "
                                       "(the schedule then decays over time)", minimum=0, exclusive_minimum=True,
                                       optional=True)
    epochs: float | None = option(None, label="Epochs", help="stop after this many passes over the training "
                                  "tokens", minimum=0, exclusive_minimum=True, optional=True)
    learning_rate: float = option(1e-3, label="Learning rate", help="peak AdamW learning rate", minimum=0,
                                  exclusive_minimum=True)
    min_lr_ratio: float = option(0.1, label="Min LR / LR", help="the cosine decays to this fraction of the peak",
                                 minimum=0.0, maximum=1.0)
    warmup_steps: int = option(100, label="Warmup steps", help="linear warmup from 0 to the peak", minimum=0)
    weight_decay: float = option(0.1, label="Weight decay", help="decoupled weight decay of matrices (0 = off)",
                                 minimum=0.0)
    dropout_from_epochs: float | None = option(None, label="Dropout only past N epochs (0 = always)",
                                               help="the model's dropout is used only when the run is planned to "
                                               "pass over the training tokens more than this many times (for a "
                                               "time-bounded run, from a timed training step before it starts); "
                                               "fewer passes train without it", minimum=0, exclusive_minimum=True,
                                               optional=True)
    dropout_start_fraction: float = option(0.0, label="Late dropout: from this share of the run on (0 = always)",
                                           help="the model's dropout starts this share of the way through the run; "
                                           "before it the model trains without (faster, and early training does "
                                           "not overfit yet: late dropout, Liu et al. 2023)", minimum=0.0,
                                           maximum=1.0, exclusive_maximum=True, step=0.05)
    beta1: float = option(0.9, label="Adam β1", help="AdamW first-moment decay", minimum=0.0, maximum=1.0,
                          exclusive_maximum=True)
    beta2: float = option(0.95, label="Adam β2", help="AdamW second-moment decay", minimum=0.0, maximum=1.0,
                          exclusive_maximum=True)
    grad_clip: float = option(1.0, label="Gradient clipping (0 = off)", help="clip the global gradient norm",
                              minimum=0.0)
    eval_interval: int = option(100, label="Evaluate every (steps)", help="validation loss, sample and "
                                "checkpoint every N steps", minimum=1)
    eval_batches: int = option(20, label="Eval batches", help="validation batches per in-training evaluation "
                               "(an estimate; the end of a run scores the whole split; 0 = whole split)", minimum=0)
    log_interval: int = option(10, label="Log every (steps)", help="a train row every N steps", minimum=1)
    log_seconds: float = option(5.0, label="Log every (seconds)", help="also a train row at least this often, so a "
                                "slow machine still draws points", minimum=0, exclusive_minimum=True)
    head_scores: bool = option(True, label="Head scores at each evaluation",
                               help="score every head (previous-token, induction, ...) and the in-context learning "
                                    "score on a fixed probe at each evaluation (Train tab, Inspect tab)")
    sample_prompt: str = option("The", label="Sample prompt", help="text continued at each evaluation")
    sample_tokens: int = option(64, label="Sample tokens", help="tokens sampled at each evaluation (0 = none)",
                                minimum=0)
    sample_temperature: float = option(0.8, label="Sample temperature", help="temperature of those samples",
                                       minimum=0.0)
    seed: int = option(1337, label="Seed", help="initialisation, batches and samples", minimum=0,
                       maximum=2**63 - 1)
    device: str = option("auto", label="Device", help="auto picks cuda, then mps, then cpu; or cpu, cuda, "
                         "cuda:N, mps")
    precision: str = option("auto", label="Precision", help="auto decides for the machine (bf16 only where it "
                            "is fast there)", choices=PRECISIONS)
    compile: bool = option(False, label="torch.compile", help="compile the model (GPU; slower on CPU here)")
    snapshots: int = option(4, label="Snapshots kept (Inspect tab)", help="checkpoints spread across training",
                            minimum=0)
    save_dtype: str = option("float32", label="Saved weights dtype", help="dtype of the .safetensors weights",
                             choices=SAVE_DTYPES)
    wandb: str = option("off", label="W&B mode", help="mirror metrics to Weights & Biases", choices=WANDB_MODES,
                        noun="wandb mode")
    wandb_project: str = option("gpt-playground", label="W&B project", help="W&B project name")
    vocab: str = option("full", label="Vocabulary (compact: only the data's tokens)",
                        help="full GPT-2 vocabulary, or only the tokens that occur in the data", choices=VOCABS)
    vocab_limit: int | None = option(None, label="Compact vocabulary: most frequent tokens (0 = all)",
                                     help="with vocab compact: keep only the N most frequent training tokens "
                                          "(plus the 256 single bytes) and spell rarer ones with them",
                                     minimum=1, optional=True)
    optimizer: str = option("adamw", label="Optimizer (muon: Muon for block matrices)",
                            help="AdamW for everything, or Muon for the blocks' matrices and AdamW for the rest",
                            choices=OPTIMIZERS)
    muon_learning_rate: float = option(0.02, label="Muon learning rate", help="peak learning rate of Muon",
                                       minimum=0, exclusive_minimum=True)
    muon_orthogonaliser: str = option("newton-schulz", label="Muon orthogonalisation",
                                      help="how Muon orthogonalises its update: Keller Jordan's quintic Newton-Schulz "
                                      "(5 steps, one polynomial), or Polar Express (Amsel et al. 2025: 5 steps, a "
                                      "polynomial per step, closer to orthogonal)", choices=MUON_ORTHOGONALISERS)
    muon_normalise: bool = option(False, label="NorMuon: even out each neuron's Muon step",
                                  help="divide each neuron's orthogonalised update by its running RMS, then restore "
                                  "the update's norm (NorMuon, Li et al. 2025)")
    muon_cautious_weight_decay: bool = option(False, label="Cautious weight decay (Muon)",
                                              help="Muon decays a weight only where its update points the same "
                                              "way (Chen et al. 2025)")
    schedule: str = option("cosine", label="LR schedule", help="after warmup: cosine decay to min LR, or wsd "
                           "(warmup-stable-decay: the peak until the cooldown, then linear to min LR)",
                           choices=SCHEDULES)
    cooldown_fraction: float = option(0.3, label="Cooldown share (wsd)", help="share of the run the wsd "
                                      "schedule spends decaying", minimum=0.0, maximum=1.0, step=0.05)
    context_warmup_fraction: float = option(0.0, label="Short windows first (share of the run, 0 = off)",
                                            help="a sequence-length schedule: for this share of the run train on "
                                            "windows of a quarter of the context, then half, then the full "
                                            "context, with the same tokens per step (more, shorter windows "
                                            "early; the context length must divide by 4)", minimum=0.0,
                                            maximum=1.0, exclusive_maximum=True, step=0.05)
    ema_decay: float = option(0.0, label="Weight averaging (EMA decay, 0 = off)", help="evaluate, sample and "
                              "save an exponential moving average of the weights, updated every step with "
                              "this decay (0.99: about the last 100 steps)", minimum=0.0, maximum=1.0,
                              exclusive_maximum=True, step=0.001)
    ema_power: float = option(0.0, label="Weight averaging that follows the run (power EMA exponent, 0 = off)",
                              help="evaluate, sample and save a power-function average of the weights: step t "
                              "weighs t^exponent, so it spans the same share of the run on a fast or a slow "
                              "machine (its mean lies 1/(exponent + 2) of the run back from the end: 1, a third; "
                              "3, a fifth)", minimum=0.0, step=0.5, ui_maximum=10.0)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.device:
            raise UserInputError("device must be auto, cpu, cuda, cuda:N or mps", field="device")
        if all(getattr(self, name) is None for name in STOP_FIELDS):
            raise UserInputError("say when to stop: set max_steps, max_minutes or epochs", field="max_steps")
        if self.vocab_limit is not None and self.vocab != "compact":
            raise UserInputError(f"vocab_limit ({self.vocab_limit}) cuts a compact vocabulary: set vocab to "
                                 "compact, or leave vocab_limit unset", field="vocab_limit")
        defaults = {f.name: f.default for f in fields(self)}
        changed = [name for name in MUON_VARIANT_FIELDS if getattr(self, name) != defaults[name]]
        if changed and self.optimizer != "muon":
            raise UserInputError(f"{changed[0]} changes Muon, which this run does not use (optimizer "
                                 f"{self.optimizer}): set optimizer to muon, or leave {changed[0]} as it is",
                                 field=changed[0])
        if self.ema_decay > 0 and self.ema_power > 0:
            raise UserInputError(f"choose one weight average: ema_decay ({self.ema_decay:g}) or ema_power "
                                 f"({self.ema_power:g}); set the other to 0", field="ema_power")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return from_dict(cls, data, "training")

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> TrainConfig:
        """The preset's recipe with `overrides`; a stop condition or weight average given replaces the preset's."""
        return cls.from_dict(_with_overrides(get_preset(name).train, overrides))


@dataclass(frozen=True)
class Preset:
    """A named starting point: the model shape and the training recipe that go with it."""

    name: str
    description: str
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "tiny",
        "the quickest try: 4 layers x 128 wide, compact vocabulary (about 1.8 M parameters on Tiny Shakespeare), "
        "~0.05 s per step on 2 CPU cores",
        model={"context_length": 128, "n_layer": 4, "n_head": 4, "n_embd": 128},
        train={"batch_size": 16, "learning_rate": 2e-3, "warmup_steps": 50, "max_steps": 1000, "eval_interval": 100,
               "vocab": "compact"},
    ),
    Preset(
        # 5 minutes on 2 CPU cores (bench/speedrun_cpu.py; each choice measured in the README's lever tables,
        # chosen on the development slice): compact vocabulary, Muon for the block matrices, QK-norm, cosine
        # schedule over the wall clock, and the weights averaged for evaluation and saving by the power rule
        # (exponent 3), whose horizon is a share of the run, so a slower CPU's fewer steps average alike; and
        # dropout 0.1 after the embeddings and residual branches only where the CPU is fast enough to pass over
        # the data more than 5 times in the 5 minutes (timed when training starts).
        "quick-cpu",
        "the 5-minute CPU recipe: 4 layers x 192 wide, compact vocabulary (about 4.1 M parameters on Tiny "
        "Shakespeare), Muon, QK-norm, weight averaging, dropout on a fast CPU, 5 minutes; ~0.1-0.4 s per step on "
        "2 CPU cores",
        model={"context_length": 128, "n_layer": 4, "n_head": 4, "n_embd": 192, "qk_norm": True, "dropout": 0.1,
               "attention_dropout": False},
        train={"batch_size": 8, "learning_rate": 5e-3, "warmup_steps": 20, "max_minutes": 5.0, "eval_interval": 100,
               "eval_batches": 8, "snapshots": 4, "vocab": "compact", "optimizer": "muon",
               "muon_learning_rate": 0.02, "ema_power": 3.0, "dropout_from_epochs": 5.0},
    ),
    Preset(
        "seed",
        "the project's reference shape: 6 layers x 384 wide, 8 heads, context 256, full GPT-2 vocabulary "
        "(30 M parameters); ~2-3 s per step on 2 CPU cores, for a GPU",
        model={"context_length": 256, "n_layer": 6, "n_head": 8, "n_embd": 384},
        train={"batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 100, "max_steps": 2000,
               "eval_interval": 200},
    ),
    Preset(
        "gpt2",
        "GPT-2 small: 12 layers x 768 wide, context 1024, full vocabulary (124 M parameters); for a GPU "
        "(minutes per step on 2 CPU cores)",
        model={"context_length": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768},
        train={"batch_size": 8, "grad_accum_steps": 8, "learning_rate": 6e-4, "warmup_steps": 700,
               "max_steps": 5000, "eval_interval": 250},
    ),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserInputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}", field="preset")
    return PRESETS[name]


def default_preset(device_type: str) -> str:
    """The preset the app offers first: the 5-minute CPU recipe on a CPU, `seed` on an accelerator."""
    return "quick-cpu" if device_type == "cpu" else "seed"


def _with_overrides(base: dict, overrides: dict) -> dict:
    """`base` updated by `overrides` (None values are "not given"); any stop condition given replaces the
    base's stop conditions, so `--max-steps 10` on a 5-minute preset trains 10 steps, and likewise any weight
    average given replaces the base's (`--ema-decay 0.99` on a preset with `ema_power`)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    merged = dict(base)
    for group in FIELD_GROUPS:
        if any(key in given for key in group):
            for key in group:
                merged.pop(key, None)
    return {**merged, **given}


def resolve_preset(name: str, model_overrides: dict | None = None,
                   train_overrides: dict | None = None) -> tuple[GPTConfig, TrainConfig]:
    """The complete model and training configs of a preset with the given fields changed."""
    preset = get_preset(name)
    model = GPTConfig.from_dict({**preset.model, **{k: v for k, v in (model_overrides or {}).items()
                                                    if v is not None}})
    return model, TrainConfig.from_dict(_with_overrides(preset.train, train_overrides or {}))
