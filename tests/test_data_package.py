"""The shape of `gpt.data`: one module per stage, `from gpt.data import X` for every public name, a read
side that needs only numpy, and cleaning options declared once (validation, `prepare` flags, Data tab)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gpt.data
from gpt.cli import build_parser, main
from gpt.data import CleanConfig, read_meta
from gpt.errors import UserInputError
from gpt.fields import field_specs

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "cleantext", "ftfy", "datasets", "charset_normalizer")


@pytest.mark.parametrize("code", [
    "import gpt.data.folder",
    "from gpt.data import get_batch, iter_eval_batches, load_split, read_meta, split_token_counts, token_id_map",
    "from gpt.data import CleanConfig; CleanConfig().to_dict()",  # what reading a run's data section does
])
def test_the_read_side_imports_only_numpy(code):
    check = f"import sys; {code}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "", f"{code} imported {result.stdout.strip()}"


def test_every_public_name_comes_from_its_stage_module():
    assert len(gpt.data.__all__) == len(set(gpt.data.__all__)) > 25
    for name in gpt.data.__all__:
        value = getattr(gpt.data, name)
        module = importlib.import_module(f"gpt.data.{gpt.data._MODULE_OF[name]}")
        assert getattr(module, name) is value
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        gpt.data.no_such_name  # noqa: B018
    assert not (REPO / "gpt" / "data.py").exists()


def test_clean_config_is_validated_from_its_field_metadata():
    with pytest.raises(UserInputError, match="lowercase must be true or false") as info:
        CleanConfig(lowercase="yes")
    assert info.value.field == "lowercase"
    with pytest.raises(UserInputError, match="min_chars must be an integer >= 0") as info:
        CleanConfig(min_chars=2.5)
    assert info.value.field == "min_chars"
    with pytest.raises(UserInputError, match="urls must be one of keep, replace, drop") as info:
        CleanConfig(urls="mask")
    assert info.value.field == "urls"
    with pytest.raises(UserInputError, match="remove_patterns must be a list of strings"):
        CleanConfig(remove_patterns=(1,))
    assert CleanConfig(remove_patterns=["a", ""]).remove_patterns == ("a",)
    with pytest.raises(UserInputError, match="unknown cleaning option"):
        CleanConfig.from_dict({"lower_case": True})
    for spec in field_specs(CleanConfig):
        assert spec.label and spec.help


def _prepare_help() -> str:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return subparsers.choices["prepare"].format_help()


def test_prepare_flags_are_made_from_the_fields():
    text = " ".join(_prepare_help().split())
    for spec in field_specs(CleanConfig):
        flag = "--remove-pattern" if spec.name == "remove_patterns" else spec.flag
        assert flag in text and " ".join(spec.help.split()) in text
    for old in ("--no-fix-unicode", "--no-collapse-whitespace", "--keep-duplicates", "--strip-html", "--to-ascii",
                "--min-chars", "--urls {keep,replace,drop}", "--encoding"):
        assert old in text


def test_every_spelling_of_the_cleaning_flags_reaches_the_config(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(" ".join(f"w{i}x{j}" for j in range(30)) for i in range(20)), encoding="utf-8")
    flags = ["--no-fix-unicode", "--strip-html", "--urls", "drop", "--emails", "replace", "--phone-numbers", "drop",
             "--numbers", "replace", "--remove-line-breaks", "--no-collapse-whitespace", "--lowercase", "--to-ascii",
             "--min-chars", "3", "--keep-duplicates", "--remove-pattern", "x1", "--remove-pattern", "x2"]
    out = tmp_path / "out"
    assert main(["prepare", str(corpus), "--out", str(out), "--split-on-blank-lines", "--quiet", *flags]) == 0
    expected = CleanConfig(fix_unicode=False, strip_html=True, urls="drop", emails="replace", phone_numbers="drop",
                           numbers="replace", remove_line_breaks=True, collapse_whitespace=False, lowercase=True,
                           to_ascii=True, min_chars=3, deduplicate=False, remove_patterns=("x1", "x2"))
    assert CleanConfig.from_dict(read_meta(out)["cleaning"]) == expected
    new_spellings = ["--fix-unicode", "--deduplicate", "--no-lowercase", "--collapse-whitespace"]
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "out2"), "--quiet", *new_spellings]) == 0
    assert json.loads((tmp_path / "out2" / "meta.json").read_text())["cleaning"] == CleanConfig().to_dict()
