"""File bytes -> plain text and a title, per format (text, Markdown, HTML, PDF).

Loaders work on bytes plus a filename so that files on disk and API uploads take the same path.
Every failure is a DocumentLoadError naming the file and the fix, which a batch reports per file.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Callable

from labs.rag.documents.errors import DocumentLoadError, UnsupportedFileError

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".text")
MARKDOWN_EXTENSIONS = (".md", ".markdown")
HTML_EXTENSIONS = (".html", ".htm")
PDF_EXTENSIONS = (".pdf",)
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS + MARKDOWN_EXTENSIONS + HTML_EXTENSIONS + PDF_EXTENSIONS

# Share of control characters (other than tab/newline/CR/form feed) above which "text" is binary.
BINARY_CONTROL_RATIO = 0.05
_MARKDOWN_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_SETEXT_HEADING = re.compile(r"^(?!\s)([^\n]+)\n(?:=+|-+)[ \t]*$", re.MULTILINE)
# HTML elements whose text is never content.
_HTML_DROP = ("script", "style", "nav", "noscript", "template", "iframe", "svg", "canvas", "head", "button", "form")
_HTML_BLOCKS = (
    "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "pre", "figure",
    "figcaption", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "address", "details", "summary",
)
_HTML_LINES = ("li", "dt", "dd", "tr", "caption")


@dataclass
class LoadedDocument:
    """The text of one file, ready to chunk."""

    text: str
    title: str
    kind: str  # "text", "markdown", "html" or "pdf"
    page_starts: list[int] = field(default_factory=list)  # PDF: char offset where each page begins


def file_kind(filename: str) -> str | None:
    """The loader for a filename by its extension, or None when it is not supported."""
    suffix = PurePath(filename).suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        return "text"
    if suffix in MARKDOWN_EXTENSIONS:
        return "markdown"
    if suffix in HTML_EXTENSIONS:
        return "html"
    if suffix in PDF_EXTENSIONS:
        return "pdf"
    return None


def load_bytes(data: bytes, filename: str) -> LoadedDocument:
    """Turn a file's bytes into text; raise DocumentLoadError when that cannot be done."""
    kind = file_kind(filename)
    if kind is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise UnsupportedFileError(f"{filename}: unsupported file type {PurePath(filename).suffix or '(no extension)'!r}: supported are {supported}")
    if not data.strip():
        raise DocumentLoadError(f"{filename}: the file is empty: nothing to index")
    loader: Callable[[bytes, str], LoadedDocument] = _LOADERS[kind]
    try:
        document = loader(data, filename)
    except DocumentLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - a parser bug on one file must not stop a batch
        logger.debug("loading %s failed", filename, exc_info=True)
        raise DocumentLoadError(f"{filename}: could not extract text ({type(error).__name__}: {_first_line(error)})") from error
    document.text = _normalise_newlines(document.text)
    if not document.text.strip():
        raise DocumentLoadError(f"{filename}: no text found in the file: nothing to index")
    document.title = " ".join(document.title.split()) or PurePath(filename).name
    return document


def decode_text(data: bytes, filename: str) -> str:
    """UTF-8 (with or without BOM), refusing binary data instead of indexing garbage."""
    if b"\x00" in data[:8192]:
        raise DocumentLoadError(f"{filename}: looks like a binary file (it contains NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentLoadError(
            f"{filename}: not valid UTF-8 text (byte {error.start}): convert it to UTF-8, or it is a binary file"
        ) from None
    sample = text[:8192]
    controls = sum(1 for char in sample if ord(char) < 32 and char not in "\t\n\r\f")
    if sample and controls / len(sample) > BINARY_CONTROL_RATIO:
        raise DocumentLoadError(f"{filename}: looks like a binary file ({controls} control characters), not text")
    return text


def _load_text(data: bytes, filename: str) -> LoadedDocument:
    return LoadedDocument(text=decode_text(data, filename), title=PurePath(filename).name, kind="text")


def _load_markdown(data: bytes, filename: str) -> LoadedDocument:
    text = decode_text(data, filename)
    return LoadedDocument(text=text, title=markdown_title(text) or PurePath(filename).name, kind="markdown")


def markdown_title(text: str) -> str | None:
    """The first heading (ATX `# Title` or setext `Title\\n=====`), whichever comes first."""
    found = [match for match in (_MARKDOWN_HEADING.search(text), _SETEXT_HEADING.search(text)) if match]
    if not found:
        return None
    first = min(found, key=lambda match: match.start())
    return first.group(1).strip()


def _load_html(data: bytes, filename: str) -> LoadedDocument:
    text, title = html_to_text(decode_text(data, filename))
    return LoadedDocument(text=text, title=title or PurePath(filename).name, kind="html")


def html_to_text(html: str) -> tuple[str, str | None]:
    """Visible text of an HTML page with paragraph breaks kept, and its title.

    Uses the stdlib "html.parser" backend (no lxml needed). Scripts, styles, navigation and
    forms are dropped. Source whitespace is collapsed first (it means nothing in HTML), then
    block elements get blank lines and list items / table rows get line breaks.
    """
    from bs4 import BeautifulSoup, Comment, Declaration, Doctype, NavigableString, ProcessingInstruction

    soup = BeautifulSoup(html, "html.parser")
    title = None
    if soup.title is not None and soup.title.get_text(strip=True):
        title = soup.title.get_text(" ", strip=True)
    for node in soup.find_all(string=lambda node: isinstance(node, (Comment, Doctype, Declaration, ProcessingInstruction))):
        node.extract()
    for element in soup.find_all(_HTML_DROP):
        element.decompose()
    for element in soup.find_all(attrs={"role": "navigation"}):
        element.decompose()
    if title is None:
        heading = soup.find(["h1", "h2", "h3"])
        if heading is not None and heading.get_text(strip=True):
            title = heading.get_text(" ", strip=True)
    for node in soup.find_all(string=True):
        if node.find_parent("pre") is None:
            node.replace_with(NavigableString(re.sub(r"\s+", " ", str(node))))
    for element in soup.find_all("br"):
        element.replace_with(NavigableString("\n"))
    for element in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):  # Markdown-style: chunking keeps headings whole
        element.insert(0, NavigableString("#" * int(element.name[1]) + " "))
    for element in soup.find_all(_HTML_BLOCKS):
        element.insert_before(NavigableString("\n\n"))
        element.insert_after(NavigableString("\n\n"))
    for element in soup.find_all(_HTML_LINES):  # a line each; the enclosing block ends the last one
        element.insert_before(NavigableString("\n- " if element.name == "li" else "\n"))
    for element in soup.find_all(["td", "th"]):
        element.insert_after(NavigableString(" | "))
    lines = [line.strip(" \t|") if "|" in line else line.strip() for line in soup.get_text().split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text, title


def _load_pdf(data: bytes, filename: str) -> LoadedDocument:
    """pypdf text extraction page by page; page offsets are kept so chunks can name their page."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentLoadError(f"{filename}: the PDF is encrypted with a password: save a decrypted copy to index it")
        pages = [page.extract_text() or "" for page in reader.pages]
        metadata_title = (reader.metadata.title if reader.metadata else None) or ""
    except DocumentLoadError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, AssertionError) as error:
        raise DocumentLoadError(f"{filename}: not a readable PDF ({type(error).__name__}: {_first_line(error)})") from None
    if not any(page.strip() for page in pages):
        raise DocumentLoadError(
            f"{filename}: the PDF has no extractable text ({len(pages)} page(s), e.g. scanned images or drawings only): "
            "run OCR on it first"
        )
    parts: list[str] = []
    page_starts: list[int] = []
    offset = 0
    for page in pages:
        page_text = _normalise_newlines(page).strip()
        page_starts.append(offset)
        parts.append(page_text)
        offset += len(page_text) + 2  # the "\n\n" joining pages
    title = str(metadata_title).strip() or _first_line_title(parts) or PurePath(filename).name
    return LoadedDocument(text="\n\n".join(parts), title=title, kind="pdf", page_starts=page_starts)


def _first_line_title(pages: list[str]) -> str | None:
    """A PDF without a metadata title: its first line when it is short enough to be a heading."""
    for page in pages:
        for line in page.splitlines():
            line = line.strip()
            if line:
                return line if len(line) <= 100 and not line.endswith((".", ",", ";", ":")) else None
    return None


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_LOADERS: dict[str, Callable[[bytes, str], LoadedDocument]] = {
    "text": _load_text,
    "markdown": _load_markdown,
    "html": _load_html,
    "pdf": _load_pdf,
}
