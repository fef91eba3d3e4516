"""Finding and loading models: aliases, local folders, .gguf files, the Hugging Face cache."""

from typing import Any

from labs.models.resolve import ModelSource, resolve_model

__all__ = ["LoadedModel", "ModelSource", "load_model", "resolve_model"]


def __getattr__(name: str) -> Any:
    """The loader (torch, transformers) is imported on first use, not with the package: finding a
    model, or answering from the user's data, never waits for it."""
    if name in ("LoadedModel", "load_model"):
        from labs.models import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
