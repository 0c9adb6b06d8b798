"""The data pipeline: documents in, token files and batches out, one module per stage.

    files / Hugging Face dataset --load.load_documents() / load_hf_dataset()--> LoadedSource
                                   (one str per document, a preview, the encoding used per file)
      --clean.clean_documents(docs, CleanConfig)--> CleanReport (cleaned documents + before/after statistics)
      --prepare.split_documents(docs, val_fraction)--> train / validation by whole documents (contiguous
                                   blocks when there is a single document), validation from the end
      --tokens.tokenize_documents()--> uint16 GPT-2 ids, <|endoftext|> between documents
      --prepare.prepare_dataset(...)--> out_dir/train.bin, val.bin and meta.json (all of the above)
      --folder.load_split()--> np.memmap --get_batch()--> random (x, y) windows for training
                                         --iter_eval_batches()--> non-overlapping windows covering a split

`from gpt.data import X` works for every public name; each is imported from its stage module on first use
(PEP 562), so the trainer and run loading, which need only `gpt.data.folder`, never import pandas,
clean-text, ftfy, charset-normalizer or `datasets`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load": ("AUTO_ENCODING", "ENCODINGS", "SUPPORTED_SUFFIXES", "LoadedSource", "decode_text", "hub_unreachable",
             "load_documents", "load_hf_dataset"),
    "clean": ("REPLACE_MODES", "CleanConfig", "CleanReport", "clean_documents", "compile_pattern", "text_stats"),
    "prepare": ("MIN_CONTEXT_LENGTH", "NGRAM_N", "PrepareReport", "format_summary", "ngram_overlap",
                "prepare_dataset", "split_documents"),
    "tokens": ("chunk_text", "count_tokens", "tokenize_documents", "write_data_folder"),
    "folder": ("FORMAT_VERSION", "eval_window_count", "get_batch", "iter_eval_batches", "load_split", "read_meta",
               "model_tokens", "spell_ids", "split_token_counts", "token_id_map"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
