"""Turn what the user typed as a model (alias, folder, .gguf, Hub id) into local files.

Resolution never downloads unless the user has network and has not set HF_HUB_OFFLINE, and an
unavailable model is one line saying what was looked for and how to fix it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from labs.errors import ModelNotFoundError
from labs.models.embedded import EMBEDDED_CHAT_MODELS, embedded_chat_model_file

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Files a causal LM needs; anything else in a Hub repo (other formats, images) is not downloaded.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken", "*.jinja"]


@dataclass(frozen=True)
class ModelSource:
    """Local files of a model, and the name it is served under."""

    name: str
    kind: Literal["folder", "gguf"]
    path: Path  # a Hugging Face folder, or the .gguf file
    origin: str  # how it was found, for --show-config and logs


def resolve_model(spec: str, aliases: Mapping[str, str] | None = None) -> ModelSource:
    """Resolve `spec` (after user aliases from [models]) to local model files."""
    target, followed = follow_aliases(spec, aliases)
    source = _resolve_target(target)
    return ModelSource(name=spec if followed else source.name, kind=source.kind, path=source.path, origin=source.origin)


def follow_aliases(spec: str, aliases: Mapping[str, str] | None, what: str = "model") -> tuple[str, bool]:
    """The spec an alias chain from [models] ends at, and whether any alias was followed."""
    aliases = aliases or {}
    seen: list[str] = []
    while spec in aliases:
        if spec in seen:
            raise ModelNotFoundError(f"{what} aliases form a cycle: {' -> '.join(seen + [spec])}; fix [models] in labs.toml")
        seen.append(spec)
        spec = aliases[spec]
    return spec, bool(seen)


def _resolve_target(spec: str) -> ModelSource:
    if spec in EMBEDDED_CHAT_MODELS:
        model = EMBEDDED_CHAT_MODELS[spec]
        return ModelSource(spec, "gguf", embedded_chat_model_file(spec), f"embedded: {model.description}")
    location, gguf_name = _split_gguf(spec)
    path = Path(location).expanduser()
    if path.exists():
        return _local(spec, path, gguf_name)
    if _looks_like_path(location):
        raise ModelNotFoundError(f"model path {path} does not exist: check the path, or set LABS_MODEL to an existing folder or .gguf file")
    if HUB_ID.match(location):
        return _from_hub(spec, location, gguf_name)
    raise ModelNotFoundError(
        f"model {spec!r} is neither a known alias, an existing path, nor a Hub id (org/name): "
        f"use an alias ({', '.join(EMBEDDED_CHAT_MODELS)} or one from [models] in labs.toml), a folder or a .gguf file"
    )


def _split_gguf(spec: str) -> tuple[str, str | None]:
    """`folder:file.gguf` or `org/repo:file.gguf` -> (location, file); a plain spec -> (spec, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail.lower().endswith(".gguf") and "/" not in tail and "\\" not in tail:
        return head, tail
    return spec, None


def _looks_like_path(location: str) -> bool:
    return location.startswith((".", "/", "~", "\\")) or location.lower().endswith(".gguf") or location.count("/") > 1 or os.sep != "/" and os.sep in location


def _local(spec: str, path: Path, gguf_name: str | None) -> ModelSource:
    name = path.stem if path.is_file() else path.name
    if gguf_name is not None:
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is not a folder, so {spec!r} cannot name a .gguf file inside it")
        file = path / gguf_name
        if not file.is_file():
            raise ModelNotFoundError(f"{file} does not exist: {_gguf_listing(path)}")
        return ModelSource(Path(gguf_name).stem, "gguf", file.resolve(), f"GGUF file {file.resolve()}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(f"{path} is a file but not a .gguf model: point at a Hugging Face model folder or a .gguf file")
        return ModelSource(name, "gguf", path.resolve(), f"GGUF file {path.resolve()}")
    if (path / "config.json").is_file():
        return ModelSource(name, "folder", path.resolve(), f"local folder {path.resolve()}")
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(ggufs[0].stem, "gguf", ggufs[0].resolve(), f"GGUF file {ggufs[0].resolve()}")
    if ggufs:
        raise ModelNotFoundError(f"{path} holds several .gguf files: pick one as {path}:FILE.gguf ({_gguf_listing(path)})")
    raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json) and holds no .gguf file")


def _gguf_listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.glob("*.gguf"))
    return f"it holds {', '.join(names)}" if names else "it holds no .gguf file"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _from_hub(spec: str, repo_id: str, gguf_name: str | None) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [gguf_name] if gguf_name else HUB_ALLOW_PATTERNS
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        origin = f"Hugging Face cache {folder}"
    except LocalEntryNotFoundError:
        if hub_offline():
            raise ModelNotFoundError(
                f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"download it where there is network (`hf download {repo_id}`), or set LABS_MODEL to a local folder or .gguf file"
            ) from None
        logger.info("downloading %s from the Hugging Face Hub", repo_id)
        try:
            folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
        except (HfHubHTTPError, OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelNotFoundError(
                f"model {repo_id!r} is not in the local Hugging Face cache and could not be downloaded ({first_line}): "
                "check the id and your network, or set LABS_MODEL to a local folder or .gguf file"
            ) from None
        origin = f"downloaded to {folder}"
    if gguf_name:
        file = folder / gguf_name
        if not file.is_file():
            raise ModelNotFoundError(f"{gguf_name} is not in the cached snapshot of {repo_id} ({folder})")
        return ModelSource(Path(gguf_name).stem, "gguf", file, origin)
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"the cached snapshot of {repo_id} ({folder}) has no config.json: download the full repository (`hf download {repo_id}`)")
    return ModelSource(spec, "folder", folder, origin)
