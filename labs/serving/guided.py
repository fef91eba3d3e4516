"""The grammar a turn's output must follow, as the protocols name it (re-exported for the edges)."""

from labs.engine.guided import GuidedDecoding

__all__ = ["GuidedDecoding"]
