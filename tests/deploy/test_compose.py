"""compose.yaml: labs-api with Qdrant, Prometheus and Grafana, and an optional GPU profile."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from labs.config import load_settings
from labs.config.schema import KEYS_BY_ENV
from tests.deploy.conftest import ROOT
from tests.deploy.dockerfile import env, final_stage

COMPOSE = ROOT / "compose.yaml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_services() -> None:
    services = _compose()["services"]
    assert {"labs-api", "labs-api-gpu", "qdrant", "prometheus", "grafana"} <= set(services)
    assert "profiles" not in services["labs-api"]
    assert services["labs-api-gpu"]["profiles"] == ["gpu"]
    (device,) = services["labs-api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_labs_uses_the_qdrant_service_and_valid_settings(tmp_path) -> None:
    services = _compose()["services"]
    for name in ("labs-api", "labs-api-gpu"):
        environment = services[name]["environment"]
        assert environment["LABS_QDRANT_URL"] == "http://qdrant:6333"
        assert set(environment) <= set(KEYS_BY_ENV), set(environment) - set(KEYS_BY_ENV)
        assert "qdrant" in services[name]["depends_on"]
        # as compose passes them with LABS_API_KEY unset in the shell: ${LABS_API_KEY:-} is empty
        values = {key: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value)) for key, value in environment.items()}
        settings = load_settings({}, environ={**values, "LABS_HOME": str(tmp_path)}, cwd=tmp_path)
        assert settings.rag.qdrant_url == "http://qdrant:6333" and settings.server.api_keys == ()
        assert settings.server.preload_on_start is True


def test_labs_keeps_its_data_and_caches_on_volumes() -> None:
    compose = _compose()
    values = env(final_stage(ROOT / "Dockerfile"))
    for name in ("labs-api", "labs-api-gpu"):
        targets = {mount.split(":")[1] for mount in compose["services"][name]["volumes"]}
        assert {values["LABS_HOME"], values["HF_HOME"]} <= targets
    for service in compose["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in compose["volumes"], source


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("profile", ["", "gpu"])
def test_docker_compose_accepts_the_file(profile: str) -> None:
    command = ["docker-compose", "-f", str(COMPOSE)] + (["--profile", profile] if profile else []) + ["config", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
