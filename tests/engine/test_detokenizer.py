"""Incremental detokenizer: exact text, no broken characters, stop strings, O(1) windows."""

from __future__ import annotations

import random

import pytest

from labs.engine.detokenizer import (
    MAX_PENDING_TOKENS,
    PROMPT_CONTEXT_TOKENS,
    DetokenizerStep,
    IncrementalDetokenizer,
)
from tests.engine.tokenizers_util import FakeTokenizer, byte_fallback_bpe, byte_level_bpe, byte_token_id

TEXTS = [
    "Hello world! Café résumé 日本語のテキスト 😀🎉 done.",
    "  leading spaces,   inner   runs and trailing  ",
    "def main():\n    print('日本')\n\nUser: 👍🏽❤️",
    "é" * 7 + "😀" * 5 + "東京" * 3,
]


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[DetokenizerStep]:
    return [detok.step(i) for i in ids]


def stream_text(tokenizer, prompt: list[int], ids: list[int], **kwargs) -> str:
    detok = IncrementalDetokenizer(tokenizer, prompt, **kwargs)
    text = "".join(s.text_delta for s in stream(detok, ids)) + detok.flush()
    assert detok.text == text
    return text


def expected_continuation(tokenizer, prompt: list[int], ids: list[int], skip: bool = True) -> str:
    """What the output adds to the decoded prompt (the leading space included)."""
    full = tokenizer.decode(prompt + ids, skip_special_tokens=skip)
    head = tokenizer.decode(prompt, skip_special_tokens=skip)
    assert full.startswith(head)
    return full[len(head) :]


# ----------------------------------------------------------------------------- exact text


@pytest.mark.parametrize("make", [byte_level_bpe, byte_fallback_bpe], ids=["byte-level", "byte-fallback"])
@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_decode_without_prompt(make, text: str) -> None:
    tok = make()
    ids = tok.encode(text, add_special_tokens=False)
    assert stream_text(tok, [], ids) == tok.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("make", [byte_level_bpe, byte_fallback_bpe], ids=["byte-level", "byte-fallback"])
@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_decode_after_prompt(make, text: str) -> None:
    tok = make()
    prompt = tok.encode("User: say something.\nAssistant:", add_special_tokens=False)
    ids = tok.encode(" " + text, add_special_tokens=False)
    assert stream_text(tok, prompt, ids) == expected_continuation(tok, prompt, ids)


@pytest.mark.parametrize("make", [byte_level_bpe, byte_fallback_bpe], ids=["byte-level", "byte-fallback"])
def test_never_emits_a_broken_character(make) -> None:
    tok = make()
    ids = tok.encode("日本語 😀🎉 👍🏽 café 東京", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [])
    steps = stream(detok, ids)
    assert all("\ufffd" not in s.text_delta for s in steps)
    # Some token ended mid-character and had to be held back.
    assert any(s.text_delta == "" for s in steps)
    assert detok.flush() == ""
    assert detok.text == "日本語 😀🎉 👍🏽 café 東京"


def test_byte_fallback_character_held_until_complete() -> None:
    tok = byte_fallback_bpe()
    emoji = [byte_token_id(tok, b) for b in "😀".encode()]
    hi = tok.encode("hi", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, hi)
    deltas = [s.text_delta for s in stream(detok, emoji)]
    assert deltas == ["", "", "", "😀"]


def test_text_before_an_incomplete_character_is_not_held() -> None:
    tok = byte_level_bpe()
    # "日日" as byte-level tokens: 'æĹ' (2 bytes of 日), '¥æ' (last byte of 日 + lead byte of the
    # next 日), 'Ĺ', '¥'. The first 日 is complete inside '¥æ' and must go out right away.
    pieces = ["æĹ", "¥æ", "Ĺ", "¥"]
    ids = tok.convert_tokens_to_ids(pieces)
    assert tok.unk_token_id not in ids and None not in ids
    assert tok.decode(ids) == "日日"
    detok = IncrementalDetokenizer(tok, [])
    assert [s.text_delta for s in stream(detok, ids)] == ["", "日", "", "日"]


def test_flush_emits_an_incomplete_character_as_decode_does() -> None:
    tok = byte_level_bpe()
    ids = tok.encode("ok 😀", add_special_tokens=False)
    truncated = ids[:-1] + [tok.convert_tokens_to_ids("ð")]  # lead byte of a 4-byte character
    detok = IncrementalDetokenizer(tok, [])
    deltas = "".join(s.text_delta for s in stream(detok, truncated))
    assert "\ufffd" not in deltas
    assert deltas + detok.flush() == tok.decode(truncated)
    assert detok.text.endswith("\ufffd")


# ----------------------------------------------------------------------------- random ids


def test_random_ids_byte_level_match_decode() -> None:
    """Arbitrary ids, invalid UTF-8 and special tokens included: the stream equals decode."""
    tok = byte_level_bpe()
    rng = random.Random(1234)
    prompt = tok.encode("User: hi\nAssistant:", add_special_tokens=False)
    vocab = len(tok)
    for trial in range(400):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        skip = trial % 3 != 0
        for p in ([], prompt):
            got = stream_text(tok, p, ids, skip_special_tokens=skip)
            assert got == tok.decode(ids, skip_special_tokens=skip), (p, ids, skip)


def _random_byte_fallback_ids(tok, rng: random.Random) -> list[int]:
    """Random mixes of vocabulary pieces, special tokens, characters spelled in byte tokens and
    invalid byte runs.

    Byte-fallback decoders show a whole ``<0x..>`` run as U+FFFDs once any byte in it is invalid,
    even characters completed earlier in the run; a stream cannot take those back (see the
    detokenizer docstring), so invalid runs here are invalid from their first byte.
    """
    byte_ids = {byte_token_id(tok, b) for b in range(256)}
    specials = set(tok.all_special_ids)
    normal = [i for i in range(len(tok)) if i not in byte_ids and i not in specials]
    chars = "é日本語😀🎉東京ß€"
    ids: list[int] = []
    for _ in range(rng.randrange(0, 25)):
        kind = rng.random()
        if kind < 0.45:
            ids.append(rng.choice(normal))
        elif kind < 0.55:
            ids.append(rng.choice(sorted(specials)))
        elif kind < 0.85:
            ids += [byte_token_id(tok, b) for b in rng.choice(chars).encode()]
        else:
            # A run that starts with a continuation byte is invalid as a whole from its first
            # byte, so whatever follows in the same run can never make earlier bytes valid.
            ids.append(rng.choice(normal))
            ids.append(byte_token_id(tok, rng.randrange(0x80, 0xC0)))
            ids += [byte_token_id(tok, rng.randrange(0x80, 0x100)) for _ in range(rng.randrange(0, 4))]
    return ids


def test_random_ids_byte_fallback_match_decode() -> None:
    tok = byte_fallback_bpe()
    rng = random.Random(99)
    prompt = tok.encode("User: hi. Assistant:", add_special_tokens=False)
    for trial in range(400):
        ids = _random_byte_fallback_ids(tok, rng)
        skip = trial % 3 != 0
        assert stream_text(tok, [], ids, skip_special_tokens=skip) == tok.decode(ids, skip_special_tokens=skip)
        got = stream_text(tok, prompt, ids, skip_special_tokens=skip)
        assert got == expected_continuation(tok, prompt, ids, skip), ids


# ----------------------------------------------------------------------------- spaces, specials


def test_sentencepiece_first_token_keeps_its_space() -> None:
    tok = byte_fallback_bpe()
    prompt = tok.encode("Hello", add_special_tokens=False)
    ids = tok.encode("world", add_special_tokens=False)  # the normalizer prepends '▁'

    assert tok.convert_ids_to_tokens(ids)[0].startswith("▁")
    assert tok.decode(ids) == "world"  # decoding the output alone drops the space
    assert stream_text(tok, prompt, ids) == " world"
    assert stream_text(tok, [], ids) == "world"  # no prompt: same as decode


def test_sentencepiece_space_kept_after_skipped_special_token() -> None:
    tok = byte_fallback_bpe()
    a = tok.encode("Hello", add_special_tokens=False)
    b = tok.encode("world", add_special_tokens=False)
    ids = a + [tok.eos_token_id, tok.bos_token_id] + b
    assert stream_text(tok, [], ids) == tok.decode(ids, skip_special_tokens=True) == "Hello world"


def test_sentencepiece_spaces_between_every_token() -> None:
    tok = byte_fallback_bpe()
    ids = tok.encode("a b  c   the quick   fox", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("x", add_special_tokens=False))
    assert "".join(s.text_delta for s in stream(detok, ids)) + detok.flush() == " a b  c   the quick   fox"


@pytest.mark.parametrize("make", [byte_level_bpe, byte_fallback_bpe], ids=["byte-level", "byte-fallback"])
def test_skip_special_tokens(make) -> None:
    tok = make()
    ids = tok.encode("Hi there", add_special_tokens=False) + [tok.eos_token_id]
    assert stream_text(tok, [], ids) == "Hi there"
    shown = stream_text(tok, [], ids, skip_special_tokens=False)
    assert shown == tok.decode(ids, skip_special_tokens=False)
    assert shown.endswith(tok.eos_token)


# ----------------------------------------------------------------------------- stop strings

PIECES = ["Hi", "\n", "\nUs", "er:", " more", "ed", "abc STOP def", "S", "TOP", "x", "User"]
HI, NL, NL_US, ER, MORE, ED, INLINE, S, TOP, X, USER = range(len(PIECES))


def fake_stream(ids: list[int], stop: list[str]) -> tuple[list[DetokenizerStep], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(FakeTokenizer(PIECES), [], stop=stop)
    steps = []
    for i in ids:
        steps.append(detok.step(i))
        if steps[-1].stop_matched:
            break
    return steps, detok


def test_stop_string_across_tokens_is_never_emitted() -> None:
    steps, detok = fake_stream([HI, NL, NL_US, ER, MORE], ["\n\nUser:"])
    assert [s.text_delta for s in steps] == ["Hi", "", "", ""]
    assert steps[-1].stop_matched == "\n\nUser:"
    assert detok.text == "Hi" and detok.finished and detok.stop_matched == "\n\nUser:"
    assert detok.flush() == ""
    with pytest.raises(RuntimeError):
        detok.step(X)


def test_held_text_released_when_it_is_not_a_stop() -> None:
    steps, detok = fake_stream([HI, NL, NL_US, ED, X], ["\n\nUser:"])
    assert [s.text_delta for s in steps] == ["Hi", "", "", "\n\nUsed", "x"]
    assert all(s.stop_matched is None for s in steps)
    assert detok.flush() == "" and detok.text == "Hi\n\nUsedx"


def test_flush_releases_a_possible_stop_prefix() -> None:
    steps, detok = fake_stream([HI, NL, NL_US], ["\n\nUser:"])
    assert [s.text_delta for s in steps] == ["Hi", "", ""]
    assert detok.flush() == "\n\nUs"
    assert detok.text == "Hi\n\nUs" and detok.stop_matched is None


def test_stop_inside_one_token_and_split_over_two() -> None:
    steps, detok = fake_stream([INLINE], ["STOP"])
    assert steps[-1] == DetokenizerStep("abc ", "STOP")
    steps, detok = fake_stream([X, S, TOP, X], ["STOP"])
    assert [s.text_delta for s in steps] == ["x", "", ""] and steps[-1].stop_matched == "STOP"
    assert detok.text == "x"


def test_first_completed_stop_wins_and_empty_stops_are_ignored() -> None:
    steps, detok = fake_stream([INLINE], ["def", "", "STOP", "c S"])
    assert steps[-1] == DetokenizerStep("ab", "c S")
    # "c STOP d" starts first but "TOP" completes first (both lie inside one delta).
    steps, detok = fake_stream([INLINE], ["c STOP d", "TOP"])
    assert steps[-1] == DetokenizerStep("abc S", "TOP")
    # Same end: the longer (earlier starting) stop is reported.
    steps, detok = fake_stream([INLINE], ["P", "STOP"])
    assert steps[-1] == DetokenizerStep("abc ", "STOP")
    steps, detok = fake_stream([HI, USER, ER], ["User", "User:"])
    assert steps[-1] == DetokenizerStep("", "User") and detok.text == "Hi"
    # A longer stop still pending does not delay a shorter one that completed.
    steps, detok = fake_stream([X, S, TOP], ["STOP!", "ST"])
    assert [s.text_delta for s in steps] == ["x", "", ""] and steps[-1].stop_matched == "ST"


def test_a_single_stop_string_is_not_split_into_characters() -> None:
    detok = IncrementalDetokenizer(FakeTokenizer(PIECES), [], stop="STOP")  # type: ignore[arg-type]
    assert detok.step(X) == DetokenizerStep("x")
    assert detok.step(S) == DetokenizerStep("")
    assert detok.step(TOP) == DetokenizerStep("", "STOP")


def test_stop_on_a_multibyte_character_split_over_tokens() -> None:
    tok = byte_level_bpe()
    ids = tok.encode("abc 日本語 xyz", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], stop=["本語"])
    steps = []
    for i in ids:
        steps.append(detok.step(i))
        if steps[-1].stop_matched:
            break
    assert steps[-1].stop_matched == "本語"
    assert detok.text == "abc 日"


def test_random_stop_strings_match_reference() -> None:
    """The stream equals the full text cut before the first stop to complete (read left to
    right, as if the text came one character at a time)."""
    rng = random.Random(7)
    for make in (byte_level_bpe, byte_fallback_bpe):
        tok = make()
        for _ in range(150):
            text = "".join(rng.choice(["a", "b", " ", "\n", "é", "日", "😀", "User:", "ab"]) for _ in range(30))
            ids = tok.encode(text, add_special_tokens=False)
            full = tok.decode(ids)
            stops = []
            for _ in range(rng.randrange(1, 3)):
                start = rng.randrange(len(full))
                stops.append(full[start : start + rng.randrange(1, 6)])
            if rng.random() < 0.3:
                stops.append("zz-never")
            detok = IncrementalDetokenizer(tok, [], stop=stops)
            out, matched = "", None
            for i in ids:
                step = detok.step(i)
                out += step.text_delta
                if step.stop_matched:
                    matched = step.stop_matched
                    break
            else:
                out += detok.flush()
            found = [(full.find(s) + len(s), full.find(s), s) for s in stops if s and full.find(s) != -1]
            if found:
                _, index, _ = min(found, key=lambda f: f[:2])
                assert out == full[:index] and matched is not None
                assert full[index:].startswith(matched)
            else:
                assert out == full and matched is None


# ----------------------------------------------------------------------------- cost per token


class SpyTokenizer:
    """Wraps a tokenizer and records the length of every decoded id list."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lengths: list[int] = []

    def decode(self, ids, **kwargs) -> str:
        self.lengths.append(len(ids))
        return self.inner.decode(ids, **kwargs)


@pytest.mark.parametrize("make", [byte_level_bpe, byte_fallback_bpe], ids=["byte-level", "byte-fallback"])
def test_decode_window_stays_small_on_long_outputs(make) -> None:
    tok = make()
    ids = tok.encode(" ".join(TEXTS) * 40, add_special_tokens=False)
    assert len(ids) > 2000
    spy = SpyTokenizer(tok)
    prompt = tok.encode("User: hi", add_special_tokens=False)
    detok = IncrementalDetokenizer(spy, prompt)
    for i in ids:
        detok.step(i)
    assert detok.text + detok.flush() == expected_continuation(tok, prompt, ids)
    assert max(spy.lengths) <= PROMPT_CONTEXT_TOKENS + 8
    assert len(spy.lengths) <= 2 * len(ids) + 3


def test_garbage_bytes_do_not_grow_the_window() -> None:
    tok = byte_fallback_bpe()
    spy = SpyTokenizer(tok)
    detok = IncrementalDetokenizer(spy, [])
    garbage = [byte_token_id(tok, 0x80)] * 500
    text = "".join(detok.step(i).text_delta for i in garbage) + detok.flush()
    assert text == "\ufffd" * 500 == tok.decode(garbage)
    assert max(spy.lengths) <= 2 * MAX_PENDING_TOKENS + 2
