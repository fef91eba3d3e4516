"""The Dockerfile's instructions, read the way Docker reads them (continuation lines joined)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path


def instructions(path: Path) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last:]


def env(steps: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for op, args in steps:
        if op == "ENV":
            for part in shlex.split(args):
                key, _, value = part.partition("=")
                values[key] = value
    return values


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def healthcheck_command(steps: list[tuple[str, str]]) -> list[str]:
    (args,) = [args for op, args in steps if op == "HEALTHCHECK"]
    return exec_form(re.sub(r"^(--\S+\s+)*CMD\s+", "", args))
