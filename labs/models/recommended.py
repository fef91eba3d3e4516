"""The sampling a model's authors recommend: a layer of defaults under labs.toml (see labs.serving.sampling).

From the values written in its generation_config.json (not transformers' own defaults), or, for
a model embedded in a PyPI package, from its model card.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from labs.models.embedded import EMBEDDED_CHAT_MODELS
from labs.models.resolve import ModelSource

logger = logging.getLogger(__name__)
_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


def recommended_sampling(source: ModelSource, folder: Path) -> dict[str, Any]:
    embedded = EMBEDDED_CHAT_MODELS.get(source.name)
    if embedded is not None and source.origin.startswith("embedded"):
        return dict(embedded.recommended_sampling)
    path = folder / "generation_config.json" if folder.is_dir() else None
    if path is None or not path.is_file():
        return {}
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("ignoring %s: %s", path, error)
        return {}
    if not isinstance(written, dict) or written.get("do_sample") is False:
        return {}  # the authors chose greedy decoding: no sampling values to recommend
    found = {key: written[key] for key in _KEYS if isinstance(written.get(key), (int, float))
             and not isinstance(written.get(key), bool)}
    if found.get("top_k") is not None and not isinstance(found["top_k"], int):
        found.pop("top_k")
    return found
