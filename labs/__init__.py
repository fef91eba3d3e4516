"""labs: a local LLM inference server with an OpenAI-compatible API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labs")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
