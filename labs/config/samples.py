"""Render the sample `labs.toml` and `.env.example` from the key schema (so they cannot drift).

Regenerate with `uv run python -m labs.config.samples`; a test checks the committed files match.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from labs.config.schema import KEYS

TOML_HEADER = """\
# labs configuration. Precedence: built-in defaults < this file < LABS_* environment
# variables (and .env) < command-line flags. Every key below is shown with its default,
# commented out: uncomment to change it. `labs-gen --show-config` prints the effective values
# and where each came from. Unknown keys are errors.
"""

TOML_MODELS = """\
[models]
# Aliases: a name -> a local Hugging Face folder, a .gguf file (path or folder:file.gguf),
# or a Hub id already in the local Hugging Face cache. The embedded default is
# "smollm2-135m-instruct". --model and LABS_MODEL accept any alias.
# my-qwen = "/models/Qwen2.5-0.5B-Instruct"
# tiny-gguf = "/models/gguf:tinyllama.Q4_K_M.gguf"
# A LoRA adapter (a PEFT folder) served on a base model, as its own model id; requests for
# adapters of one base share its engine and its batches. base defaults to the default model.
# support-tone = { base = "smollm2-135m-instruct", adapter = "/adapters/support-tone" }
"""

TOML_KEYS = """\
# Named API keys, each with its own limits: one [keys.NAME] table per key (NAME: letters, digits,
# - and _). Clients send the key as 'Authorization: Bearer KEY' (or 'x-api-key: KEY'). Give the
# secret as its SHA-256 (printf %s KEY | sha256sum) or as env = "VARIABLE" holding the key. Every
# limit is optional (absent: none); over one, requests get 429 with Retry-After. Keys in
# LABS_API_KEY keep working, without limits. With any key configured, every request needs one.
# [keys.alice]
#   sha256 = "<the 64 hex digits printf %s KEY | sha256sum prints>"
#   requests_per_minute = 60       # requests started (bursts up to this many, then limit/60 a second)
#   tokens_per_minute = 20000      # prompt + generated tokens
#   max_concurrent = 4             # requests in flight at once
#   models = ["smollm2-135m-instruct"]  # the models this key may use (absent: all)
#   priority = "interactive"       # or "batch" / "low"
# [keys.nightly-jobs]
#   env = "NIGHTLY_JOBS_KEY"
#   priority = "batch"
"""

ENV_HEADER = """\
# Environment overrides for labs (copy to .env; real environment variables win over .env).
# Only uncommented lines take effect. See labs.toml for what each key does.
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return '""'
    return f'"{_home_relative(value)}"'


def _home_relative(value: Any) -> str:
    text = str(value)
    home = str(Path.home())
    return "~" + text[len(home):] if isinstance(value, Path) and text.startswith(home) else text


def render_toml() -> str:
    lines = [TOML_HEADER]
    table = None
    for key in KEYS:
        if not key.toml:
            continue
        if key.table != table:
            table = key.table
            lines.append(f"[{table}]")
        lines.extend(f"# {line}" for line in textwrap.wrap(key.help, 96))
        lines.append(f"# env {key.env}" + (f", flag {key.flag}" if key.flag else ""))
        lines.append(f"# {key.name} = {_toml_value(key.default)}")
        lines.append("")
    return "\n".join(lines) + "\n" + TOML_MODELS + "\n" + TOML_KEYS


def render_env() -> str:
    lines = [ENV_HEADER]
    table = None
    for key in KEYS:
        if key.table != table:
            if table is not None:
                lines.append("")
            table = key.table
            lines.append(f"# [{table}]")
        if isinstance(key.default, (list, tuple)):
            value = ",".join(key.default)
        else:
            value = "" if key.default is None else _toml_value(key.default).strip('"')
        lines.append(f"# {key.env}={value}    # {key.help.split('. ')[0].rstrip('.')}")
    return "\n".join(lines) + "\n"


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    (root / "labs.toml").write_text(render_toml())
    (root / ".env.example").write_text(render_env())


if __name__ == "__main__":
    main()
