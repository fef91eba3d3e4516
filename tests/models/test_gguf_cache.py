"""GGUF conversion: converted once, atomically, and reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labs.models import gguf_cache
from labs.models.embedded import embedded_chat_model_file


def test_converted_default_model_is_a_complete_folder(default_model_dir: Path) -> None:
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", gguf_cache.MARKER} <= names
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config


def test_second_call_reuses_the_cache_without_converting(labs_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_convert(*_: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_cache, "_convert", must_not_convert)
    folder = gguf_cache.ensure_converted(embedded_chat_model_file("smollm2-135m-instruct"), labs_cache_dir)
    assert gguf_cache.is_converted(folder)


def test_interrupted_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def half_written(_: Path, destination: Path) -> None:
        destination.mkdir(parents=True)
        (destination / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_convert", half_written)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.ensure_converted(gguf, tmp_path / "cache")
    assert list((tmp_path / "cache" / "converted").iterdir()) == []


def test_abandoned_temporaries_of_dead_processes_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    target = gguf_cache.converted_folder_for(gguf, tmp_path / "cache")
    target.parent.mkdir(parents=True)
    dead = target.parent / f".tmp-{target.name}-999999999-deadbeef"
    dead.mkdir()
    unmarked = target
    unmarked.mkdir()  # a folder without the marker is not trusted

    def fake_convert(_: Path, destination: Path) -> None:
        destination.mkdir(parents=True)
        (destination / gguf_cache.MARKER).write_text("{}")

    monkeypatch.setattr(gguf_cache, "_convert", fake_convert)
    assert gguf_cache.ensure_converted(gguf, tmp_path / "cache") == target
    assert not dead.exists() and gguf_cache.is_converted(target)


def test_a_changed_file_gets_a_new_cache_entry(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = gguf_cache.converted_folder_for(gguf, tmp_path)
    gguf.write_bytes(b"GGUF v2")
    assert gguf_cache.converted_folder_for(gguf, tmp_path) != first


def test_unreadable_gguf_is_a_clear_error(tmp_path: Path) -> None:
    from labs.errors import ModelLoadError

    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match=r"cannot read .*broken.gguf as a GGUF model"):
        gguf_cache.ensure_converted(gguf, tmp_path / "cache")
    assert not any((tmp_path / "cache" / "converted").iterdir())
