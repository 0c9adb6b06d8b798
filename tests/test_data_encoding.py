"""Text encodings of loaded files: UTF-8 first, the Western code page when the detector is unsure, a chosen
encoding when the person names one, and clear errors naming the person's own file."""

from __future__ import annotations

import pytest

from gpt.cli import main
from gpt.data import decode_text, load_documents, prepare_dataset, read_meta
from gpt.errors import UserInputError

CAFE = "Café crème, naïve façade"
FRENCH = "Ça va? Où êtes-vous? Très bien, merci. Déjà vu, à bientôt!\n" * 3000  # charset-normalizer says cp1257
RUSSIAN = "Привет, мир! Как дела? Это тест кодировки.\n" * 10
JAPANESE = "日本語のテキストです。これはテスト。"


def _paragraphs(count: int) -> str:
    return "\n\n".join(" ".join(f"café{i}x{j} crème" for j in range(30)) for i in range(count))


@pytest.mark.parametrize(("text", "saved_as", "decoded_as"), [
    (CAFE, "latin-1", "cp1252"),
    (FRENCH, "latin-1", "cp1252"),
    ("Ærø — “smart quotes” and crème brûlée\n" * 5, "cp1252", "cp1252"),
    (RUSSIAN, "cp1251", "cp1251"),
    (JAPANESE, "shift_jis", "cp932"),
    (CAFE, "utf-8", "utf-8"),
])
def test_auto_decodes_exactly_and_names_the_encoding(text, saved_as, decoded_as):
    decoded, used = decode_text(text.encode(saved_as), "f.txt")
    assert decoded == text and used == decoded_as


def test_a_latin1_file_is_read_as_written_and_the_encoding_reported(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(CAFE.encode("latin-1"))
    loaded = load_documents([path])
    assert loaded.documents == [CAFE]
    assert loaded.encoding == "auto" and loaded.encodings == {"latin.txt": "cp1252"}
    assert loaded.notes == ["latin.txt: not UTF-8, decoded as cp1252"]


def test_utf8_with_and_without_bom_needs_no_note(tmp_path):
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_bytes(CAFE.encode("utf-8"))
    bom.write_bytes(b"\xef\xbb\xbf" + CAFE.encode("utf-8"))
    loaded = load_documents([plain, bom])
    assert loaded.documents == [CAFE, CAFE] and loaded.notes == []
    assert loaded.encodings == {"plain.txt": "utf-8", "bom.txt": "utf-8-sig"}
    assert load_documents([bom], encoding="utf-8").documents == [CAFE]  # a chosen UTF-8 also drops the mark


def test_a_chosen_encoding_is_used_as_given(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(CAFE.encode("latin-1"))
    chosen = load_documents([path], encoding="cp1250")
    assert chosen.documents == ["Café crčme, naďve façade"]  # what cp1250 says these bytes mean
    assert chosen.encoding == "cp1250" and chosen.encodings == {"latin.txt": "cp1250"}
    assert chosen.notes == ["latin.txt: decoded as cp1250 (as chosen)"]
    assert load_documents([path], encoding="latin-1").documents == [CAFE]
    table = tmp_path / "rows.csv"
    table.write_bytes(f"id,text\n1,\"{CAFE}\"\n".encode("cp1252"))
    assert load_documents([table], encoding="cp1252").documents == [CAFE]


def test_unknown_encoding_and_undecodable_bytes_name_the_file(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(CAFE.encode("latin-1"))
    for bad in ("no-such-codec", "base64"):
        with pytest.raises(UserInputError, match=f"unknown text encoding '{bad}' for latin.txt") as info:
            load_documents([path], encoding=bad)
        assert "auto" in str(info.value)
    with pytest.raises(UserInputError, match=r"latin.txt is not valid utf-8: invalid continuation byte at byte 3"):
        load_documents([path], encoding="utf-8")
    with pytest.raises(UserInputError, match="not valid shift_jis"):
        load_documents([path], encoding="shift_jis")


def test_messages_use_the_given_name_never_the_servers_folder(tmp_path):
    upload = tmp_path / ("ab" * 32)  # how Gradio stores an upload: <temp folder>/<64 hex>/<its own name>
    upload.mkdir()
    for name, content, message in [("empty.txt", b"", "empty.txt is empty"),
                                   ("latin.txt", CAFE.encode("latin-1"), "latin.txt is not valid utf-8")]:
        (upload / name).write_bytes(content)
        with pytest.raises(UserInputError, match=message) as info:
            load_documents([upload / name], names=[name], encoding="utf-8" if content else "auto")
        assert str(tmp_path) not in str(info.value) and "ab" * 32 not in str(info.value)
    loaded = load_documents([upload / "latin.txt"], names=["latin.txt"])
    assert loaded.source == "latin.txt" and loaded.inputs == ["latin.txt"]


def test_meta_json_records_the_encoding(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(_paragraphs(20).encode("latin-1"))
    prepare_dataset([path], tmp_path / "auto", split_on_blank_lines=True)
    meta = read_meta(tmp_path / "auto")
    assert meta["encoding"] == "auto" and meta["encodings"] == {"text.txt": "cp1252"}
    prepare_dataset([path], tmp_path / "chosen", split_on_blank_lines=True, encoding="latin-1")
    meta = read_meta(tmp_path / "chosen")
    assert meta["encoding"] == "latin-1" and meta["encodings"] == {"text.txt": "latin-1"}


def test_cli_encoding_flag(tmp_path, capsys):
    path = tmp_path / "text.txt"
    path.write_bytes(_paragraphs(20).encode("latin-1"))
    out = tmp_path / "out"
    assert main(["prepare", str(path), "--out", str(out), "--split-on-blank-lines", "--encoding", "latin-1",
                 "--quiet"]) == 0
    assert "encoding (latin-1): text.txt latin-1" in capsys.readouterr().out
    assert read_meta(out)["encoding"] == "latin-1"
    for flag, message in [("no-such-codec", "unknown text encoding 'no-such-codec' for text.txt"),
                          ("utf-8", "text.txt is not valid utf-8")]:
        assert main(["prepare", str(path), "--out", str(tmp_path / "bad"), "--encoding", flag]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "bad").exists()
