"""Chunking: sizes, overlap, sentence and paragraph boundaries, long sentences, empty text."""

from __future__ import annotations

import pytest

from labs.rag.documents import Chunk, ChunkingConfig, ChunkingConfigError, chunk_text
from labs.rag.documents.chunking import sentence_spans

SENTENCES = [f"Sentence number {n} talks about topic {n} in a few words." for n in range(1, 31)]
PROSE = " ".join(SENTENCES[:10]) + "\n\n" + " ".join(SENTENCES[10:20]) + "\n\n" + " ".join(SENTENCES[20:])


def check_slices(text: str, chunks: list[Chunk]) -> None:
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()


def test_chunks_respect_size_and_cover_every_sentence() -> None:
    config = ChunkingConfig(size=200, overlap=60)
    chunks = chunk_text(PROSE, config)
    check_slices(PROSE, chunks)
    assert len(chunks) > 5
    assert all(len(chunk.text) <= 200 for chunk in chunks)
    for sentence in SENTENCES:
        assert any(sentence in chunk.text for chunk in chunks), sentence


def test_chunks_start_and_end_on_sentence_boundaries() -> None:
    spans = sentence_spans(PROSE)
    starts = {start for start, _, _, _ in spans}
    ends = {end for _, end, _, _ in spans}
    for chunk in chunk_text(PROSE, ChunkingConfig(size=150, overlap=50)):
        assert chunk.start in starts and chunk.end in ends
        assert chunk.text[0].isupper() and chunk.text.endswith(".")


def test_consecutive_chunks_overlap_by_whole_sentences_within_the_limit() -> None:
    config = ChunkingConfig(size=200, overlap=60)
    chunks = chunk_text(PROSE, config)
    overlaps = 0
    for previous, chunk in zip(chunks, chunks[1:]):
        assert chunk.start > previous.start  # always moves forward
        if chunk.start < previous.end:
            overlaps += 1
            shared = PROSE[chunk.start : previous.end]
            assert len(shared) <= config.overlap
            assert shared in SENTENCES  # exactly one whole sentence (each is ~57 chars)
    assert overlaps >= len(chunks) // 2


def test_no_overlap_when_zero() -> None:
    chunks = chunk_text(PROSE, ChunkingConfig(size=200, overlap=0))
    assert all(chunk.start >= previous.end for previous, chunk in zip(chunks, chunks[1:]))
    assert "".join(chunk.text.replace(" ", "").replace("\n", "") for chunk in chunks) == PROSE.replace(" ", "").replace("\n", "")


def test_prefers_paragraph_breaks() -> None:
    paragraphs = ["First paragraph sentence one. First paragraph sentence two.", "Second paragraph is a bit longer than the first one. It has two sentences too."]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, ChunkingConfig(size=110, overlap=0))
    assert [chunk.text for chunk in chunks] == paragraphs


def test_abbreviations_and_decimals_do_not_end_sentences() -> None:
    text = "Dr. Smith approves e.g. special cases. Version 2.5 costs 3.50 EUR per user. Ask J. Doe!"
    sentences = [text[start:end] for start, end, _, _ in sentence_spans(text)]
    assert sentences == ["Dr. Smith approves e.g. special cases.", "Version 2.5 costs 3.50 EUR per user.", "Ask J. Doe!"]


def test_markdown_headings_and_list_items_are_their_own_units() -> None:
    text = "# Leave\n\nIntro text here.\n\n## Carry-over\n- Up to 5 days.\n- They expire on 31 March.\nWrapped line of\nthe same item."
    sentences = [text[start:end] for start, end, _, _ in sentence_spans(text)]
    assert sentences == ["# Leave", "Intro text here.", "## Carry-over", "- Up to 5 days.", "- They expire on 31 March.", "Wrapped line of\nthe same item."]


def test_a_chunk_never_ends_on_a_heading() -> None:
    text = "Some text of the first section that fills the chunk.\n\n## Next section\n\nBody of the next section follows here."
    chunks = chunk_text(text, ChunkingConfig(size=75, overlap=0))
    assert chunks[0].text == "Some text of the first section that fills the chunk."
    assert chunks[1].text.startswith("## Next section")


def test_a_sentence_longer_than_a_chunk_is_cut_at_word_boundaries() -> None:
    words = [f"word{n}" for n in range(100)]
    long_sentence = " ".join(words) + "."
    text = f"Short one. {long_sentence} Short two."
    chunks = chunk_text(text, ChunkingConfig(size=60, overlap=20))
    check_slices(text, chunks)
    assert all(len(chunk.text) <= 60 for chunk in chunks)
    joined = " ".join(chunk.text for chunk in chunks)
    for word in words:  # no word was cut in two
        assert f"{word} " in joined + " " or f"{word}." in joined
    assert chunks[0].text.startswith("Short one.")
    assert chunks[-1].text.endswith("Short two.")


def test_a_word_longer_than_a_chunk_is_cut_hard() -> None:
    text = "x" * 25
    chunks = chunk_text(text, ChunkingConfig(size=10, overlap=2))
    assert [chunk.text for chunk in chunks] == ["x" * 10, "x" * 10, "x" * 5]


@pytest.mark.parametrize("text", ["", "   ", "\n\n \t\n"])
def test_empty_text_gives_no_chunks(text: str) -> None:
    assert chunk_text(text) == []


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("Just one sentence.") == [Chunk(0, "Just one sentence.", 0, 18)]


def test_token_unit_uses_the_counter() -> None:
    def count_words(text: str) -> int:
        return len(text.split())

    config = ChunkingConfig(size=25, overlap=11, unit="tokens")
    chunks = chunk_text(PROSE, config, count_words)
    check_slices(PROSE, chunks)
    assert all(count_words(chunk.text) <= 25 for chunk in chunks)  # each sentence is 11 words
    assert any(chunk.start < previous.end for previous, chunk in zip(chunks, chunks[1:]))
    with pytest.raises(ChunkingConfigError, match="token counter"):
        chunk_text(PROSE, config)


@pytest.mark.parametrize(
    ("size", "overlap", "unit", "message"),
    [(0, 0, "chars", "at least 1"), (100, 100, "chars", "smaller than the chunk size"), (100, -1, "chars", "overlap"), (100, 10, "words", "unit")],
)
def test_bad_config_is_a_clear_error(size: int, overlap: int, unit: str, message: str) -> None:
    with pytest.raises(ChunkingConfigError, match=message) as error:
        ChunkingConfig(size=size, overlap=overlap, unit=unit)  # type: ignore[arg-type]
    assert error.value.exit_code == 2
