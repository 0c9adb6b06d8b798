"""The CUDA paths: bf16 and fp16 (+ gradient scaler) training, flash attention against the explicit path,
torch.compile against eager, the out-of-memory message, the KV cache on the GPU, DDP with NCCL.

Every test here is marked `cuda` and skipped without a CUDA GPU, so the normal suite collects and skips
them. On a GPU: `python -m pytest -m cuda tests/test_cuda.py` (bench/gpu_check.py runs exactly that).
"""

from __future__ import annotations

import gc
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpt.data import CleanConfig, prepare_dataset
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig, SlidingDecoder
from gpt.tokenizer import gpt2_tokenizer
from gpt.train import TrainConfig, Trainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "assets" / "data" / "tinyshakespeare.txt"
TINY = {"context_length": 64, "n_layer": 2, "n_head": 2, "n_embd": 64}
QUICK = {"batch_size": 8, "eval_interval": 1000, "eval_batches": 1, "log_interval": 1, "sample_tokens": 0,
         "snapshots": 0, "warmup_steps": 2, "learning_rate": 1e-2, "device": "cuda"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20,000 characters of the bundled corpus, prepared without the mojibake repair (conftest's
    fixture repairs it with ftfy, which the device image lacks; the corpus is plain ASCII)."""
    source = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    source.write_text(CORPUS.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_dataset([source], out, clean_config=CleanConfig(fix_unicode=False))
    return out


@pytest.fixture(autouse=True)
def empty_card():
    """Each test starts and ends with the caching allocator emptied (the OOM test fills the card)."""
    yield
    gc.collect()
    torch.cuda.empty_cache()


def train(data_dir: Path, run_dir: Path, steps: int, **overrides: object) -> tuple[Trainer, list[dict]]:
    """A tiny model trained `steps` steps on the GPU; the trainer and its metrics rows."""
    rows: list[dict] = []
    config = TrainConfig(**{**QUICK, "max_steps": steps, **overrides})
    trainer = Trainer(GPTConfig(**TINY), config, data_dir, run_dir, on_row=rows.append)
    assert trainer.run() == "finished", rows[-1]
    return trainer, rows


def train_losses(rows: list[dict]) -> list[float]:
    return [row["train_loss"] for row in rows if row["kind"] == "train"]


def perturbed(model: GPT, seed: int = 0) -> GPT:
    """Weights far from the initialisation (norm gains and biases too), so attention is not uniform."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).to(parameter.device))
    return model.eval()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


# -- mixed precision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_steps_lower_the_loss(data_dir: Path, tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    trainer, rows = train(data_dir, tmp_path / "run", steps=30, precision=precision)
    losses = train_losses(rows)
    assert len(losses) == 30 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # from ~ln(50257) = 10.8 towards unigram entropy
    assert trainer.precision == precision
    assert trainer.model.token_embedding.weight.dtype == torch.float32  # fp32 master weights under autocast
    assert trainer.model.token_embedding.weight.is_cuda
    assert trainer.scaler.is_enabled() == (precision == "fp16")  # fp16 needs the scaler; bf16 has fp32's range
    if precision == "fp16":
        assert trainer.scaler.get_scale() > 1.0  # a disabled scaler reports 1.0


# -- attention ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_flash_attention_equals_the_explicit_path(position: str) -> None:
    """Only the flash kernel allowed (an error if it cannot run) against softmax(QK^T/sqrt(d))V written out."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("flash attention here is run in bf16")
    config = GPTConfig(vocab_size=512, context_length=128, n_layer=2, n_head=4, n_embd=128, position=position)
    torch.manual_seed(0)
    model = perturbed(GPT(config).cuda())
    idx = torch.randint(0, config.vocab_size, (2, config.context_length), device="cuda")
    with torch.no_grad():
        reference, _ = model.forward_with_attention(idx)  # fp32, explicit
        model.to(torch.bfloat16)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fast, _ = model(idx)
        explicit, attentions = model.forward_with_attention(idx)
    assert fast.dtype == torch.bfloat16
    # bf16 rounding of weights and activations alone gives ~1% here; a wrong mask or scale gives ~100%
    assert relative_error(fast, explicit) < 3e-2
    assert relative_error(fast, reference) < 3e-2
    assert relative_error(explicit, reference) < 3e-2
    assert len(attentions) == config.n_layer and attentions[0].shape == (2, 4, 128, 128)


# -- torch.compile --------------------------------------------------------------------------------------
def test_compile_equals_eager(data_dir: Path, tmp_path: Path) -> None:
    """The compiled model computes the same function, and the trainer with compile on trains the same steps."""
    torch.manual_seed(0)
    model = perturbed(GPT(GPTConfig(vocab_size=512, **TINY)).cuda()).train()
    compiled = torch.compile(model)
    idx = torch.randint(0, 512, (4, TINY["context_length"]), device="cuda")
    targets = torch.randint(0, 512, (4, TINY["context_length"]), device="cuda")
    eager_logits, eager_loss = model(idx, targets)
    eager_loss.backward()
    eager_grad = model.token_embedding.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    compiled_logits, compiled_loss = compiled(idx, targets)
    compiled_loss.backward()
    assert relative_error(compiled_logits, eager_logits) < 1e-4
    assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-5)
    assert relative_error(model.token_embedding.weight.grad, eager_grad) < 1e-4

    _, eager_rows = train(data_dir, tmp_path / "eager", steps=5, precision="fp32")
    _, compiled_rows = train(data_dir, tmp_path / "compiled", steps=5, precision="fp32", compile=True)
    assert train_losses(compiled_rows) == pytest.approx(train_losses(eager_rows), rel=1e-3)


# -- out of memory -------------------------------------------------------------------------------------
def test_out_of_memory_is_a_clear_error(tmp_path: Path) -> None:
    """A real OOM: one micro-batch whose fp32 logits alone are 1.5x the card's memory."""
    context, vocab = 1024, 50257
    card = torch.cuda.get_device_properties(0).total_memory
    windows = math.ceil(1.5 * card / (context * vocab * 4))
    text = CORPUS.read_text(encoding="utf-8")
    repeats = math.ceil(1.2 * windows * context / (0.9 * len(gpt2_tokenizer().encode(text))))  # 90% is train
    source = tmp_path / "corpus.txt"
    source.write_text(text * repeats, encoding="utf-8")
    data = tmp_path / "data"
    prepare_dataset([source], data, clean_config=CleanConfig(fix_unicode=False))  # no ftfy on the device
    rows: list[dict] = []
    config = TrainConfig(**{**QUICK, "max_steps": 1, "batch_size": windows, "precision": "fp32"})
    trainer = Trainer(GPTConfig(context_length=context, n_layer=1, n_head=2, n_embd=32), config, data,
                      tmp_path / "run", on_row=rows.append)
    with pytest.raises(UserInputError, match="out of GPU memory") as caught:
        trainer.run()
    message = str(caught.value)
    assert str(windows) in message and "--batch-size" in message
    assert rows[-1]["kind"] == "status" and rows[-1]["status"] == "failed" and rows[-1]["message"] == message
    del trainer, caught


# -- generation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)])
def test_kv_cache_on_gpu_equals_the_full_forward(dtype: torch.dtype, tolerance: float) -> None:
    torch.manual_seed(0)
    model = perturbed(GPT(GPTConfig(vocab_size=512, **TINY)).cuda()).to(dtype)
    sequence = torch.randint(0, 512, (2, 48), device="cuda")

    def full(length: int) -> torch.Tensor:
        with torch.inference_mode():
            return model(sequence[:, :length])[0][:, -1]

    cache = model.new_cache(batch_size=2)
    assert cache.keys.is_cuda and cache.keys.dtype == dtype
    logits = model.forward_cached(sequence[:, :16], cache)  # prefill
    assert relative_error(logits, full(16)) < tolerance
    logits = model.forward_cached(sequence[:, 16:24], cache)  # a chunk after cached positions (offset mask)
    assert relative_error(logits, full(24)) < tolerance
    for t in range(24, 48):  # one token at a time
        logits = model.forward_cached(sequence[:, t : t + 1], cache)
        assert relative_error(logits, full(t + 1)) < tolerance, t

    decoder = SlidingDecoder(model, batch_size=2)  # past the context: crop and re-prefill
    long = torch.randint(0, 512, (2, 100), device="cuda")
    logits = decoder.prefill(long[:, :10])
    for t in range(10, 100):
        logits = decoder.step(long[:, t])
    with torch.inference_mode():
        expected = model(decoder.window)[0][:, -1]
    assert relative_error(logits, expected) < tolerance


# -- several GPUs ---------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_with_nccl_on_two_gpus_matches_one_process(data_dir: Path, tmp_path: Path) -> None:
    """torchrun with 2 NCCL processes against 1 process on the same global batch (4 x 2 micro-batches)."""
    from gpt.run import read_metrics

    common = ["train", "--data", str(data_dir), "--device", "cuda", "--precision", "fp32", "--n-layer", "1",
              "--n-head", "2", "--n-embd", "16", "--context-length", "32", "--batch-size", "4",
              "--grad-accum-steps", "2", "--max-steps", "6", "--eval-interval", "6", "--eval-batches", "2",
              "--log-interval", "1", "--sample-tokens", "4", "--learning-rate", "0.003", "--warmup-steps", "2",
              "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt"]
    run_to_end([*torchrun, *common, "--out", str(tmp_path / "ddp")])
    run_to_end([sys.executable, "-m", "gpt", *common, "--out", str(tmp_path / "single")])

    def losses(run: str) -> dict[int, float]:
        return {row["step"]: row["train_loss"] for row in read_metrics(tmp_path / run, kind="train")}

    ddp, single = losses("ddp"), losses("single")
    assert sorted(ddp) == sorted(single) == list(range(1, 7))
    assert [ddp[step] for step in ddp] == pytest.approx([single[step] for step in ddp], rel=1e-3)
    assert ddp[6] < ddp[1]


def run_to_end(command: list[str], timeout: float = 180) -> None:
    """Run a command in its own process group; on a timeout kill the whole group and show its output."""
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(command)}\n{out[-3000:]}")
    assert process.returncode == 0, out[-3000:]
