"""The OpenAI-compatible HTTP API (transport only: the engine knows nothing of HTTP).

`uvicorn labs.api:app` builds the app (labs.api.factory.create_app) from the configuration on first access; `labs-api` and
`python -m labs.api` do the same with flags, logging and graceful shutdown set up.
"""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    if name == "app":
        global _app
        if _app is None:
            from labs.api.factory import create_app

            _app = create_app()
        return _app
    raise AttributeError(f"module 'labs.api' has no attribute {name!r}")
