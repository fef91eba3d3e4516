"""Loaders: bytes + filename -> text and title, and a clear error for what cannot be indexed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labs.rag.documents import DocumentLoadError, UnsupportedFileError, load_bytes
from tests.rag.documents.conftest import CORPUS, write_blank_pdf, write_pdf


def test_html_drops_scripts_styles_and_navigation_and_keeps_paragraphs() -> None:
    document = load_bytes((CORPUS / "product-faq.html").read_bytes(), "product-faq.html")
    assert document.kind == "html"
    assert document.title == "Kestrel Robot: Frequently Asked Questions"
    for junk in ("tracking pixel", "do not index", "font-family", "Customer login", "Careers", "DOCTYPE"):
        assert junk not in document.text
    assert "## How long does the battery last?\n\nA fully charged Kestrel runs for about 10 hours" in document.text
    assert "- The fleet manager, Aerie, runs on a server on site or in the cloud.\n- Aerie connects" in document.text
    assert "\n\n\n" not in document.text
    assert "pallets between storage" in document.text  # source line breaks inside a <p> are just spaces


def test_html_title_falls_back_to_the_first_heading_then_the_filename() -> None:
    assert load_bytes(b"<body><h1>Hello there</h1><p>Body text.</p></body>", "a.html").title == "Hello there"
    assert load_bytes(b"<p>Only a paragraph.</p>", "page.htm").title == "page.htm"


def test_html_tables_and_breaks() -> None:
    html = b"<table><tr><th>Plan</th><th>Price</th></tr><tr><td>Basic</td><td>10 EUR</td></tr></table><p>a<br>b</p>"
    text = load_bytes(html, "t.html").text
    assert "Plan | Price\nBasic | 10 EUR" in text
    assert "a\nb" in text


def test_markdown_title_is_the_first_heading() -> None:
    document = load_bytes((CORPUS / "leave-policy.md").read_bytes(), "leave-policy.md")
    assert (document.kind, document.title) == ("markdown", "Leave Policy")
    assert load_bytes(b"Setext Title\n============\n\nBody.", "s.md").title == "Setext Title"
    assert load_bytes(b"No heading at all.", "plain.md").title == "plain.md"


def test_text_title_is_the_filename_and_bom_and_crlf_are_handled() -> None:
    document = load_bytes("Line one.\r\nLine two.\r\n".encode("utf-8-sig"), "notes.txt")
    assert (document.kind, document.title, document.text) == ("text", "notes.txt", "Line one.\nLine two.\n")


def test_pdf_text_title_and_page_offsets(tmp_path: Path) -> None:
    pages = [[("First", "Page one talks about apples.")], [("Second", "Page two talks about pears.")]]
    path = write_pdf(tmp_path / "fruit.pdf", "Fruit Guide", pages)
    document = load_bytes(path.read_bytes(), "fruit.pdf")
    assert (document.kind, document.title) == ("pdf", "Fruit Guide")
    assert len(document.page_starts) == 2 and document.page_starts[0] == 0
    assert "apples" in document.text[: document.page_starts[1]]
    assert "pears" in document.text[document.page_starts[1] :]


def test_pdf_without_metadata_title_uses_its_first_line(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "untitled.pdf", None, [[("A Heading Line", "Some text follows.")]])
    assert load_bytes(path.read_bytes(), "untitled.pdf").title == "A Heading Line"


def test_pdf_without_text_is_a_clear_error(tmp_path: Path) -> None:
    path = write_blank_pdf(tmp_path / "drawing.pdf")
    with pytest.raises(DocumentLoadError, match=r"drawing.pdf: the PDF has no extractable text .*OCR"):
        load_bytes(path.read_bytes(), "drawing.pdf")


def test_broken_pdf_is_a_clear_error() -> None:
    with pytest.raises(DocumentLoadError, match="broken.pdf: not a readable PDF"):
        load_bytes(b"%PDF-1.4\nthis is not really a pdf\n%%EOF", "broken.pdf")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
        (os.urandom(64) + b"\x00", "binary file"),
        ("caf\u00e9 au lait".encode("latin-1"), "not valid UTF-8"),
        (b"\x01\x02\x03\x04\x05\x06 text \x07\x08", "binary file"),
    ],
)
def test_binary_or_undecodable_text_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(DocumentLoadError, match=message):
        load_bytes(data, "file.txt")


def test_unsupported_extension_and_empty_file() -> None:
    with pytest.raises(UnsupportedFileError, match=r"report.docx: unsupported file type '.docx': supported are .txt"):
        load_bytes(b"PK\x03\x04", "report.docx")
    with pytest.raises(UnsupportedFileError, match="no extension"):
        load_bytes(b"text", "Makefile")
    with pytest.raises(DocumentLoadError, match="empty.md: the file is empty"):
        load_bytes(b" \n\n ", "empty.md")
    with pytest.raises(DocumentLoadError, match="no text found"):
        load_bytes(b"<script>only()</script>", "script.html")
