"""Who is calling: the API keys from the configuration, and the caller a presented key names.

Named keys (`[keys.NAME]` in labs.toml) carry limits, models and a priority; the keys of
LABS_API_KEY are unnamed callers ("-") without limits. Only SHA-256 digests are held; a presented
key is hashed once and compared with every digest in constant time, with no early exit, so the
time taken tells neither which key matched nor how much of one.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from labs.api.rate_limits import Limits
from labs.config.keys import UNNAMED, NamedKey, digest_of
from labs.errors import LabsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """A key's holder as requests see it: its name, limits, models (served ids; None: all) and priority."""

    name: str
    limits: Limits
    models: frozenset[str] | None = None
    priority: str = "interactive"

    def allows(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models


class Keyring:
    """The configured keys; empty when the server needs none."""

    def __init__(self, named: Iterable[NamedKey], unnamed: Iterable[str], resolve: Callable[[str], str]) -> None:
        """`named`: the [keys] tables; `unnamed`: the LABS_API_KEY keys; `resolve` gives the served id a model
        name stands for (aliases and spellings of one model)."""
        self._entries: list[tuple[bytes, Caller]] = [(key.digest, _caller(key, resolve)) for key in named]
        anyone = Caller(UNNAMED, Limits())
        self._entries += [(digest_of(secret), anyone) for secret in unnamed]
        self.callers: dict[str, Caller] = {caller.name: caller for _, caller in self._entries}

    def __bool__(self) -> bool:
        return bool(self._entries)

    def identify(self, presented: str) -> Caller | None:
        """The caller whose key this is, or None."""
        digest = digest_of(presented)
        found = None
        for stored, caller in self._entries:  # every digest is compared, whichever matches
            if hmac.compare_digest(digest, stored):
                found = caller
        return found


def _caller(key: NamedKey, resolve: Callable[[str], str]) -> Caller:
    limits = Limits(key.requests_per_minute, key.tokens_per_minute, key.max_concurrent)
    return Caller(key.name, limits, _served_ids(key, resolve), key.priority)


def _served_ids(key: NamedKey, resolve: Callable[[str], str]) -> frozenset[str] | None:
    """The names in the key's `models` and the served ids they stand for ("smol" and its folder's name)."""
    if key.models is None:
        return None
    ids = set(key.models)
    for name in key.models:
        try:
            ids.add(resolve(name))
        except LabsError:  # the embedding model, or an adapter loaded at run time: matched by its name
            logger.debug("[keys.%s] model %r is not a chat model offered at start-up", key.name, name)
    return frozenset(ids)
