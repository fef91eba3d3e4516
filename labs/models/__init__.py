"""Finding and loading models: aliases, local folders, .gguf files, the Hugging Face cache."""

from labs.models.loader import LoadedModel, load_model
from labs.models.resolve import ModelSource, resolve_model

__all__ = ["LoadedModel", "ModelSource", "load_model", "resolve_model"]
