"""The deployment files' tests read YAML, the Dockerfile and a live app's routes and /metrics: none
loads a model, so the session's converted model and native kernels (tests/conftest.py) are not made."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def labs_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("labs-cache")


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory):
    """The real app (every router, the metrics registry) in a TestClient; no model is loaded."""
    from fastapi.testclient import TestClient

    from labs.api.factory import create_app
    from labs.config import load_settings

    folder = tmp_path_factory.mktemp("deploy-app")
    (folder / "labs.toml").write_text("")
    settings = load_settings({}, environ={"LABS_CONFIG": str(folder / "labs.toml"), "LABS_HOME": str(folder / "home"),
                                          "LABS_CACHE_DIR": str(folder / "cache")}, cwd=folder)
    with TestClient(create_app(settings)) as client:
        yield client
