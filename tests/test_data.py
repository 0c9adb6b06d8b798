"""The data pipeline: loaders, cleaning, split, overlap, token files, batches, the `prepare` command and
every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gpt.cli import main
from gpt.data import (
    CleanConfig,
    LoadedSource,
    chunk_text,
    clean_documents,
    eval_window_count,
    get_batch,
    iter_eval_batches,
    load_documents,
    load_hf_dataset,
    load_split,
    ngram_overlap,
    prepare_dataset,
    read_meta,
    split_documents,
    token_id_map,
    tokenize_documents,
)
from gpt.errors import UserInputError
from gpt.tokenizer import GPT2_EOT_ID, Tokenizer, gpt2_encoding, gpt2_tokenizer

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO / "assets" / "data" / "tinyshakespeare.txt"
MULTILINGUAL = "안녕하세요, 세계! café naïve Ærø 😀🎉\nsecond line\n\n  indented line"


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _paragraphs(count: int, words: int = 40) -> list[str]:
    return [" ".join(f"word{i}x{j}" for j in range(words)) + "." for i in range(count)]


# -- loading ------------------------------------------------------------------------------------------
def test_text_file_is_one_document_and_blank_lines_split_it(tmp_path):
    path = _write(tmp_path / "a.txt", "First para\nline two\r\n\r\nSecond para\n\n\nThird\n")
    whole = load_documents([path])
    assert whole.documents == ["First para\nline two\n\nSecond para\n\n\nThird"]
    assert whole.source == "a.txt" and whole.columns is None
    assert list(whole.preview.columns) == ["file", "characters", "text"]
    split = load_documents([path], split_on_blank_lines=True)
    assert split.documents == ["First para\nline two", "Second para", "Third"]


def test_several_files_of_different_kinds(tmp_path):
    md = _write(tmp_path / "notes.md", "# Title\n\nSome *markdown*.")
    csv = _write(tmp_path / "rows.csv", "id,text\n1,hello there\n2,general kenobi\n")
    loaded = load_documents([md, csv])
    assert loaded.documents == ["# Title\n\nSome *markdown*.", "hello there", "general kenobi"]
    assert loaded.source == "2 files: notes.md, rows.csv"
    assert loaded.chosen_column == "text"


def test_csv_default_column_has_most_text_and_column_can_be_chosen(tmp_path):
    csv = _write(tmp_path / "t.csv", 'title,body,n\nA,"a long body, with a comma",1\nB,another long body text,2\n')
    loaded = load_documents([csv])
    assert loaded.chosen_column == "body" and loaded.columns == ["title", "body", "n"]
    assert loaded.documents == ["a long body, with a comma", "another long body text"]
    assert isinstance(loaded.preview, pd.DataFrame) and len(loaded.preview) == 2
    assert load_documents([csv], column="title").documents == ["A", "B"]


def test_tsv_jsonl_json_and_parquet(tmp_path):
    tsv = _write(tmp_path / "t.tsv", "label\tsentence\nx\tfirst sentence here\ny\tsecond one\n")
    assert load_documents([tsv]).documents == ["first sentence here", "second one"]
    jsonl = _write(tmp_path / "t.jsonl", '{"text": "doc one 한국어", "n": 1}\n\n{"text": "doc two", "n": 2}\n')
    assert load_documents([jsonl], field="text").documents == ["doc one 한국어", "doc two"]
    assert load_documents([jsonl]).chosen_column == "text"
    js = _write(tmp_path / "t.json", json.dumps([{"content": "alpha beta"}, {"content": "gamma"}]))
    assert load_documents([js], field="content").documents == ["alpha beta", "gamma"]
    nested = _write(tmp_path / "n.jsonl", '{"id": 1, "meta": {"title": "first"}}\n{"id": 2, "meta": {"title": "x"}}')
    assert load_documents([nested], field="meta.title").documents == ["first", "x"]
    wrapped = _write(tmp_path / "w.json", json.dumps({"data": [{"text": "wrapped one"}, {"text": "wrapped two"}]}))
    assert load_documents([wrapped]).documents == ["wrapped one", "wrapped two"]
    parquet = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["parquet doc", "another 😀"], "score": [1, 2]}).to_parquet(parquet)
    loaded = load_documents([parquet])
    assert loaded.documents == ["parquet doc", "another 😀"] and loaded.chosen_column == "text"


def test_non_utf8_text_is_decoded_and_the_encoding_reported(tmp_path):
    text = ("Ærø — the café served crème brûlée, naïve façades and “smart quotes” all day long.\n" * 20)
    path = _write(tmp_path / "latin.txt", text, encoding="cp1252")
    loaded = load_documents([path])
    assert loaded.documents == [text.strip("\n")]
    assert loaded.notes == ["latin.txt: not UTF-8, decoded as cp1252"]


def test_utf8_bom_and_utf16_are_read(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffhello 안녕".encode())
    assert load_documents([bom]).documents == ["hello 안녕"]
    utf16 = _write(tmp_path / "u16.txt", "wide text 안녕", encoding="utf-16")
    loaded = load_documents([utf16])
    assert loaded.documents == ["wide text 안녕"] and "utf-16" in loaded.notes[0]


def test_hf_dataset_loads_through_datasets(tmp_path):
    folder = tmp_path / "local_ds"
    folder.mkdir()
    _write(folder / "train.csv", "id,text\n1,first hub document\n2,second hub document\n")
    loaded = load_hf_dataset(str(folder), split="train")
    assert loaded.documents == ["first hub document", "second hub document"]
    assert loaded.chosen_column == "text" and loaded.source.startswith("hf:")
    with pytest.raises(UserInputError, match="no column 'body'"):
        load_hf_dataset(str(folder), split="train", column="body")


def test_hf_dataset_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserInputError, match="could not load Hugging Face dataset gpt-playground-test/no-such"):
        load_hf_dataset("gpt-playground-test/no-such-dataset")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"  \n\n ", "only whitespace"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, "binary file"),
        ("controls.txt", bytes(range(1, 32)) * 50, "binary file"),
        ("data.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
        ("noext", b"text", r"unsupported file type '\(no extension\)'"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n', "line 3 is not valid JSON"),
        ("bad.json", b'{"text": [1, 2', "not valid JSON"),
        ("bad.parquet", b"not parquet at all", "not a readable Parquet file"),
        ("newline.csv", b"\n", "only whitespace"),
        ("quote.csv", b'a,b\n1,"2\n', "not valid CSV"),
        ("numbers.jsonl", b'{"a": 1}\n{"a": 2}\n', "no column of text"),
    ],
)
def test_bad_files_raise_specific_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserInputError, match=message) as info:
        load_documents([path])
    assert "\n" not in str(info.value)


def test_csv_without_the_named_column_lists_the_columns(tmp_path):
    csv = _write(tmp_path / "t.csv", "title,body\nA,B\n")
    with pytest.raises(UserInputError, match=r"no column 'text'; its columns are: title, body"):
        load_documents([csv], column="text")


# -- cleaning -----------------------------------------------------------------------------------------
def test_default_cleaning_keeps_non_english_text_and_line_breaks():
    report = clean_documents([MULTILINGUAL, r"a literal \n and C:\new path"])
    assert report.documents == [MULTILINGUAL, r"a literal \n and C:\new path"]
    assert not report.changed and report.examples == []
    assert report.before == report.after
    assert report.before["documents"] == 2 and report.before["tokens"] > 20
    assert report.before["characters"] == len(MULTILINGUAL) + len(r"a literal \n and C:\new path")


def test_fix_unicode_and_collapse_whitespace_with_counts_and_examples():
    docs = ["The cafÃ© was good.", "too   many  spaces  \n\n\n\nnext", "clean text"]
    report = clean_documents(docs)
    assert report.documents == ["The café was good.", "too many spaces\n\nnext", "clean text"]
    assert report.documents_by_rule["fix_unicode"] == 1 and report.removed_by_rule["fix_unicode"] == 1
    assert report.documents_by_rule["collapse_whitespace"] == 1
    assert report.removed_by_rule["collapse_whitespace"] == 3 + 2 + 2
    assert report.examples[0] == (docs[0], "The café was good.")
    assert report.before["characters"] - report.after["characters"] == 1 + 7
    assert report.after["tokens"] < report.before["tokens"]


@pytest.mark.parametrize("text", [
    "cafÃ© &amp; friends\r\nline\u2028two\x1b[31mred\x00\rlone",
    "plain ascii line\nwith & an ampersand &lt;b&gt;\n\nand ﬁne ligatures, ＦＵＬＬ width",
    MULTILINGUAL,
])
def test_fix_unicode_is_ftfy(text):
    import ftfy

    config = CleanConfig(collapse_whitespace=False, deduplicate=False)
    assert clean_documents([text], config, count_tokens=False).documents == [ftfy.fix_text(text)]


def test_each_replacement_rule():
    text = "Mail me at jane.doe@example.com or see https://example.com/page?x=1 or call +1 555-123-4567 now 42 times"
    replaced = clean_documents([text], CleanConfig(urls="replace", emails="replace", phone_numbers="replace",
                                                   numbers="replace")).documents[0]
    assert "<EMAIL>" in replaced and "<URL>" in replaced and "<PHONE>" in replaced and "<NUMBER>" in replaced
    assert "example.com" not in replaced and "555" not in replaced and "42" not in replaced
    dropped = clean_documents([text], CleanConfig(urls="drop", emails="drop")).documents[0]
    assert "example.com" not in dropped and "<" not in dropped and "42 times" in dropped


def test_html_case_ascii_line_breaks_and_patterns():
    html_doc = "<p>Hello <b>world</b> &amp; friends</p><script>var x = 1;</script>"
    assert clean_documents([html_doc], CleanConfig(strip_html=True)).documents == ["Hello world & friends"]
    assert clean_documents(["MiXeD Ærø"], CleanConfig(lowercase=True)).documents == ["mixed ærø"]
    ascii_doc = clean_documents(["café 안녕 ok"], CleanConfig(to_ascii=True))
    assert ascii_doc.documents == ["cafe ok"] and ascii_doc.notes
    assert clean_documents(["one\ntwo\n\nthree"], CleanConfig(remove_line_breaks=True)).documents == ["one two three"]
    report = clean_documents(["keep [citation needed] this [1]"], CleanConfig(remove_patterns=(r"\[[^\]]*\]",)))
    assert report.documents == ["keep this"]
    assert report.removed_by_rule[r"pattern \[[^\]]*\]"] == len("[citation needed]") + len("[1]")


def test_document_filters_min_chars_and_duplicates():
    docs = ["short", "a long enough document", "a long enough document", "   ", "another long document"]
    report = clean_documents(docs, CleanConfig(min_chars=10))
    assert report.documents == ["a long enough document", "another long document"]
    assert report.documents_by_rule["drop min_chars"] == 1
    assert report.documents_by_rule["drop deduplicate"] == 1
    assert report.documents_by_rule["drop empty"] == 1
    kept = clean_documents(docs, CleanConfig(deduplicate=False)).documents
    assert kept.count("a long enough document") == 2


def test_invalid_options_name_the_problem():
    with pytest.raises(UserInputError, match=r"invalid regular expression '\(unclosed'"):
        CleanConfig(remove_patterns=("ok", "(unclosed"))
    with pytest.raises(UserInputError, match="urls must be one of keep, replace, drop"):
        CleanConfig(urls="mask")
    with pytest.raises(UserInputError, match="min_chars"):
        CleanConfig(min_chars=-1)
    config = CleanConfig(urls="drop", remove_patterns=("x+",))
    assert CleanConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_importing_the_pipeline_does_not_print_the_unidecode_warning():
    code = "import gpt.data as d; d.clean_documents(['mail a@b.org'], d.CleanConfig(emails='drop'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "unidecode" not in result.stderr


# -- split, overlap, tokens ---------------------------------------------------------------------------
def test_split_by_whole_documents_takes_validation_from_the_end():
    docs = [f"document {i} " * 10 for i in range(20)]
    train, val = split_documents(docs, 0.1)
    assert train == docs[:18] and val == docs[18:]
    train, val = split_documents(["a" * 100, "b"], 0.5)
    assert train == ["a" * 100] and val == ["b"]


def test_single_document_splits_into_two_contiguous_blocks_at_a_line_break():
    lines = [f"line number {i}" for i in range(100)]
    text = "\n".join(lines)
    train, val = split_documents([text], 0.1)
    assert train[0] + val[0] == text
    assert train[0].endswith("\n") and val[0].startswith("line number 9")
    assert 0.08 < len(val[0]) / len(text) < 0.12


def test_single_line_document_is_cut_at_a_space_near_the_target():
    text = " ".join(f"w{i:03d}" for i in range(500))
    train, val = split_documents([text], 0.2)
    assert train[0] + val[0] == text and train[0].endswith(" ") and val[0].startswith("w")
    assert 0.18 < len(val[0]) / len(text) < 0.22


def test_split_rejects_bad_fractions_and_tiny_text():
    with pytest.raises(UserInputError, match="between 0 and 1"):
        split_documents(["text"], 0.0)
    with pytest.raises(UserInputError, match="between 0 and 1"):
        split_documents(["text"], 1.5)
    with pytest.raises(UserInputError, match="too small for a validation split"):
        split_documents(["x"], 0.1)


def test_ngram_overlap():
    train = np.arange(100)
    assert ngram_overlap(train, train[10:40]) == 1.0
    assert ngram_overlap(train, np.arange(1000, 1030)) == 0.0
    val = np.concatenate([np.arange(0, 10), np.arange(500, 510)])  # 13 8-grams, 3 found in train
    assert ngram_overlap(train, val) == pytest.approx(3 / 13)
    assert ngram_overlap(train, [1, 2]) == 0.0


def test_tokenize_puts_eot_between_documents_only():
    ids = tokenize_documents(["Hello world", "Hello world", "안녕"])
    assert ids.dtype == np.uint16
    tok = gpt2_tokenizer()
    assert ids.tolist() == [15496, 995, GPT2_EOT_ID, 15496, 995, GPT2_EOT_ID] + tok.encode("안녕")


def test_chunks_cut_where_tokens_do_not_change():
    text = ("Hello  world,\tthis is  안녕하세요 😀 text.\nNew line\n\n\nafter blanks   spaces \n" * 50)
    pieces = chunk_text(text, size=40)
    assert len(pieces) > 20 and "".join(pieces) == text
    encoding = gpt2_encoding()
    assert sum((encoding.encode_ordinary(p) for p in pieces), []) == encoding.encode_ordinary(text)


# -- prepare ------------------------------------------------------------------------------------------
def _corpus(tmp_path: Path, count: int = 30) -> Path:
    return _write(tmp_path / "corpus.txt", "\n\n".join(_paragraphs(count)))


def test_prepare_writes_token_files_and_meta(tmp_path):
    calls = []
    report = prepare_dataset([_corpus(tmp_path)], tmp_path / "out", split_on_blank_lines=True, val_fraction=0.2,
                             progress=lambda f, m: calls.append((f, m)))
    meta = read_meta(tmp_path / "out")
    assert meta == report.meta
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "train.bin", "val.bin"]
    for key in ("train_tokens", "val_tokens", "train_bytes", "val_bytes", "documents", "source", "cleaning",
                "tokenizer", "val_ngram_overlap"):
        assert key in meta
    assert meta["documents"] == 30 and meta["train_documents"] == 24 and meta["val_documents"] == 6
    assert meta["split"] == "documents" and meta["tokenizer"] == "gpt2"
    assert meta["cleaning"] == CleanConfig().to_dict()
    train, val = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert int((train == GPT2_EOT_ID).sum()) == 23 and int((val == GPT2_EOT_ID).sum()) == 5
    paragraphs = _paragraphs(30)
    assert gpt2_tokenizer().decode(val.tolist()) == "<|endoftext|>".join(paragraphs[24:])
    assert meta["val_bytes"] == sum(len(p) for p in paragraphs[24:])
    assert meta["val_ngram_overlap"] == 0.0
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] == 0.0


def test_prepare_accepts_a_loaded_source(tmp_path):
    loaded = LoadedSource(documents=_paragraphs(10), source="memory")
    report = prepare_dataset(loaded, tmp_path / "out")
    assert report.meta["source"] == "memory" and report.train_tokens > report.val_tokens > 0


def test_prepare_reports_leakage_from_duplicated_text(tmp_path):
    docs = _paragraphs(9) + [_paragraphs(1)[0] + " extra"]
    report = prepare_dataset(LoadedSource(docs, "dup"), tmp_path / "out")
    assert report.meta["val_ngram_overlap"] > 0.8


def test_output_folder_with_a_different_dataset_is_refused(tmp_path):
    corpus, out = _corpus(tmp_path), tmp_path / "out"
    prepare_dataset([corpus], out)
    first = (out / "train.bin").read_bytes()
    prepare_dataset([corpus], out)  # the same dataset again is fine
    with pytest.raises(UserInputError, match="already holds a different dataset"):
        prepare_dataset([corpus], out, val_fraction=0.3)
    assert (out / "train.bin").read_bytes() == first
    prepare_dataset([corpus], out, val_fraction=0.3, overwrite=True)
    assert (out / "train.bin").read_bytes() != first
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.me").write_text("x")
    with pytest.raises(UserInputError, match="not empty"):
        prepare_dataset([corpus], other)


def test_prepare_refuses_data_too_small(tmp_path):
    with pytest.raises(UserInputError, match="validation split has only"):
        prepare_dataset([_write(tmp_path / "s.txt", "one two three four five six seven eight nine ten\nend")],
                        tmp_path / "out")
    with pytest.raises(UserInputError, match="too small for a validation split"):
        prepare_dataset([_write(tmp_path / "t.txt", "x")], tmp_path / "out")
    with pytest.raises(UserInputError, match="no text is left after cleaning"):
        prepare_dataset([_write(tmp_path / "u.txt", "short")], tmp_path / "out", clean_config=CleanConfig(min_chars=50))
    assert not (tmp_path / "out").exists()


def test_load_split_and_read_meta_errors(tmp_path):
    with pytest.raises(UserInputError, match="no prepared dataset"):
        read_meta(tmp_path)
    with pytest.raises(UserInputError, match="does not exist"):
        load_split(tmp_path, "train")
    with pytest.raises(UserInputError, match="'train' or 'val'"):
        load_split(tmp_path, "test")


# -- batches ------------------------------------------------------------------------------------------
def test_get_batch_shapes_shift_and_reproducibility():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    x2, _ = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    assert int(y.max()) <= 999
    short = np.arange(16, dtype=np.uint16)
    get_batch(np.arange(17, dtype=np.uint16), 2, 16, torch.Generator())
    with pytest.raises(UserInputError, match="fewer than one window"):
        get_batch(short, 2, 16, torch.Generator())


def test_get_batch_maps_ids_for_a_compact_vocabulary():
    tok = Tokenizer(kept_gpt2_ids=[15496, 995])
    tokens = np.array([15496, 995, GPT2_EOT_ID, 15496, 995, 42], dtype=np.uint16)
    x, y = get_batch(tokens, 3, 5, torch.Generator().manual_seed(1), id_map=token_id_map(tok))
    assert x.tolist() == [[1, 0, 2, 1, 0]] * 3 and y.tolist() == [[0, 2, 1, 0, 2]] * 3
    assert token_id_map(gpt2_tokenizer()) is None


@pytest.mark.parametrize("length", [2, 17, 33, 100])
def test_eval_windows_cover_the_split_exactly_once(length):
    tokens = np.arange(length, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, 16, 3))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape[0] == eval_window_count(length, 16) and x.shape[1] == 16
    assert all(b[0].shape[0] <= 3 for b in batches)
    mask = y != -1
    assert y[mask].tolist() == list(range(1, length))
    assert x[mask].tolist() == list(range(0, length - 1))
    assert (x[~mask] == GPT2_EOT_ID).all()
    assert len(list(iter_eval_batches(tokens, 16, 3, max_windows=1))) == 1


# -- command line -------------------------------------------------------------------------------------
def test_cli_prepare_end_to_end(tmp_path, capsys):
    corpus = _write(tmp_path / "c.txt", "\n\n".join(_paragraphs(20) + ["Visit https://x.org now", "CAPS 안녕"]))
    out = tmp_path / "out"
    code = main(["prepare", str(corpus), "--out", str(out), "--split-on-blank-lines", "--val-fraction", "0.25",
                 "--urls", "replace", "--lowercase", "--min-chars", "3", "--remove-pattern", "now", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "validation 8-grams also in train" in captured.out and "tokens" in captured.out
    meta = read_meta(out)
    assert meta["cleaning"]["urls"] == "replace" and meta["cleaning"]["lowercase"] is True
    assert meta["cleaning"]["remove_patterns"] == ["now"] and meta["documents"] == 22
    text = gpt2_tokenizer().decode(load_split(out, "val").tolist())
    assert text.endswith("visit <url><|endoftext|>caps 안녕")


def test_cli_prepare_bundled_corpus_token_counts(tmp_path, capsys):
    assert main(["prepare", str(SHAKESPEARE), "--out", str(tmp_path / "shakespeare"), "--val-fraction", "0.1"]) == 0
    meta = read_meta(tmp_path / "shakespeare")
    assert 295_000 < meta["train_tokens"] < 310_000
    assert 33_000 < meta["val_tokens"] < 39_000
    assert meta["split"] == "contiguous" and meta["val_ngram_overlap"] < 0.2
    assert meta["train_bytes"] + meta["val_bytes"] > 1_100_000
    assert "301," in capsys.readouterr().out


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ({}, ["missing.txt"], "missing.txt does not exist"),
        ({"e.txt": b""}, ["e.txt"], "e.txt is empty"),
        ({"b.txt": b"\x00\x01\x02binary\xff" * 20}, ["b.txt"], "binary file"),
        ({"d.docx": b"PK"}, ["d.docx"], "unsupported file type"),
        ({"t.csv": b"a,b\nx,y\n"}, ["t.csv", "--column", "text"], "no column 'text'"),
        ({"j.jsonl": b'{"text": "a"}\n{oops}\n'}, ["j.jsonl"], "line 2 is not valid JSON"),
        ({"s.txt": b"x"}, ["s.txt"], "too small for a validation split"),
        ({"s.txt": b"one two three four five six seven\nx"}, ["s.txt"], "split has only"),
        ({"c.txt": b"some text"}, ["c.txt", "--remove-pattern", "[a-"], "invalid regular expression '[a-'"),
        ({"c.txt": b"some text"}, ["c.txt", "--val-fraction", "1.5"], "between 0 and 1"),
        ({"c.txt": b"some text"}, ["c.txt", "--urls", "mask"], "invalid choice"),
        ({}, [], "give at least one INPUT"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, files, extra, message):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    code = main(["prepare", *extra, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_different_dataset_without_overwrite(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = str(tmp_path / "out")
    assert main(["prepare", str(corpus), "--out", out, "--quiet"]) == 0
    assert main(["prepare", str(corpus), "--out", out, "--lowercase", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prepare", str(corpus), "--out", out, "--lowercase", "--overwrite", "--quiet"]) == 0


def test_cli_subprocess_hf_dataset_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "gpt", "prepare", "--hf-dataset", "gpt-playground-test/no-such-dataset",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: could not load Hugging Face dataset") and "offline" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
