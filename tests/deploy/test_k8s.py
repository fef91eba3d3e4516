"""The Kubernetes manifests: a kustomize base and cpu/gpu overlays that agree with the app and the image."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from labs.config import load_settings
from labs.config.schema import KEYS_BY_ENV
from tests.deploy.conftest import ROOT
from tests.deploy.dockerfile import env, final_stage

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _base_deployment() -> dict:
    (deployment,) = _documents(BASE / "deployment.yaml")
    return deployment


def test_every_manifest_parses_and_names_its_kind() -> None:
    # not Kubernetes objects: checkov's settings and prometheus-adapter's Helm values
    paths = sorted(p for p in K8S.rglob("*.yaml") if p.name not in (".checkov.yaml", "prometheus-adapter-rules.yaml"))
    assert len(paths) >= 12
    for path in paths:
        for doc in _documents(path):
            assert "apiVersion" in doc and "kind" in doc, path


def test_the_kustomizations_list_files_that_exist() -> None:
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for resource in kustomization.get("resources", []):
            assert (path.parent / resource).exists(), (path, resource)
        for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
            for name in generator.get("files", []) + generator.get("envs", []):
                assert (path.parent / name).exists(), (path, name)
        for patch in kustomization.get("patches", []):
            assert "patch" in patch or (path.parent / patch["path"]).exists()


def test_probes_point_at_routes_the_app_has(live_app) -> None:
    container = _container(_base_deployment())
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert live_app.get("/health").status_code == 200
    assert live_app.get("/ready").status_code == 503  # the route exists; no model is loaded here
    assert live_app.get("/no-such-route").status_code == 404


def test_the_port_is_the_images() -> None:
    image_env = env(final_stage(ROOT / "Dockerfile"))
    container = _container(_base_deployment())
    (port,) = container["ports"]
    assert port["containerPort"] == int(image_env["LABS_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    (service,) = _documents(BASE / "service.yaml")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_the_grace_period_outlasts_the_drain() -> None:
    spec = _base_deployment()["spec"]["template"]["spec"]
    config = tomllib.loads((BASE / "labs.toml").read_text())
    pause = int(_container(_base_deployment())["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > config["server"]["shutdown_timeout"] + pause


def test_the_config_map_and_the_secret_hold_settings_labs_knows(tmp_path: Path) -> None:
    settings = load_settings({}, environ={"LABS_CONFIG": str(BASE / "labs.toml"), "LABS_HOME": str(tmp_path)}, cwd=tmp_path)
    assert settings.server.preload_on_start is True
    keys = [line.split("=", 1)[0] for line in (BASE / "api-keys.env").read_text().splitlines()
            if line and not line.startswith("#")]
    assert keys == ["LABS_API_KEY"]
    container = _container(_base_deployment())
    names = [item["name"] for item in container["env"]]
    assert set(name for name in names if name.startswith("LABS_")) <= set(KEYS_BY_ENV)
    # the Deployment's environment over the ConfigMap's labs.toml, as the pod reads them
    labs_env = {item["name"]: item["value"] for item in container["env"] if item["name"].startswith("LABS_")}
    pod = load_settings({}, environ={**labs_env, "LABS_CONFIG": str(BASE / "labs.toml"), "LABS_API_KEY": ""}, cwd=tmp_path)
    assert pod.server.preload_on_start is True and str(pod.paths.cache_dir) == "/data/cache"
    assert {"name": "LABS_CONFIG", "value": "/etc/labs/labs.toml"} in container["env"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["config"] == "/etc/labs"
    # every value labs writes lives on a mounted volume (the root filesystem is read-only)
    values = {item["name"]: item["value"] for item in container["env"]}
    for name in ("LABS_HOME", "LABS_CACHE_DIR", "HF_HOME", "HOME"):
        assert any(values[name].startswith(path) for path in mounts.values()), name


def test_security_context() -> None:
    spec = _base_deployment()["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    context = _container(_base_deployment())["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def test_the_gpu_overlay_asks_for_a_gpu_node() -> None:
    (patch,) = _documents(K8S / "overlays" / "gpu" / "gpu.yaml")
    spec = patch["spec"]["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["nodeSelector"]


def _render(overlay: str) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_renders_the_overlay(overlay: str) -> None:
    documents = _render(overlay)
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"Namespace", "NetworkPolicy", "ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "Deployment",
                           "PodDisruptionBudget"}
    deployment = kinds["Deployment"]
    container = _container(deployment)
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]  # the hashed name
    assert container["envFrom"][0]["secretRef"]["name"] == kinds["Secret"]["metadata"]["name"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector == kinds["Service"]["spec"]["selector"] == kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == 1) == (overlay == "gpu")
    assert container["image"].endswith("-cuda") == (overlay == "gpu")
