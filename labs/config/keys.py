"""Named API keys: `[keys.NAME]` tables in labs.toml, each with its secret and optional limits.

    [keys.alice]
    sha256 = "<hex SHA-256 of the key>"     # or: env = "ALICE_KEY" (the key itself, read at load)
    requests_per_minute = 60
    tokens_per_minute = 20000               # prompt + generated tokens
    max_concurrent = 4                      # requests in flight
    models = ["smollm2-135m-instruct"]      # absent: every model
    priority = "interactive"                # or "batch", "low"

Only the SHA-256 digest of a key is kept, whichever way it is given: the secret itself is never
stored, logged or shown. Mistakes are ConfigErrors naming the key, the field and the file.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.errors import ConfigError

PRIORITIES = ("interactive", "batch", "low")
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
FIELDS = ("sha256", "env", *LIMIT_FIELDS, "models", "priority")
UNNAMED = "-"  # how LABS_API_KEY keys are named in usage and metrics (no configured name can be "-")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class NamedKey:
    """One `[keys.NAME]` table: who, the digest of their secret, and their limits (None: no limit)."""

    name: str
    digest: bytes = field(repr=False)  # SHA-256 of the key
    source: str  # "file PATH": where the table is
    env: str | None = None  # the variable the key was read from; None when given as sha256
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    models: tuple[str, ...] | None = None
    priority: str = "interactive"

    @property
    def secret_from(self) -> str:
        """How the secret is given, for --show-config: "sha256" (its digest in the file) or "env VARIABLE"."""
        return f"env {self.env}" if self.env else "sha256"


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_keys(tables: Any, path: Path, environ: Mapping[str, str]) -> dict[str, NamedKey]:
    """The `[keys]` table of `path`: NAME -> NamedKey; secrets given by `env` are read from `environ`."""
    if not isinstance(tables, dict):
        raise ConfigError(f"'keys' in {path} must be a table of [keys.NAME] tables, got {tables!r}")
    keys = {name: _named_key(name, table, path, environ) for name, table in tables.items()}
    _check_distinct(keys.values(), path)
    return keys


def _named_key(name: str, table: Any, path: Path, environ: Mapping[str, str]) -> NamedKey:
    where = f"[keys.{name}] in {path}"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: a key's name is 1 to 64 letters, digits, '-' and '_', starting with a letter "
                          "or digit")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table with sha256 or env and optional limits, e.g. "
                          f'[keys.{name}] sha256 = "..." requests_per_minute = 60')
    unknown = sorted(set(table) - set(FIELDS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], FIELDS, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}: unknown field '{unknown[0]}'{hint}; "
                          f"a key has {', '.join(FIELDS)}")
    digest, variable = _secret(table, where, environ)
    limits = {name_: _limit(table[name_], name_, where) for name_ in LIMIT_FIELDS if name_ in table}
    return NamedKey(name, digest, f"file {path}", variable, **limits, models=_models(table.get("models"), where),
                    priority=_priority(table.get("priority", "interactive"), where))


def _secret(table: dict[str, Any], where: str, environ: Mapping[str, str]) -> tuple[bytes, str | None]:
    """The digest of the key, and the variable it was read from (None: given as its digest)."""
    if ("sha256" in table) == ("env" in table):
        raise ConfigError(f"{where}: give the key's secret exactly once, as sha256 = \"<hex SHA-256 of the key>\" "
                          "(printf %s KEY | sha256sum) or as env = \"VARIABLE\" (a variable holding the key)")
    if "sha256" in table:
        value = table["sha256"]
        if not isinstance(value, str) or not _HEX_DIGEST.match(value.strip()):
            got = f"{len(value)} characters" if isinstance(value, str) else f"a {type(value).__name__}"
            raise ConfigError(f"{where}: sha256 must be 64 hexadecimal digits, the SHA-256 of the key "
                              f"(printf %s KEY | sha256sum), got {got}")
        return bytes.fromhex(value.strip()), None
    variable = table["env"]
    if not isinstance(variable, str) or not variable.strip():
        raise ConfigError(f"{where}: env must name an environment variable that holds the key, got {variable!r}")
    variable = variable.strip()
    secret = environ.get(variable)
    if secret is None or not secret.strip():
        state = "is not set" if secret is None else "is empty"
        raise ConfigError(f"{where}: env = \"{variable}\", but the variable {variable} {state} (in the environment "
                          "or .env): set it to the key")
    return digest_of(secret.strip()), variable


def _limit(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {name} must be a whole number, got {value!r}")
    if value < 1:
        raise ConfigError(f"{where}: {name} must be >= 1, got {value} (leave it out for no limit)")
    return value


def _models(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ConfigError(f"{where}: models must be a list of model ids, e.g. models = [\"smollm2-135m-instruct\"], "
                          f"got {value!r}")
    if not value:
        raise ConfigError(f"{where}: models must name at least one model (leave it out for every model)")
    return tuple(item.strip() for item in value)


def _priority(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in PRIORITIES:
        raise ConfigError(f"{where}: priority must be one of {', '.join(PRIORITIES)}, got {value!r}")
    return value.strip().lower()


def _check_distinct(keys: Any, path: Path) -> None:
    seen: dict[bytes, str] = {}
    for key in keys:
        if key.digest in seen:
            raise ConfigError(f"[keys.{seen[key.digest]}] and [keys.{key.name}] in {path} have the same secret: "
                              "each name needs its own key")
        seen[key.digest] = key.name


def check_unnamed_keys(named: Mapping[str, NamedKey], unnamed: tuple[str, ...], source: str) -> None:
    """A LABS_API_KEY key that is also a named key would leave which limits apply undecided."""
    digests = {key.digest: key.name for key in named.values()}
    for secret in unnamed:
        name = digests.get(digest_of(secret))
        if name is not None:
            raise ConfigError(f"a key in server.api_keys ({source}) is also [keys.{name}]'s key: keep it in one place")
