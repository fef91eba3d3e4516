"""The KubeRay RayService manifest agrees with labs: its Serve application exists and its settings are known keys."""

from __future__ import annotations

import importlib
import tomllib

import pytest
import yaml

from labs.config import load_settings
from labs.config.schema import KEYS_BY_ENV
from tests.deploy.conftest import ROOT

MANIFEST = ROOT / "deploy" / "k8s" / "ray" / "rayservice.yaml"


def _service() -> dict:
    (service,) = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    return service


def _containers(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    return [container for template in templates for container in template["spec"]["containers"]]


def test_the_serve_application_imports_a_builder_labs_has() -> None:
    service = _service()
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    (application,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert application["route_prefix"] == "/"
    module, name = application["import_path"].split(":")
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the `ray` extra, in the dev group)")
    assert callable(getattr(importlib.import_module(module), name))


def test_the_pods_run_one_ray_version_and_labs_settings_that_load(tmp_path) -> None:
    service = _service()
    cluster = service["spec"]["rayClusterConfig"]
    images = {container["image"] for container in _containers(service)}
    assert len(images) == 1, "head and workers must run the same Ray and labs"
    (locked,) = [package["version"] for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]
                 if package["name"] == "ray"]
    assert cluster["rayVersion"] == locked  # the image's Ray (from the lock) is the one KubeRay expects
    for container in _containers(service):
        env = {item["name"]: item["value"] for item in container["env"]}
        labs_names = [name for name in env if name.startswith("LABS_")]
        assert labs_names and all(name in KEYS_BY_ENV for name in labs_names), labs_names
        settings = load_settings({}, environ=env, cwd=tmp_path)
        assert settings.ray.min_replicas <= settings.ray.replicas <= settings.ray.max_replicas
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (workers,) = cluster["workerGroupSpecs"]
    cpus_per_pod = float(workers["rayStartParams"]["num-cpus"])
    assert cpus_per_pod >= settings.ray.replica_cpus  # a worker pod holds at least one replica
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
