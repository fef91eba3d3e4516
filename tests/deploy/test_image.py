"""The image, built from a fresh clone and checked in a real Docker daemon (scripts/check_image.sh).

Slow (a build, a model load, a drained stop): runs only with LABS_TEST_DOCKER=1 and a reachable
Docker daemon. CI does not build images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT


def _docker_unavailable() -> str | None:
    if os.environ.get("LABS_TEST_DOCKER") != "1":
        return "set LABS_TEST_DOCKER=1 to build and check the image (slow; needs a Docker daemon)"
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "the Docker daemon is not reachable"
    return None


@pytest.mark.skipif(_docker_unavailable() is not None, reason=_docker_unavailable() or "")
@pytest.mark.timeout(3600)
def test_the_image_answers_offline_as_non_root_and_stops_after_draining(tmp_path: Path) -> None:
    results = tmp_path / "check_image.json"
    run = subprocess.run([str(ROOT / "scripts" / "check_image.sh")], env={**os.environ, "RESULTS": str(results)},
                         capture_output=True, text=True, timeout=3500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    values = json.loads(results.read_text())
    assert "Paris" in values["chat_answer"] and values["embedding_dimensions"] == "384"
    assert values["exit_code"] == "0" and '"completion_tokens": 200' in values["inflight_usage"]
    assert "0" not in values["process_uids"].split()
