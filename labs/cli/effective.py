"""The report behind `--show-config`: every value with its source, and what they resolve to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labs.config import KEYS, Settings
from labs.config.keys import NamedKey
from labs.errors import LabsError


def effective_config(settings: Settings) -> dict[str, Any]:
    from labs.models.device import dtype_name
    from labs.models.gguf_cache import converted_folder_for, is_converted
    from labs.models.loader import placement_from_settings
    from labs.models.recommended import recommended_sampling
    from labs.models.resolve import resolve_model

    rows = [
        {"key": key.dotted, "env": key.env, "value": _shown(settings.values[key.dotted], key.secret), "source": settings.sources[key.dotted]}
        for key in KEYS
    ]
    resolved: dict[str, str] = {}
    try:
        source = resolve_model(settings.generation.model_name, settings.model_aliases)
        resolved["model"] = f"{source.name} -> {source.path} ({source.origin})"
        folder = source.path
        if source.kind == "gguf":
            folder = converted_folder_for(source.path, settings.paths.cache_dir)
            state = "ready" if is_converted(folder) else "not yet converted (the first run converts it)"
            resolved["converted model folder"] = f"{folder} ({state})"
        _with_recommended(rows, settings, recommended_sampling(source, folder))
    except LabsError as error:
        resolved["model"] = f"unavailable: {error}"
    try:
        placement = placement_from_settings(settings)
        resolved["device"] = placement.device
        resolved["dtype"] = f"{dtype_name(placement.dtype)} ({placement.reason})"
        resolved["linear layers"] = "int8 (cpu_int8)" if placement.int8_linear else dtype_name(placement.dtype)
    except LabsError as error:
        resolved["device"] = f"unavailable: {error}"
    return {
        "config_file": str(settings.config_file) if settings.config_file else None,
        "settings": rows,
        "model_aliases": {
            alias: {"target": target, "source": settings.alias_sources[alias]} for alias, target in settings.model_aliases.items()
        } | {
            alias: {"target": f"LoRA adapter {entry.adapter} on {entry.base or settings.generation.model_name}",
                    "source": settings.alias_sources[alias]}
            for alias, entry in settings.adapter_aliases.items()
        },
        "api_keys": {name: _key_row(key) for name, key in settings.named_keys.items()},
        "resolved": resolved,
    }


def _key_row(key: NamedKey) -> dict[str, Any]:
    """A named key's limits and where its secret comes from: never the secret, nor its digest (a digest
    of a guessable key can be checked against guesses offline)."""
    return {"secret": key.secret_from, "requests_per_minute": key.requests_per_minute,
            "tokens_per_minute": key.tokens_per_minute, "max_concurrent": key.max_concurrent,
            "models": list(key.models) if key.models is not None else "all", "priority": key.priority,
            "source": key.source}


def _with_recommended(rows: list[dict[str, Any]], settings: Settings, recommended: dict[str, Any]) -> None:
    """Sampling values the configuration leaves at the built-in default take the model's recommendation."""
    from labs.serving.sampling import layered_default

    for row in rows:
        table, _, name = row["key"].partition(".")
        if table == "generation" and name in recommended:
            value, layer = layered_default(settings, name, recommended)
            if layer == "model":
                row["value"], row["source"] = value, "model (its recommended sampling)"


def _shown(value: Any, secret: bool = False) -> Any:
    if secret:
        if not value:
            return "<none>"
        return f"<{len(value)} set>" if isinstance(value, tuple) else "<set>"
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value
