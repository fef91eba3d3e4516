"""Configuration: one schema of keys, layered from defaults, labs.toml, environment and flags."""

from labs.config.loader import CliValue, Settings, export_dotenv, load_settings
from labs.config.schema import DEFAULT_MODEL_ALIAS, KEYS, Key

__all__ = ["CliValue", "DEFAULT_MODEL_ALIAS", "KEYS", "Key", "Settings", "export_dotenv", "load_settings"]
