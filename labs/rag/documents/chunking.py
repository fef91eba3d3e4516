"""Split text into overlapping chunks on sentence and paragraph boundaries.

Why boundaries: a chunk cut mid-sentence embeds half a statement and reads badly in a prompt.
A chunk is a run of whole sentences from the source text (`text[start:end]`), at most `size`
long; the next chunk repeats the last sentences of the previous one, up to `overlap`, so a fact
straddling a boundary is whole in at least one chunk. A sentence longer than `size` is the only
thing ever cut: at word boundaries, or mid-word for a word longer than `size`.

Sizes are in characters (exact) or tokens (the sum of each sentence's token count, which is
within a few tokens of counting the joined text, and costs one tokenizer call per sentence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal

from labs.rag.documents.errors import ChunkingConfigError

Unit = Literal["chars", "tokens"]
TokenCounter = Callable[[str], int]

DEFAULT_CHUNK_CHARS = 800  # ~170 tokens of English: under all-MiniLM-L6-v2's 256-token limit
DEFAULT_OVERLAP_CHARS = 150
# A chunk at least this full ends at a paragraph break rather than start a paragraph it cannot finish.
PARAGRAPH_BREAK_FILL = 0.6

_PARAGRAPH = re.compile(r"\S(?:.*?\S)??(?=\n[ \t]*\n|\s*\Z)", re.DOTALL)
# Lines that start a block of their own: headings, list items, table rows, quotes.
_BLOCK_START = re.compile(r"[ \t]*(?:#{1,6}[ \t]|[-*+•][ \t]|\d{1,3}[.)][ \t]|\||>)")
_HEADING_LINE = re.compile(r"[ \t]*#{1,6}[ \t]")
# End of a sentence: terminal punctuation, optional closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")
_NEXT_WORD = re.compile(r"\s+(\S)")
_WORD = re.compile(r"\S+")
_LAST_WORD = re.compile(r"([\w.]+)$")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc inc ltd co corp no nr approx dept fig e.g i.e cf al est".split()
)


@dataclass(frozen=True)
class ChunkingConfig:
    """How documents are cut: `size` and `overlap` in `unit` (characters or tokens)."""

    size: int = DEFAULT_CHUNK_CHARS
    overlap: int = DEFAULT_OVERLAP_CHARS
    unit: Unit = "chars"

    def __post_init__(self) -> None:
        if self.unit not in ("chars", "tokens"):
            raise ChunkingConfigError(f"chunk unit must be 'chars' or 'tokens', not {self.unit!r}")
        if self.size < 1:
            raise ChunkingConfigError(f"chunk size must be at least 1 {self.unit}, not {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ChunkingConfigError(
                f"chunk overlap must be at least 0 and smaller than the chunk size ({self.size} {self.unit}), not {self.overlap}"
            )

    @property
    def signature(self) -> str:
        """Stored with each chunk: re-ingesting with other settings re-chunks an unchanged file."""
        return f"{self.unit}:{self.size}:{self.overlap}"


@dataclass(frozen=True)
class Chunk:
    """A slice of the document text: `text == source[start:end]`."""

    index: int
    text: str
    start: int
    end: int


@dataclass
class _Piece:
    start: int
    end: int
    length: int
    paragraph_start: bool
    heading: bool


def sentence_spans(text: str) -> list[tuple[int, int, bool, bool]]:
    """(start, end, starts_a_paragraph, is_heading) of each sentence, whitespace trimmed.

    Paragraphs are separated by blank lines; inside one, a line that starts a heading, list
    item, table row or quote starts a new block, and other line breaks are wrapped text.
    """
    spans: list[tuple[int, int, bool, bool]] = []
    for paragraph in _PARAGRAPH.finditer(text):
        first = True
        for block_start, block_end, heading in _blocks(text, paragraph.start(), paragraph.end()):
            if heading:
                spans.append((block_start, block_end, first, True))
            else:
                for start, end in _sentences(text, block_start, block_end):
                    spans.append((start, end, first, False))
                    first = False
            first = False
    return spans


def _blocks(text: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    blocks: list[tuple[int, int, bool]] = []
    block_start = start
    heading = bool(_HEADING_LINE.match(text, start))
    position = start
    while True:
        newline = text.find("\n", position, end)
        if newline < 0:
            break
        line_start = newline + 1
        if heading or _BLOCK_START.match(text, line_start):
            blocks.append((block_start, newline, heading))
            block_start = line_start
            heading = bool(_HEADING_LINE.match(text, line_start))
        position = line_start
    blocks.append((block_start, end, heading))
    return [(s, e, h) for s, e, h in (_trim(text, s, e) + (h,) for s, e, h in blocks) if s < e]


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    sentence_start = start
    for match in _SENTENCE_END.finditer(text, start, end):
        if match.end() >= end or not _ends_sentence(text, match.start(), match.end(), end):
            continue
        spans.append(_trim(text, sentence_start, match.end()))
        sentence_start = match.end()
    spans.append(_trim(text, sentence_start, end))
    return [(s, e) for s, e in spans if s < e]


def _ends_sentence(text: str, punct_start: int, punct_end: int, limit: int) -> bool:
    """Not an abbreviation ("e.g. this", "Dr. Smith"), a decimal or a lowercase continuation."""
    following = _NEXT_WORD.match(text, punct_end, limit)
    if following is None:
        return False
    if following.group(1).islower():
        return False
    if text[punct_start] == ".":
        word = _LAST_WORD.search(text[max(0, punct_start - 12) : punct_start])
        if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
            return False
        if word and len(word.group(1)) == 1 and word.group(1).isupper():  # initials: "J. Smith"
            return False
    return True


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def chunk_text(text: str, config: ChunkingConfig | None = None, count_tokens: TokenCounter | None = None) -> list[Chunk]:
    """Cut `text` into chunks per `config`; empty or blank text gives no chunks."""
    config = config or ChunkingConfig()
    if config.unit == "tokens" and count_tokens is None:
        raise ChunkingConfigError("chunking in tokens needs a token counter (the embedding model's tokenizer)")

    def measure(start: int, end: int) -> int:
        return end - start if config.unit == "chars" else count_tokens(text[start:end])  # type: ignore[misc]

    pieces: list[_Piece] = []
    for start, end, paragraph_start, heading in sentence_spans(text):
        length = measure(start, end)
        if length <= config.size:
            pieces.append(_Piece(start, end, length, paragraph_start, heading))
            continue
        parts = _split_long(text, start, end, config.size, measure, additive=config.unit == "tokens")
        for number, (part_start, part_end) in enumerate(parts):
            pieces.append(_Piece(part_start, part_end, measure(part_start, part_end), paragraph_start and number == 0, False))
    return [Chunk(index, text[start:end], start, end) for index, (start, end) in enumerate(_pack(pieces, config))]


def _pack(pieces: list[_Piece], config: ChunkingConfig) -> list[tuple[int, int]]:
    """Greedy packing of whole pieces, with overlap carried from the end of each chunk."""
    exact = config.unit == "chars"

    def length(first: int, last: int) -> int:  # pieces[first..last] inclusive
        if exact:
            return pieces[last].end - pieces[first].start
        return sum(piece.length for piece in pieces[first : last + 1])

    chunks: list[tuple[int, int]] = []
    first = 0
    fresh = 0  # first piece not yet in any chunk
    while fresh < len(pieces):
        # Overlap pieces that leave no room for the next new piece are dropped, oldest first.
        while first < fresh and length(first, fresh) > config.size:
            first += 1
        last = fresh
        while last + 1 < len(pieces) and length(first, last + 1) <= config.size:
            if pieces[last + 1].paragraph_start and length(first, last) >= PARAGRAPH_BREAK_FILL * config.size:
                paragraph_end = last + 1
                while paragraph_end + 1 < len(pieces) and not pieces[paragraph_end + 1].paragraph_start:
                    paragraph_end += 1
                if length(first, paragraph_end) > config.size:
                    break  # end here rather than start a paragraph this chunk cannot finish
            last += 1
        # Never end a chunk on a heading when the heading can open the next one instead.
        while last > fresh and pieces[last].heading:
            last -= 1
        chunks.append((pieces[first].start, pieces[last].end))
        chunk_first, fresh = first, last + 1
        first = fresh
        if fresh < len(pieces) and pieces[fresh].heading:
            continue  # a new section: the previous section's tail is noise there
        # Overlap never reaches back to this chunk's first piece, so every chunk moves forward.
        while first - 1 > chunk_first and length(first - 1, last) <= config.overlap:
            first -= 1
    return chunks


def _split_long(
    text: str, start: int, end: int, size: int, measure: Callable[[int, int], int], additive: bool
) -> list[tuple[int, int]]:
    """Cut an over-long sentence at word boundaries into parts of at most `size`.

    `additive`: a part's size is the sum of its words' (tokens), so each word is measured once
    instead of re-measuring the growing part (characters are measured exactly, for free).
    """
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    part_end = start
    part_size = 0
    for match in _WORD.finditer(text, start, end):
        word_start, word_end = match.span()
        word_size = measure(word_start, word_end)
        if word_size > size:
            if part_start is not None:
                parts.append((part_start, part_end))
                part_start = None
            parts.extend(_split_word(word_start, word_end, size, measure))
            continue
        if part_start is None:
            part_start, part_end, part_size = word_start, word_end, word_size
            continue
        grown = part_size + word_size if additive else measure(part_start, word_end)
        if grown <= size:
            part_end, part_size = word_end, grown
        else:
            parts.append((part_start, part_end))
            part_start, part_end, part_size = word_start, word_end, word_size
    if part_start is not None:
        parts.append((part_start, part_end))
    return parts


def _split_word(start: int, end: int, size: int, measure: Callable[[int, int], int]) -> list[tuple[int, int]]:
    """A word longer than a chunk (a URL, a hash): cut into the longest parts that fit."""
    parts: list[tuple[int, int]] = []
    while start < end:
        cut = min(end, start + size)
        while cut > start + 1 and measure(start, cut) > size:
            cut -= 1
        parts.append((start, cut))
        start = cut
    return parts
