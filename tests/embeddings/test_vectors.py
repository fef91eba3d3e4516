"""Vector helpers: dimension truncation, base64 as the OpenAI SDK decodes it, similarity matrix."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from labs.embeddings import EmbeddingInputError, cosine_similarity_matrix, from_base64, to_base64, truncate_dimensions


def _unit_rows(rows: int, dim: int) -> np.ndarray:
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_truncate_dimensions_keeps_the_prefix_and_renormalises() -> None:
    vectors = _unit_rows(3, 384)
    cut = truncate_dimensions(vectors, 64)
    assert cut.shape == (3, 64) and cut.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    expected = vectors[:, :64] / np.linalg.norm(vectors[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    np.testing.assert_allclose(truncate_dimensions(vectors, 384), vectors, atol=1e-6)


@pytest.mark.parametrize("dimensions", [0, -3, 385, 1000])
def test_truncate_dimensions_out_of_range_names_both_numbers(dimensions: int) -> None:
    with pytest.raises(EmbeddingInputError) as caught:
        truncate_dimensions(_unit_rows(2, 384), dimensions)
    message = str(caught.value)
    assert str(dimensions) in message and "384" in message and "\n" not in message


def test_base64_round_trips_through_numpy_frombuffer() -> None:
    vector = _unit_rows(1, 384)[0]
    text = to_base64(vector)
    decoded = np.frombuffer(base64.b64decode(text), dtype="float32")  # what the OpenAI SDK does
    np.testing.assert_array_equal(decoded, vector)
    np.testing.assert_array_equal(from_base64(text), vector)
    assert len(base64.b64decode(text)) == 384 * 4


def test_cosine_similarity_matrix() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    matrix = cosine_similarity_matrix(vectors)
    assert isinstance(matrix, list) and all(isinstance(value, float) for row in matrix for value in row)
    np.testing.assert_allclose(matrix, [[1, 0, 0.70710677], [0, 1, 0.70710677], [0.70710677, 0.70710677, 1]], atol=1e-6)
