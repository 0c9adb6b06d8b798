"""The Data tab in a real browser: empty tables with real headers, the text encoding named and changeable,
and an error that names the uploaded file and marks only the message it is about."""

from __future__ import annotations

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

pytestmark = pytest.mark.browser

CAFE = "Café crème, naïve façade"


def upload_and_load(page, path) -> None:
    page.get_by_label("Upload files").check()
    page.locator("#data-files").wait_for(state="visible")
    listed = page.locator("#data-files", has_text=path.name)
    # The file input can be re-rendered while the upload box appears, dropping a file set on the old one, so
    # the file is set again until the box lists it (uploads are slow on a loaded machine).
    for attempt in range(3):
        page.locator("#data-files input[type=file]").set_input_files(str(path))
        try:
            listed.wait_for(timeout=30_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
    page.locator("#data-load").click()


def test_the_encoding_is_named_and_can_be_changed(page, tmp_path, artifacts):
    assert page.locator("#data-preview th").all_inner_texts()[:3] != ["1", "2", "3"]
    assert "file" in page.locator("#data-preview").inner_text()
    latin = tmp_path / "latin.txt"
    latin.write_bytes((CAFE + "\n").encode("latin-1") * 3)
    upload_and_load(page, latin)
    page.locator("#data-summary", has_text="encoding cp1252 (detected)").wait_for()
    page.locator("#data-preview", has_text=CAFE).wait_for()
    box = page.locator("#data-encoding input")
    box.click()
    box.fill("cp1250")
    page.locator("ul[role=listbox] li", has_text="cp1250").first.click()
    page.locator("#data-summary", has_text="encoding cp1250 (as chosen)").wait_for()
    page.locator("#data-preview", has_text="Café crčme").wait_for()
    page.screenshot(path=str(artifacts / "data-encoding.png"), full_page=True)


def test_an_error_names_the_file_and_marks_only_its_message(page, tmp_path, artifacts):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    upload_and_load(page, empty)
    toast = page.locator(".toast-body", has_text="empty.txt is empty")
    toast.wait_for()
    assert "/" not in toast.inner_text().split("empty.txt is empty")[0].split("\n")[-1]  # no folder before it
    page.locator("#data-summary .error").first.wait_for()
    page.screenshot(path=str(artifacts / "data-error.png"), full_page=True)
    for unrelated in ("data-name", "data-datasets", "data-preview", "data-column", "data-clean-preview"):
        assert page.locator(f"#{unrelated} .error").count() == 0, unrelated
