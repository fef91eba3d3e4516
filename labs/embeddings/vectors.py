"""Vector helpers for the API layer (pure numpy: no torch, safe on the event loop)."""

from __future__ import annotations

import base64
import numbers

import numpy as np

from labs.embeddings.model import EmbeddingInputError


def truncate_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Keep the first `dimensions` components and re-normalise (the OpenAI `dimensions` parameter).

    Re-normalising keeps cosine similarity a plain dot product, as it is for full vectors
    (Matryoshka-style truncation; models not trained for it lose quality, but stay consistent).
    """
    array = np.asarray(vectors, dtype=np.float32)
    size = array.shape[-1]
    if not isinstance(dimensions, numbers.Integral) or isinstance(dimensions, bool) or not 1 <= dimensions <= size:
        raise EmbeddingInputError(
            f"dimensions={dimensions!r} is out of range: this model's embeddings have {size} dimensions, so ask for 1 to {size}"
        )
    cut = array[..., : int(dimensions)]
    norms = np.linalg.norm(cut, axis=-1, keepdims=True)
    return (cut / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def to_base64(vector: np.ndarray) -> str:
    """float32 little-endian bytes, base64: what the OpenAI SDK decodes with np.frombuffer(..., "float32")."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def from_base64(text: str) -> np.ndarray:
    """Inverse of to_base64."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def cosine_similarity_matrix(vectors: np.ndarray) -> list[list[float]]:
    """Pairwise cosine similarities of the rows of `vectors` (n x n, as JSON-ready lists)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise EmbeddingInputError(f"cosine similarity needs a 2-D array of vectors, got {array.ndim} dimensions")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    unit = array / np.where(norms == 0, 1.0, norms)
    return np.clip(unit @ unit.T, -1.0, 1.0).astype(float).tolist()
