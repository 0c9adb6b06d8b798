"""Hugging Face GPT-2 interoperability: export our model to a `GPT2LMHeadModel` folder and import one.

An exported folder holds `config.json` + `model.safetensors` (what `GPT2LMHeadModel.from_pretrained`
reads), `generation_config.json`, and the GPT-2 tokenizer files (`vocab.json`, `merges.txt`), so
`AutoTokenizer.from_pretrained` works on it too. No `transformers` import is needed for either direction.

Only models with GPT-2's architecture can be exported: learned positions, LayerNorm, biases on, and a
gelu (GPT-2's tanh form) or relu MLP, tied or untied LM head (`tie_word_embeddings`); anything else (rope,
swiglu, relu2, rmsnorm, bias off, QK-norm, logit soft-cap, value embeddings, x0 shortcuts) is refused with
the reason. (Zero-initialised projections are only a starting point: such models export.) Weight names map
one to one; HF's `Conv1D` stores (in, out) matrices, ours (out, in), so the 2-D block weights are transposed.

Vocabulary: HF GPT-2 models take GPT-2 token ids. A run with a compact vocabulary is exported by putting
each row of its embedding at its GPT-2 id in a full 50257-row matrix. Rows of GPT-2 tokens the run never
had are zero (a documented choice: their logit is exactly 0 whatever the input), and
`generation_config.json` lists them as `suppress_tokens`, so HF `generate` never produces them; raw HF
logits for those ids stay 0 and should be ignored. Importing such a folder gives a full-vocabulary model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gpt.errors import UserInputError
from gpt.model import GPT, NORM_EPS, GPTConfig
from gpt.tokenizer import ASSETS_DIR, GPT2_EOT_ID, GPT2_VOCAB_SIZE, Tokenizer

WEIGHTS_FILE = "model.safetensors"
# Our activation name -> HF `activation_function`; both tanh-GELU spellings are accepted on import.
_HF_ACTIVATION = {"gelu": "gelu_new", "relu": "relu"}
_FROM_HF_ACTIVATION = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
# HF buffers (causal masks) found in some GPT-2 checkpoints; they carry no weights.
_HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _check_exportable(config: GPTConfig) -> None:
    problems = []
    if config.position != "learned":
        problems.append(f"position '{config.position}' (GPT-2 uses 'learned')")
    if config.norm != "layernorm":
        problems.append(f"norm '{config.norm}' (GPT-2 uses 'layernorm')")
    if config.activation not in _HF_ACTIVATION:
        problems.append(f"activation '{config.activation}' (GPT-2 uses 'gelu'; 'relu' also exports)")
    if not config.bias:
        problems.append("bias off (GPT-2 has biases)")
    if config.qk_norm:
        problems.append("QK-norm (GPT-2 has no query/key normalisation)")
    if config.logit_softcap is not None:
        problems.append(f"logit soft-cap {config.logit_softcap:g} (GPT-2's logits are not capped)")
    if config.value_embeddings:
        problems.append("value embeddings (GPT-2 has one token table)")
    if config.x0_shortcuts:
        problems.append("x0 shortcuts (GPT-2 blocks read the residual stream only)")
    if problems:
        raise UserInputError(
            "cannot export to Hugging Face GPT-2: this model uses " + "; ".join(problems)
            + ". Only models with GPT-2's architecture can be loaded by GPT2LMHeadModel."
        )


def _layer_names(layer: int) -> list[tuple[str, str, bool]]:
    """(our name, HF name without the 'transformer.' prefix, transpose?) for one block."""
    ours, hf = f"blocks.{layer}", f"h.{layer}"
    return [
        (f"{ours}.norm1.weight", f"{hf}.ln_1.weight", False),
        (f"{ours}.norm1.bias", f"{hf}.ln_1.bias", False),
        (f"{ours}.attn.qkv.weight", f"{hf}.attn.c_attn.weight", True),
        (f"{ours}.attn.qkv.bias", f"{hf}.attn.c_attn.bias", False),
        (f"{ours}.attn.proj.weight", f"{hf}.attn.c_proj.weight", True),
        (f"{ours}.attn.proj.bias", f"{hf}.attn.c_proj.bias", False),
        (f"{ours}.norm2.weight", f"{hf}.ln_2.weight", False),
        (f"{ours}.norm2.bias", f"{hf}.ln_2.bias", False),
        (f"{ours}.ffn.fc.weight", f"{hf}.mlp.c_fc.weight", True),
        (f"{ours}.ffn.fc.bias", f"{hf}.mlp.c_fc.bias", False),
        (f"{ours}.ffn.proj.weight", f"{hf}.mlp.c_proj.weight", True),
        (f"{ours}.ffn.proj.bias", f"{hf}.mlp.c_proj.bias", False),
    ]


def _name_map(n_layer: int) -> list[tuple[str, str, bool]]:
    names = [("position_embedding.weight", "wpe.weight", False)]
    for layer in range(n_layer):
        names += _layer_names(layer)
    return names + [("final_norm.weight", "ln_f.weight", False), ("final_norm.bias", "ln_f.bias", False)]


def export_hf(model: GPT, out_dir: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder; returns the folder.

    With `tokenizer` (the run's), rows are placed at their GPT-2 ids in a 50257-row vocabulary (see the
    module docstring for compact vocabularies). Without it, model ids are written as they are (any
    vocabulary size; HF then sees the same ids)."""
    config = model.config
    _check_exportable(config)
    state = {name: tensor.detach().cpu().float() for name, tensor in model.state_dict().items()}
    embedding = state["token_embedding.weight"]  # (V, C)
    absent: list[int] = []
    vocab_size, eot_id = config.vocab_size, GPT2_EOT_ID if config.vocab_size > GPT2_EOT_ID else None
    if tokenizer is not None:
        if tokenizer.vocab_size > config.vocab_size:
            raise UserInputError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
            )
        gpt2_ids = torch.tensor(tokenizer.to_gpt2(range(tokenizer.vocab_size)))
        def to_full(rows: torch.Tensor) -> torch.Tensor:
            full = torch.zeros(GPT2_VOCAB_SIZE, config.n_embd)
            full[gpt2_ids] = rows[: tokenizer.vocab_size]
            return full

        present = torch.zeros(GPT2_VOCAB_SIZE, dtype=torch.bool)
        present[gpt2_ids] = True
        absent = (~present).nonzero().flatten().tolist()
        embedding, vocab_size, eot_id = to_full(embedding), GPT2_VOCAB_SIZE, GPT2_EOT_ID
        if not config.tie_embeddings:
            state["lm_head.weight"] = to_full(state["lm_head.weight"])

    tensors = {"transformer.wte.weight": embedding.contiguous()}
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = state["lm_head.weight"].contiguous()
    for ours, hf, transpose in _name_map(config.n_layer):
        tensor = state[ours]
        tensors[f"transformer.{hf}"] = (tensor.t() if transpose else tensor).contiguous()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.ffn_hidden_size,
        "activation_function": _HF_ACTIVATION[config.activation],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout if config.attention_dropout else 0.0,
        "layer_norm_epsilon": NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": "float32",
    }
    generation_config = {"bos_token_id": eot_id, "eos_token_id": eot_id}
    if absent:
        generation_config["suppress_tokens"] = absent
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    if vocab_size == GPT2_VOCAB_SIZE:
        shutil.copyfile(ASSETS_DIR / "encoder.json", out / "vocab.json")
        shutil.copyfile(ASSETS_DIR / "vocab.bpe", out / "merges.txt")
    return out


def _read_hf_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UserInputError(f"{hf_dir} has no config.json; give the folder of a Hugging Face GPT-2 model")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} is not valid JSON: {error}") from None
    if data.get("model_type") != "gpt2":
        raise UserInputError(
            f"{path} describes a {data.get('model_type')!r} model; only GPT-2 ('gpt2') models can be imported"
        )
    return data


def config_from_hf(data: dict) -> GPTConfig:
    """Our `GPTConfig` for a Hugging Face GPT-2 config.json dict (unsupported variants refused)."""
    activation = data.get("activation_function", "gelu_new")
    if activation not in _FROM_HF_ACTIVATION:
        raise UserInputError(
            f"activation_function {activation!r} is not supported; supported: {', '.join(_FROM_HF_ACTIVATION)}"
        )
    unsupported = {
        "scale_attn_weights": (True, data.get("scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": (False, data.get("scale_attn_by_inverse_layer_idx", False)),
        "add_cross_attention": (False, data.get("add_cross_attention", False)),
    }
    for name, (needed, value) in unsupported.items():
        if value != needed:
            raise UserInputError(f"this GPT-2 variant sets {name}={value}; only {name}={needed} is supported")
    eps = data.get("layer_norm_epsilon", NORM_EPS)
    if abs(eps - NORM_EPS) > 1e-12:
        raise UserInputError(f"layer_norm_epsilon {eps} is not supported; only GPT-2's {NORM_EPS}")
    n_embd = data.get("n_embd", 768)
    n_inner = data.get("n_inner")
    dropout = float(data.get("resid_pdrop", 0.0))
    return GPTConfig(
        vocab_size=data.get("vocab_size", GPT2_VOCAB_SIZE),
        context_length=data.get("n_positions", 1024),
        n_layer=data.get("n_layer", 12),
        n_head=data.get("n_head", 12),
        n_embd=n_embd,
        ffn_hidden=None if n_inner in (None, 4 * n_embd) else n_inner,
        dropout=dropout,
        attention_dropout=dropout == 0 or float(data.get("attn_pdrop", dropout)) > 0,
        bias=True,
        activation=_FROM_HF_ACTIVATION[activation],
        position="learned",
        norm="layernorm",
        tie_embeddings=bool(data.get("tie_word_embeddings", True)),
    )


def import_hf(hf_dir: str | Path) -> GPT:
    """Load a Hugging Face GPT-2 folder (config.json + model.safetensors) as our `GPT` (eval mode).

    The model uses GPT-2 token ids: pair it with `gpt2_tokenizer()`."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise UserInputError(f"{hf_dir} is not a folder; give the folder of a Hugging Face GPT-2 model")
    config = config_from_hf(_read_hf_config(hf_dir))
    weights = hf_dir / WEIGHTS_FILE
    if not weights.is_file():
        found = ", ".join(sorted(p.name for p in hf_dir.iterdir())) or "nothing"
        raise UserInputError(
            f"{hf_dir} has no {WEIGHTS_FILE} (found: {found}); only single-file safetensors weights are "
            "loaded (pickled .bin files are never opened for safety)"
        )
    with safe_open(str(weights), framework="pt") as handle:
        hf_state = {
            name.removeprefix("transformer."): handle.get_tensor(name)
            for name in handle.keys()
            if not name.endswith(_HF_BUFFER_SUFFIXES)
        }
    state = {"token_embedding.weight": hf_state.pop("wte.weight", None)}
    for ours, hf, transpose in _name_map(config.n_layer):
        tensor = hf_state.pop(hf, None)
        state[ours] = tensor.t() if (transpose and tensor is not None) else tensor
    missing = sorted(name for name, tensor in state.items() if tensor is None)
    if missing:
        raise UserInputError(f"{weights} lacks weights for: {', '.join(missing[:8])}")
    lm_head = hf_state.pop("lm_head.weight", None)
    if config.tie_embeddings:
        if lm_head is not None and not torch.equal(lm_head, state["token_embedding.weight"]):
            raise UserInputError(f"{weights} has an LM head that differs from the token embedding although "
                                 "its config.json says tie_word_embeddings (the default)")
        lm_head = state["token_embedding.weight"]
    elif lm_head is None:
        raise UserInputError(f"{weights} lacks lm_head.weight, which its config.json (tie_word_embeddings: "
                             "false) needs")
    if hf_state:
        raise UserInputError(f"{weights} has weights this GPT-2 model does not use: {', '.join(sorted(hf_state)[:8])}")
    model = GPT(config)
    state["lm_head.weight"] = lm_head
    try:
        model.load_state_dict({name: tensor.float() for name, tensor in state.items()}, strict=True)
    except RuntimeError as error:
        raise UserInputError(f"{weights} does not match its config.json: {error}") from None
    return model.eval()
