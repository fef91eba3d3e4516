"""Errors the user can act on.

Every error raised to the user carries what was wrong and how to fix it, in one line, so the CLI
can print it without a traceback and the API can put it in an error body.
"""

from __future__ import annotations


class LabsError(Exception):
    """Base of all errors meant for the user (not bugs)."""

    exit_code = 1


class ConfigError(LabsError):
    """A configuration value is missing, malformed or contradicts another one."""

    exit_code = 2


class ModelNotFoundError(LabsError):
    """A model id could not be resolved to local files."""

    exit_code = 2


class ModelLoadError(LabsError):
    """Model files were found but could not be loaded (corrupt, unsupported, missing extra)."""

    exit_code = 1
