"""How fast `prepare` turns text into token files: MB/s per stage on the bundled corpus.

    python -m bench.prepare_speed [--repeat 3] [--copies 1] [--threads N]

Stages: loading (read + decode), cleaning (default CleanConfig), tokenizing (`tokenize_documents`, which cuts
long documents at safe points and encodes them on tiktoken's threads), and the whole `prepare_dataset`
(which also splits, measures the 8-gram overlap and writes the files). For the ratio, the same run times
tiktoken's own `encode_ordinary_batch` on the same pieces, and plain `encode_ordinary` on the whole text
(one thread). Each figure is the best of --repeat runs; MB = 10**6 bytes of UTF-8 text.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tiktoken

from gpt.data import CleanConfig, chunk_text, clean_documents, load_documents, prepare_dataset, tokenize_documents
from gpt.tokenizer import default_num_threads, gpt2_encoding

CORPUS = Path(__file__).resolve().parent.parent / "assets" / "data" / "tinyshakespeare.txt"


def best_time(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1, help="tile the corpus this many times (more work per run)")
    parser.add_argument("--threads", type=int, default=None, help="tokenizer threads (default: all cores)")
    args = parser.parse_args()
    threads = args.threads or default_num_threads()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n\n".join([CORPUS.read_text(encoding="utf-8")] * args.copies), encoding="utf-8")
        megabytes = corpus.stat().st_size / 1e6
        text = load_documents([corpus]).documents[0]
        pieces = chunk_text(text)
        encoding = gpt2_encoding()
        config = CleanConfig()

        results = {
            "load": best_time(lambda: load_documents([corpus]), args.repeat),
            "clean (defaults)": best_time(lambda: clean_documents([text], config, count_tokens=False), args.repeat),
            "tokenize (ours)": best_time(lambda: tokenize_documents([text], num_threads=threads), args.repeat),
            "tiktoken encode_ordinary_batch": best_time(
                lambda: encoding.encode_ordinary_batch(pieces, num_threads=threads), args.repeat),
            "tiktoken encode_ordinary (1 thread)": best_time(lambda: encoding.encode_ordinary(text), args.repeat),
        }
        out = Path(tmp) / "out"
        results["prepare_dataset (all stages)"] = best_time(
            lambda: prepare_dataset([corpus], out, clean_config=config, overwrite=True, num_threads=threads),
            args.repeat)

    print(f"corpus: {CORPUS.name} x{args.copies} = {megabytes:.2f} MB, {len(pieces)} pieces for the tokenizer")
    print(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"tokenizer threads {threads}, python {platform.python_version()}, tiktoken {tiktoken.__version__}")
    for stage, seconds in results.items():
        print(f"{stage:38} {seconds * 1000:9.1f} ms {megabytes / seconds:9.1f} MB/s")
    ratio = results["tokenize (ours)"] / results["tiktoken encode_ordinary_batch"]
    print(f"tokenize (ours) takes {ratio:.2f}x the time of tiktoken's encode_ordinary_batch on the same pieces")


if __name__ == "__main__":
    main()
