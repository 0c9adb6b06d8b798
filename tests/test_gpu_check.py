"""bench/gpu_check.py without a GPU: its helpers (shapes, options, MFU, the junit counts, the table) and the
whole check as `--dry-run` on the CPU, so the script is ready whenever a device is lent."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parent.parent
# In requirements.txt but not on the device image (its package list: the device tool's KINDS.md): the check
# must not import them, or its one device call fails.
NOT_ON_THE_DEVICE = {"gradio", "gradio_client", "plotly", "wandb", "datasets", "spaces", "playwright", "clean-text",
                     "ftfy", "emoji"}


def test_shapes_and_options_parse_with_clear_errors() -> None:
    assert gpu_check.parse_shape("32x4") == [(32, 4)]
    assert gpu_check.parse_shape("16x8, 64X1") == [(16, 8), (64, 1)]
    for bad in ("32", "0x4", "ax2", "32x"):
        with pytest.raises(argparse.ArgumentTypeError, match="BATCHxACCUM"):
            gpu_check.parse_shape(bad)
    assert gpu_check.parse_option("precision=fp16") == ("precision", "fp16")
    assert gpu_check.parse_option("grad_clip=0.5") == ("grad_clip", 0.5)
    assert gpu_check.parse_option("compile=true") == ("compile", True)
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        gpu_check.parse_option("precision")


def test_mfu_and_matmul_flops() -> None:
    assert gpu_check.matmul_flops(8192) == 2 * 8192**3
    # gpt2 at 500k tokens/s: 6 N + 12 L C T FLOPs per token over the 989 TFLOP/s spec
    flops_per_token = 6 * 124_000_000 + 12 * 12 * 768 * 1024
    assert gpu_check.mfu(500_000, flops_per_token, 989e12) == pytest.approx(500_000 * flops_per_token / 989e12)
    assert gpu_check.mfu(None, flops_per_token, 989e12) is None
    assert gpu_check.mfu(500_000, flops_per_token, None) is None


def test_first_difference() -> None:
    assert gpu_check.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert gpu_check.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert gpu_check.first_difference([1, 2], [1, 2, 3]) == 2


def test_junit_counts(tmp_path: Path) -> None:
    xml = tmp_path / "report.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" '
        'skipped="2" tests="6"><testcase classname="tests.test_cuda" name="test_a"/>'
        '<testcase classname="tests.test_cuda" name="test_b"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c"><error message="setup"/></testcase>'
        '</testsuite></testsuites>')
    counts = gpu_check.parse_junit(xml)
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped", "total")} == {
        "passed": 2, "failed": 1, "errors": 1, "skipped": 2, "total": 6}
    assert counts["failed_tests"] == ["tests.test_cuda::test_b", "tests.test_cuda::test_c"]


def test_cpu_timer_measures_the_work_inside() -> None:
    with gpu_check.device_timer(torch.device("cpu")) as timing:
        time.sleep(0.05)
    assert 0.05 <= timing.seconds < 1.0


def test_table_of_a_gpu_run() -> None:
    """The table the device run prints, from results shaped like a real one."""
    results = {
        "meta": {"dry_run": False, "device_name": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0",
                 "cpu_capability": "AVX512"},
        "total_seconds": 301.0,
        "tests": {"passed": 8, "failed": 1, "errors": 0, "skipped": 1, "total": 10, "seconds": 41.0,
                  "failed_tests": ["tests.test_cuda::test_compile_equals_eager"]},
        "matmul": {"size": 8192, "dtype": "bfloat16", "repeats": 10, "timer": "CUDA events", "tflops": 780.0},
        "training": [
            {"preset": "gpt2", "parameters": 124_439_808, "context_length": 1024, "precision": "bf16",
             "batch_size": 32, "grad_accum_steps": 4, "compile": True, "sdpa": "flash", "step_seconds": 0.25,
             "tokens_per_second": 524_288.0, "tflops": 449.0, "mfu_spec": 0.454, "mfu_measured": 0.5756,
             "peak_memory_bytes": 30 * 2**30, "trainer_tokens_per_second": 520_000.0, "train_loss": 7.5},
            {"preset": "seed", "batch_size": 512, "grad_accum_steps": 1, "compile": True, "sdpa": "flash",
             "error": "UserInputError: out of GPU memory at batch_size 512"},
        ],
        "generation": [
            {"preset": "gpt2", "parameters": 124_439_808, "dtype": "float32", "new_tokens": 200,
             "tokens_per_second": 250.0, "hf_tokens_per_second": 125.0, "ratio": 2.0, "first_difference": None,
             "peak_memory_bytes": 2**30},
            {"preset": "seed", "dtype": "float32", "new_tokens": 200, "not_run": "time limit (340 s > 330 s)"},
        ],
    }
    table = gpu_check.format_table(results)
    assert table.startswith("GPU check on NVIDIA H200 (torch 2.11.0+cu130, CUDA 13.0")
    lines = table.splitlines()
    assert lines[2].startswith("| check | configuration | tokens/s | MFU (989 TFLOP/s spec) | MFU (measured peak)")
    assert "| CUDA tests |" in table and "8 passed, 1 failed, 0 errors, 1 skipped (41 s); failed: " \
                                       "tests.test_cuda::test_compile_equals_eager" in table
    assert "| matmul peak | bfloat16 8192^3, CUDA events |" in table and "780.0 TFLOP/s (median of 10)" in table
    gpt2 = next(line for line in lines if line.startswith("| train gpt2 |"))
    assert "124M, ctx 1024, bf16, 32x4, compile True, sdpa flash" in gpt2
    assert "| 524,288 | 45.4% | 57.6% | 30.0 GiB |" in gpt2 and "step 250.0 ms" in gpt2
    seed = next(line for line in lines if line.startswith("| train seed |"))
    assert seed.startswith("| train seed | 512x1, compile True, sdpa flash | n/a |")
    assert "error: UserInputError: out of GPU memory at batch_size 512" in seed
    assert "| 250 (HF 125) |" in table and "2.00x Hugging Face generate; identical ids: yes" in table
    assert next(line for line in lines if line.startswith("| generate seed |")).startswith(
        "| generate seed | float32, greedy, batch 1, 200 tokens |") and "not run: time limit (340 s" in table
    assert lines[-1] == "peak GPU memory of the whole check: 30.0 GiB"
    assert all(line.count("|") == 8 for line in lines if line.startswith("|"))  # 7 columns on every row


def test_without_a_gpu_it_asks_for_the_dry_run(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="no CUDA GPU here"):
        gpu_check.main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--only", "matmul,bogus"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--dry-run", "--steps", "0"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--dry-run", "--train-option", "batch_size=4"])  # shapes have their own flags
    args = gpu_check.parse_args(["--dry-run", "--seed-shape", "4x2,8x1", "--train-option", "precision=fp32"])
    assert args.seed_shape == [(4, 2), (8, 1)] and args.gpt2_shape == [(2, 2)] and args.compile is False
    assert args.train_option == [("precision", "fp32")] and args.only == list(gpu_check.SECTIONS)


@pytest.mark.slow
def test_dry_run_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    """The command the device runs, on the CPU with tiny shapes: every section, the JSON, the table."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out), "--gen-presets", "gpt2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["meta"]["dry_run"] is True and results["meta"]["device_name"].startswith("CPU")

    tests = results["tests"]  # the CUDA tests are collected and all skipped on a CPU
    assert tests["total"] > 0 and tests["skipped"] == tests["total"] and tests["failed"] == tests["errors"] == 0
    assert (out / "pytest_cuda.xml").is_file() and "skipped" in (out / "pytest_cuda.log").read_text()

    assert results["matmul"]["tflops"] > 0
    training = {row["preset"]: row for row in results["training"]}
    assert sorted(training) == ["gpt2", "seed"]
    for row in training.values():
        assert "error" not in row, row
        assert row["tokens_per_second"] > 0 and len(row["burst_seconds"]) == 2
        assert row["tokens_per_step"] == row["batch_size"] * row["grad_accum_steps"] * 32
        assert 0 < row["mfu_spec"] < row["mfu_measured"]  # a CPU is far below 989 TFLOP/s
        assert row["trainer_tokens_per_second"] > 0 and row["train_loss"] > 0
    (generation,) = results["generation"]
    assert generation["tokens_per_second"] > 0 and generation["hf_tokens_per_second"] > 0
    assert generation["first_difference"] is None  # identical weights, greedy: the same ids

    assert not NOT_ON_THE_DEVICE & set(results["meta"]["packages"]), results["meta"]["packages"]
    table = done.stdout[done.stdout.index("DRY RUN"):]
    assert "| train gpt2 |" in table and "| train seed |" in table and "| generate gpt2 |" in table
    assert f"{tests['skipped']} skipped" in table
