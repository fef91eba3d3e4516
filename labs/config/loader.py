"""Layered settings: built-in defaults < labs.toml < environment (and .env) < CLI flags.

Every value remembers where it came from, so `--show-config` can say it and an error can point
at the file, variable or flag to fix. Bad values are errors, never silent fallbacks.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

from dotenv import dotenv_values

from labs.config.keys import NamedKey, check_unnamed_keys, parse_keys
from labs.config.schema import KEYS, KEYS_BY_DOTTED, KEYS_BY_ENV, TABLES, Key, ValueProblem
from labs.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_FILE_NAME = "labs.toml"
DOTENV_FILE_NAME = ".env"


@dataclass(frozen=True)
class CliValue:
    """A value given on the command line, with the flag that gave it (for messages)."""

    value: Any
    flag: str


@dataclass(frozen=True)
class AdapterAlias:
    """A `[models]` entry naming a LoRA adapter folder on a base model (None: the default model)."""

    adapter: Path
    base: str | None = None


@dataclass
class Settings:
    """Effective configuration: values by dotted key, where each came from, model aliases and named API keys."""

    values: dict[str, Any]
    sources: dict[str, str]
    model_aliases: dict[str, str] = field(default_factory=dict)
    alias_sources: dict[str, str] = field(default_factory=dict)
    config_file: Path | None = None
    adapter_aliases: dict[str, AdapterAlias] = field(default_factory=dict)
    named_keys: dict[str, NamedKey] = field(default_factory=dict)

    def __getattr__(self, table: str) -> SimpleNamespace:
        """`settings.generation.temperature` reads `values["generation.temperature"]`."""
        if table not in TABLES or table in ("models", "keys"):
            raise AttributeError(table)
        prefix = f"{table}."
        return SimpleNamespace(**{k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)})

    def with_overrides(self, overrides: Mapping[str, CliValue]) -> "Settings":
        """A copy with more CLI-level values applied (validated like the rest)."""
        values, sources = dict(self.values), dict(self.sources)
        for dotted, given in overrides.items():
            key = KEYS_BY_DOTTED[dotted]
            values[dotted] = _parse(key, given.value, f"flag {given.flag}")
            sources[dotted] = f"flag {given.flag}"
        result = Settings(values, sources, dict(self.model_aliases), dict(self.alias_sources), self.config_file,
                          dict(self.adapter_aliases), dict(self.named_keys))
        _check_combinations(result)
        return result


def load_settings(
    cli: Mapping[str, CliValue] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build the effective settings. Raises ConfigError naming the key and its source."""
    cli = dict(cli or {})
    unknown = [dotted for dotted in cli if dotted not in KEYS_BY_DOTTED]
    if unknown:
        raise ValueError(f"unknown setting(s) passed by the CLI: {unknown}")  # a bug, not user input
    cwd = cwd or Path.cwd()
    env, env_sources = _environment(dict(os.environ if environ is None else environ), cwd)

    values: dict[str, Any] = {key.dotted: key.default for key in KEYS}
    sources: dict[str, str] = {key.dotted: "default" for key in KEYS}

    def apply_env_and_cli(key: Key) -> None:
        if key.env in env:
            values[key.dotted] = _parse(key, env[key.env], env_sources[key.env])
            sources[key.dotted] = env_sources[key.env]
        if key.dotted in cli:
            given = cli[key.dotted]
            values[key.dotted] = _parse(key, given.value, f"flag {given.flag}")
            sources[key.dotted] = f"flag {given.flag}"

    # Where labs.toml lives is decided before reading it.
    for dotted in ("paths.home", "paths.config"):
        apply_env_and_cli(KEYS_BY_DOTTED[dotted])
    config_file = _find_config_file(values["paths.config"], sources["paths.config"], cwd, values["paths.home"])

    aliases: dict[str, str] = {}
    alias_sources: dict[str, str] = {}
    adapters: dict[str, AdapterAlias] = {}
    named_keys: dict[str, NamedKey] = {}
    if config_file is not None:
        document = _read_toml(config_file)
        origin = f"file {config_file}"
        for dotted, raw in _flatten(document, config_file).items():
            key = KEYS_BY_DOTTED[dotted]
            values[dotted] = _parse(key, raw, origin)
            sources[dotted] = origin
        for alias, target in document.get("models", {}).items():
            if isinstance(target, dict):
                adapters[alias] = _adapter_alias(alias, target, config_file)
            else:
                aliases[alias] = _alias_target(alias, target, config_file)
            alias_sources[alias] = origin
        named_keys = parse_keys(document.get("keys", {}), config_file, env)

    for key in KEYS:
        if key.dotted not in ("paths.home", "paths.config"):
            apply_env_and_cli(key)

    secret_variables = {key.env for key in named_keys.values()}  # named by [keys], not unknown settings
    _warn_unknown_env({name: value for name, value in env.items() if name not in secret_variables}, env_sources)
    settings = Settings(values, sources, aliases, alias_sources, config_file, adapters, named_keys)
    _check_combinations(settings)
    return settings


def _environment(environ: dict[str, str], cwd: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The process environment plus ./.env entries it does not already define."""
    env_sources = {name: f"env {name}" for name in environ}
    dotenv_path = cwd / DOTENV_FILE_NAME
    if dotenv_path.is_file():
        for name, value in dotenv_values(dotenv_path).items():
            if name not in environ and value is not None:
                environ[name] = value
                env_sources[name] = f"{name} in {dotenv_path}"
    return environ, env_sources


def export_dotenv(cwd: Path | None = None) -> None:
    """Put ./.env entries the environment lacks into os.environ (e.g. HF_TOKEN, HF_HUB_OFFLINE).

    Called by the command-line entry points only, so that libraries keep no hidden side effect.
    """
    dotenv_path = (cwd or Path.cwd()) / DOTENV_FILE_NAME
    if dotenv_path.is_file():
        for name, value in dotenv_values(dotenv_path).items():
            if value is not None:
                os.environ.setdefault(name, value)


def _parse(key: Key, raw: Any, origin: str) -> Any:
    try:
        return key.parse(raw)
    except ValueProblem as problem:
        raise ConfigError(f"{_label(key, origin)} = {raw!r} ({origin}): {problem}") from None


def _label(key: Key, origin: str) -> str:
    if origin.startswith("flag "):
        return origin.removeprefix("flag ")
    if origin.startswith("file "):
        return key.dotted
    return key.env


def _find_config_file(explicit: Path | None, explicit_source: str, cwd: Path, home: Path) -> Path | None:
    if explicit is not None:
        path = explicit if explicit.is_absolute() else cwd / explicit
        if not path.is_file():
            raise ConfigError(f"config file {path} not found ({explicit_source}): create it or point LABS_CONFIG at an existing labs.toml")
        return path
    for candidate in (cwd / CONFIG_FILE_NAME, home / CONFIG_FILE_NAME):
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None


def _flatten(document: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check tables and keys against the schema; return {dotted: raw value}."""
    flat: dict[str, Any] = {}
    settable = {key.dotted for key in KEYS if key.toml}
    for table, content in document.items():
        if table not in TABLES:
            raise ConfigError(f"unknown table [{table}] in {path}{_did_you_mean(table, TABLES)}; known tables: {', '.join(TABLES)}")
        if not isinstance(content, dict):
            raise ConfigError(f"'{table}' in {path} must be a table ([{table}]), got {content!r}")
        if table in ("models", "keys"):  # free-form tables, read apart
            continue
        for name, raw in content.items():
            dotted = f"{table}.{name}"
            if dotted not in settable:
                table_keys = [d.split(".", 1)[1] for d in settable if d.startswith(f"{table}.")]
                hint = _did_you_mean(name, table_keys)
                elsewhere = [d for d in settable if d.endswith(f".{name}")]
                if not hint and elsewhere:
                    hint = f" (did you mean [{elsewhere[0].split('.')[0]}] {name}?)"
                if dotted in KEYS_BY_DOTTED:
                    hint = f" ({KEYS_BY_DOTTED[dotted].env} can only be set in the environment)"
                raise ConfigError(f"unknown key '{name}' in [{table}] of {path}{hint}")
            flat[dotted] = raw
    return flat


def _alias_target(alias: str, target: Any, path: Path) -> str:
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(
            f"[models] {alias} = {target!r} in {path}: expected a string naming a local folder, "
            "a .gguf file or a cached Hub id"
        )
    return target.strip()


def _adapter_alias(alias: str, table: dict[str, Any], path: Path) -> AdapterAlias:
    example = f'[models] {alias} = {{ base = "smollm2-135m-instruct", adapter = "/adapters/{alias}" }}'
    unknown = sorted(set(table) - {"base", "adapter"})
    if unknown:
        raise ConfigError(f"[models] {alias} in {path}: unknown key {unknown[0]!r}{_did_you_mean(unknown[0], ('base', 'adapter'))}; "
                          f"an adapter entry has 'adapter' (its folder) and optionally 'base', e.g. {example}")
    adapter, base = table.get("adapter"), table.get("base")
    if not isinstance(adapter, str) or not adapter.strip():
        raise ConfigError(f"[models] {alias} in {path}: 'adapter' must name a PEFT LoRA adapter folder, e.g. {example}")
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise ConfigError(f"[models] {alias} in {path}: 'base' must name a model (an alias, folder or .gguf), e.g. {example}")
    return AdapterAlias(Path(adapter.strip()).expanduser(), base.strip() if base else None)


def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _warn_unknown_env(env: Mapping[str, str], env_sources: Mapping[str, str]) -> None:
    for name in env:
        if name.startswith("LABS_") and name not in KEYS_BY_ENV:
            logger.warning("ignoring unknown setting %s (%s)%s", name, env_sources[name], _did_you_mean(name, KEYS_BY_ENV))


def _check_combinations(settings: Settings) -> None:
    values, sources = settings.values, settings.sources
    if values["quantization.load_in_4bit"] and values["quantization.load_in_8bit"]:
        raise ConfigError(
            "load_in_4bit and load_in_8bit are both on "
            f"({sources['quantization.load_in_4bit']}; {sources['quantization.load_in_8bit']}): choose one"
        )
    check_unnamed_keys(settings.named_keys, values["server.api_keys"], sources["server.api_keys"])
