"""The Dockerfile agrees with the app: port, host, health route, user, volumes, commands, stop timeout."""

from __future__ import annotations

import re
import tomllib

import yaml

from labs.config.schema import KEYS_BY_DOTTED
from tests.deploy.conftest import ROOT
from tests.deploy.dockerfile import env, exec_form, final_stage, healthcheck_command, instructions

DOCKERFILE = ROOT / "Dockerfile"


def test_the_image_listens_on_all_interfaces_at_the_app_port() -> None:
    steps = final_stage(DOCKERFILE)
    values = env(steps)
    assert values["LABS_HOST"] == "0.0.0.0"
    assert values["LABS_PORT"] == str(KEYS_BY_DOTTED["server.port"].default)
    assert [args for op, args in steps if op == "EXPOSE"] == [values["LABS_PORT"]]


def test_the_healthcheck_asks_the_health_route_on_that_port(live_app) -> None:
    steps = final_stage(DOCKERFILE)
    command = " ".join(healthcheck_command(steps))
    assert "/health" in command and "LABS_PORT" in command and "'8000'" in command
    assert live_app.get("/health").json() == {"status": "ok"}


def test_it_runs_labs_api_as_a_non_root_user_under_an_init() -> None:
    steps = final_stage(DOCKERFILE)
    (user,) = [args for op, args in steps if op == "USER"]
    assert user not in ("root", "0")
    (entrypoint,) = [exec_form(args) for op, args in steps if op == "ENTRYPOINT"]
    (cmd,) = [exec_form(args) for op, args in steps if op == "CMD"]
    assert entrypoint == ["tini", "-e", "143", "--"] and cmd == ["labs-api"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"labs-api", "labs-gen"} <= set(scripts)
    assert [args for op, args in steps if op == "STOPSIGNAL"] == ["SIGTERM"]


def test_labs_home_the_cache_and_the_hugging_face_cache_are_volumes() -> None:
    steps = final_stage(DOCKERFILE)
    values = env(steps)
    (volumes,) = [exec_form(args) for op, args in steps if op == "VOLUME"]
    for variable in ("LABS_HOME", "LABS_CACHE_DIR", "HF_HOME"):
        assert any(values[variable] == volume or values[variable].startswith(volume + "/") for volume in volumes), variable
    # the original docs' mount: -v $HOME/.cache/huggingface:/root/.cache/huggingface
    assert values["HF_HOME"] == "/root/.cache/huggingface"


def test_the_stop_timeout_outlasts_the_drain() -> None:
    drain = KEYS_BY_DOTTED["server.shutdown_timeout"].default
    text = DOCKERFILE.read_text()
    (documented,) = set(re.findall(r"--stop-timeout (\d+)", text))
    assert int(documented) > drain
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for service in ("labs-api", "labs-api-gpu"):
        grace = compose["services"][service]["stop_grace_period"]
        assert int(grace.rstrip("s")) > int(compose["services"][service]["environment"]["LABS_SHUTDOWN_TIMEOUT"])
    assert int(re.search(r"--stop-timeout (\d+)", (ROOT / "scripts/check_image.sh").read_text()).group(1)) > drain


def test_the_base_image_is_a_build_argument_and_uv_installs_from_the_lock() -> None:
    steps = instructions(DOCKERFILE)
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert ("FROM", "${BASE_IMAGE} AS base") in steps
    sync = (ROOT / "deploy/docker/uv-sync.sh").read_text()
    assert sync.count("sync --frozen") == 2 and "--no-dev" in sync


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for op, args in instructions(DOCKERFILE):
        if op == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source
