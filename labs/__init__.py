"""labs: a local LLM inference server with an OpenAI-compatible API."""

from typing import Any


def __getattr__(name: str) -> Any:
    """`labs.__version__`, read from the installed package's metadata when asked for (importing
    importlib.metadata costs ~30 ms that every command would otherwise pay at start-up)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("labs")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0.0.0"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
