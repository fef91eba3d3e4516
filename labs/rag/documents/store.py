"""A thin Qdrant wrapper: one collection of chunk points, local mode on disk or a server.

Both modes go through the same `QdrantClient` calls; only the constructor differs. Qdrant
errors become DocumentStoreError lines that say where the store is and what to do.
qdrant_client is imported on first use: importing it takes over a second.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from labs.errors import LabsError
from labs.rag.documents.errors import DocumentStoreError, DocumentStoreLockedError, EmbeddingModelMismatchError

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client.models import FieldCondition, ScoredPoint

logger = logging.getLogger(__name__)
T = TypeVar("T")

SCROLL_PAGE = 256
# Payload keys of every chunk point (see DocumentIndex for what each holds).
DOCUMENT_ID = "document_id"
INGEST_ID = "ingest_id"
EMBEDDING_MODEL = "embedding_model"


class QdrantStore:
    """One collection of chunk points. Not thread-safe: DocumentIndex serialises calls."""

    def __init__(
        self,
        collection: str,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout: int | None = None,
    ) -> None:
        if (path is None) == (url is None):
            raise ValueError("give a Qdrant path (embedded local mode) or a url (Qdrant server), exactly one of them")
        self.collection = collection
        self.local = path is not None
        self.location = str(Path(path).expanduser().absolute()) if path is not None else str(url)
        self._client = self._open(path, url, api_key, timeout)

    def _open(self, path: str | Path | None, url: str | None, api_key: str | None, timeout: int | None) -> "QdrantClient":
        from qdrant_client import QdrantClient

        if url is not None:
            # The client's own version check runs on a background thread and reports through
            # `warnings` at some later moment; `ensure_collection` checks synchronously instead.
            return QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        folder = Path(self.location)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Calls are serialised by DocumentIndex's lock, so the SQLite connection may move threads.
            return QdrantClient(path=str(folder), force_disable_check_same_thread=True)
        except RuntimeError as error:
            if "already accessed" in str(error):
                raise DocumentStoreLockedError(
                    f"the Qdrant folder {folder} is already open by another client, in this process or another: "
                    "local mode allows one client per folder, so close the other DocumentIndex or share one, "
                    "use another LABS_QDRANT_PATH, or run a Qdrant server and set LABS_QDRANT_URL"
                ) from None
            raise DocumentStoreError(f"could not open the Qdrant folder {folder}: {error}") from error
        except (OSError, ValueError) as error:
            raise DocumentStoreError(f"could not open the Qdrant folder {folder}: {error}") from error

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as error:  # noqa: BLE001 - closing must not mask the caller's own error
            logger.warning("closing Qdrant at %s: %s", self.location, error)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except LabsError:
            raise
        except Exception as error:  # noqa: BLE001 - every Qdrant failure becomes one line
            raise DocumentStoreError(self._describe(what, error)) from error

    def _describe(self, what: str, error: Exception) -> str:
        from qdrant_client.http.exceptions import ResponseHandlingException

        if isinstance(error, ResponseHandlingException) or type(error).__module__.startswith(("httpx", "httpcore")):
            cause = getattr(error, "source", error)
            return (
                f"cannot reach the Qdrant server at {self.location} to {what} ({type(cause).__name__}: {_first_line(cause)}): "
                "start the server or fix LABS_QDRANT_URL"
            )
        where = f"Qdrant folder {self.location}" if self.local else f"Qdrant server {self.location}"
        return f"{where}, collection {self.collection!r}: could not {what}: {_first_line(error)}"

    # -- collection --------------------------------------------------------------------------

    def ensure_collection(self, model_name: str, dimension: int) -> bool:
        """Create the collection for this model, or check an existing one was built with it.

        Returns True when the collection was created. The model name and dimension live in the
        collection's metadata (and in every point's payload, for servers that drop metadata).
        """
        from qdrant_client import models

        if not self.local:
            self._check_server_version()
        if not self._call("check the collection", lambda: self._client.collection_exists(self.collection)):
            self._call(
                "create the collection",
                lambda: self._client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
                    metadata={"embedding_model": model_name, "embedding_dimension": dimension, "created_by": "labs"},
                ),
            )
            if not self.local:
                for field_name in (DOCUMENT_ID, INGEST_ID):
                    self._call(
                        f"index the {field_name} payload field",
                        lambda field_name=field_name: self._client.create_payload_index(
                            self.collection, field_name, field_schema=models.PayloadSchemaType.KEYWORD
                        ),
                    )
            logger.info("created Qdrant collection %r at %s for %s (%d dims)", self.collection, self.location, model_name, dimension)
            return True
        info = self._call("read the collection", lambda: self._client.get_collection(self.collection))
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise DocumentStoreError(
                f"collection {self.collection!r} at {self.location} has named vectors: it was not made by labs; use another collection name"
            )
        metadata = info.config.metadata or {}
        built_with = metadata.get("embedding_model") or self._model_of_any_point()
        if built_with is None and vectors.size == dimension:
            return False  # an empty collection of the right size, made elsewhere: usable
        if built_with != model_name or vectors.size != dimension:
            raise EmbeddingModelMismatchError(
                f"collection {self.collection!r} at {self.location} was built with embedding model "
                f"{built_with or 'unknown'!r} ({vectors.size} dims), but this index uses {model_name!r} ({dimension} dims): "
                "their vectors are not comparable. Use the model it was built with, or another collection name "
                "and re-ingest the documents (or delete the collection)"
            )
        return False

    def _check_server_version(self) -> None:
        """Reach the server now (a clear error when it is down) and log a client/server version gap."""
        from importlib.metadata import version

        from qdrant_client.common.version_check import is_compatible

        server = self._call("read its version", lambda: self._client.info()).version
        client = version("qdrant-client")
        if not is_compatible(client, server):
            logger.warning("qdrant-client %s may not work with Qdrant server %s at %s: versions differ too much", client, server, self.location)

    def _model_of_any_point(self) -> str | None:
        records, _ = self._call(
            "read a point",
            lambda: self._client.scroll(self.collection, limit=1, with_payload=[EMBEDDING_MODEL], with_vectors=False),
        )
        return records[0].payload.get(EMBEDDING_MODEL) if records and records[0].payload else None

    # -- points ------------------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        from qdrant_client import models

        points = [
            models.PointStruct(id=point_id, vector=vector.tolist(), payload=payload)
            for point_id, vector, payload in zip(ids, vectors, payloads)
        ]
        self._call("store chunks", lambda: self._client.upsert(self.collection, points=points, wait=True))

    def delete_document(self, document_id: str, keep_ingest_id: str | None = None) -> None:
        """Delete a document's points, except those of ingestion `keep_ingest_id` when given."""
        from qdrant_client import models

        must_not = [_match(INGEST_ID, keep_ingest_id)] if keep_ingest_id else None
        selector = models.FilterSelector(filter=models.Filter(must=[_match(DOCUMENT_ID, document_id)], must_not=must_not))
        self._call("delete chunks", lambda: self._client.delete(self.collection, points_selector=selector, wait=True))

    def count(self, document_id: str | None = None) -> int:
        from qdrant_client import models

        count_filter = models.Filter(must=[_match(DOCUMENT_ID, document_id)]) if document_id is not None else None
        result = self._call("count chunks", lambda: self._client.count(self.collection, count_filter=count_filter, exact=True))
        return int(result.count)

    def first_payload(self, document_id: str, fields: Sequence[str]) -> dict[str, Any] | None:
        from qdrant_client import models

        records, _ = self._call(
            "read a document",
            lambda: self._client.scroll(
                self.collection,
                scroll_filter=models.Filter(must=[_match(DOCUMENT_ID, document_id)]),
                limit=1,
                with_payload=list(fields),
                with_vectors=False,
            ),
        )
        return dict(records[0].payload or {}) if records else None

    def payloads(self, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
        """Every point's payload (only `fields`), page by page."""
        offset: Any = None
        while True:
            records, offset = self._call(
                "list chunks",
                lambda offset=offset: self._client.scroll(
                    self.collection, limit=SCROLL_PAGE, offset=offset, with_payload=list(fields), with_vectors=False
                ),
            )
            for record in records:
                yield dict(record.payload or {})
            if offset is None:
                return

    def search(
        self, vector: np.ndarray, limit: int, score_threshold: float | None, document_ids: Sequence[str] | None = None
    ) -> list["ScoredPoint"]:
        from qdrant_client import models

        query_filter = None
        if document_ids is not None:
            query_filter = models.Filter(must=[models.FieldCondition(key=DOCUMENT_ID, match=models.MatchAny(any=list(document_ids)))])
        response = self._call(
            "search",
            lambda: self._client.query_points(
                self.collection,
                query=vector.tolist(),
                limit=limit,
                score_threshold=score_threshold,
                query_filter=query_filter,
                with_payload=True,
                with_vectors=False,
            ),
        )
        return list(response.points)


def _match(key: str, value: str | None) -> "FieldCondition":
    from qdrant_client import models

    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
