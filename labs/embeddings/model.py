"""A sentence-transformers embedding model, loaded and run on the process's torch thread.

Why the torch thread: a second OpenMP thread team in the process halves the chat engine's speed
(see labs.engine.torch_thread), so loading and every forward pass go through that one thread.
Inputs are tokenized here (not by sentence-transformers) so that text and token-id inputs take
the same path: same special tokens, same truncation, exact token counts.
"""

from __future__ import annotations

import logging
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np

from labs.embeddings.embedded import EmbeddingSource, resolve_embedding_model
from labs.engine.torch_thread import torch_thread
from labs.errors import LabsError, ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

EmbeddingInput = Union[str, Sequence[int]]
# Inputs per forward pass inside one encode call: sorted by length first, so each chunk pads
# little (a 64-input batch with one long input would otherwise pad all 64 to its length).
FORWARD_CHUNK = 32
# Tokenizers without a real limit report model_max_length as ~1e30.
FALLBACK_MAX_TOKENS = 512


class EmbeddingInputError(LabsError, ValueError):
    """An input the model cannot embed (empty, a token id outside the vocabulary, a bad size)."""

    exit_code = 2


@dataclass
class EmbeddingResult:
    """Vectors for a list of inputs, in input order."""

    vectors: np.ndarray  # float32 [n, dim], each row L2-normalised
    token_counts: list[int] = field(default_factory=list)  # tokens fed, special tokens included
    truncated: list[bool] = field(default_factory=list)  # longer than max_tokens, cut to fit

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


class EmbeddingModel:
    """A loaded embedding model. Build it with `load_embedding_model`."""

    def __init__(self, name: str, model: "SentenceTransformer", device: str, origin: str) -> None:
        self.name = name
        self.device = device
        self.origin = origin
        self._model = model
        self._tokenizer = model.tokenizer
        if self._tokenizer is None:
            raise ModelLoadError(f"embedding model {name!r} has no tokenizer: it cannot embed text")
        # The HF fast tokenizer mutates its Rust state on calls; one caller at a time.
        self._tokenizer_lock = threading.Lock()
        self.dimension = int(_embedding_dimension(model))
        self.max_tokens = _max_tokens(model)
        self.vocab_size = _vocab_size(model)
        self._prefix, self._suffix = self._special_affixes()
        self._budget = self.max_tokens - len(self._prefix) - len(self._suffix)
        if self._budget < 1:
            raise ModelLoadError(f"embedding model {name!r} has max_seq_length {self.max_tokens}, too short for any input")
        self._pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        self._left_padding = getattr(self._tokenizer, "padding_side", "right") == "left"
        self._token_type_ids = "token_type_ids" in getattr(self._tokenizer, "model_input_names", ())

    def __repr__(self) -> str:
        return f"EmbeddingModel({self.name!r}, dimension={self.dimension}, max_tokens={self.max_tokens}, device={self.device!r})"

    # -- tokenization (any thread: tokenizer only, no torch) ---------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens: what a client sends as a token-array input."""
        return self._tokenize_texts([text])[0]

    def count_tokens(self, item: EmbeddingInput) -> int:
        """Tokens `encode` would feed for `item`: special tokens included, after truncation."""
        ids = self.tokenize(item) if isinstance(item, str) else item
        return min(len(ids), self._budget) + len(self._prefix) + len(self._suffix)

    def validate(self, inputs: Sequence[EmbeddingInput]) -> None:
        """Raise EmbeddingInputError, naming the input's index, for inputs that cannot be embedded.

        Cheap and torch-free, so the batcher checks each request before it can share a batch
        with (and fail) other requests.
        """
        if isinstance(inputs, (str, bytes)):
            raise EmbeddingInputError("inputs must be a list of strings or token-id lists, not a single string")
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                if not item:
                    raise EmbeddingInputError(f"input[{index}] is empty: every input needs at least one character")
                continue
            if not isinstance(item, (list, tuple)):
                raise EmbeddingInputError(
                    f"input[{index}] is a {type(item).__name__}: each input must be a string or a list of token ids"
                )
            if not item:
                raise EmbeddingInputError(f"input[{index}] is empty: a token-id list needs at least one token")
            if self._ids_in_range(item):
                continue
            for position, token in enumerate(item):
                if not isinstance(token, numbers.Integral) or isinstance(token, bool):
                    raise EmbeddingInputError(
                        f"input[{index}] has {token!r} at position {position}: token arrays hold integer token ids"
                    )
                if not 0 <= token < self.vocab_size:
                    raise EmbeddingInputError(
                        f"input[{index}] has token id {token} at position {position}, outside the vocabulary of "
                        f"{self.name} (0..{self.vocab_size - 1}): token arrays must use the embedding model's own tokenizer"
                    )

    def _ids_in_range(self, ids: Sequence[Any]) -> bool:
        """Vectorised fast path for long token arrays (validation runs on the event loop)."""
        if any(isinstance(token, bool) for token in ids[:1]):
            return False
        try:
            array = np.asarray(ids)
        except (ValueError, TypeError, OverflowError):
            return False
        return array.ndim == 1 and array.dtype.kind in "iu" and int(array.min()) >= 0 and int(array.max()) < self.vocab_size

    # -- encoding (torch thread only) -------------------------------------------------------

    def encode(self, inputs: Sequence[EmbeddingInput]) -> EmbeddingResult:
        """Embed `inputs` (blocking). MUST run on the torch thread.

        Use `torch_thread().call(model.encode, inputs)` or, in async code, `EmbeddingBatcher`.
        Strings are tokenized; token-id lists are fed as they are. Both get the tokenizer's
        special tokens (e.g. [CLS] ... [SEP]) and are cut to max_tokens, which is never an error.
        """
        if not torch_thread().is_current:
            raise RuntimeError("EmbeddingModel.encode must run on the torch thread: use torch_thread().call() or EmbeddingBatcher")
        self.validate(inputs)
        texts = [(index, item) for index, item in enumerate(inputs) if isinstance(item, str)]
        raw: list[Sequence[int]] = list(inputs)  # type: ignore[arg-type]
        for (index, _), ids in zip(texts, self._tokenize_texts([text for _, text in texts])):
            raw[index] = ids
        truncated = [len(ids) > self._budget for ids in raw]
        fed = [self._prefix + [int(token) for token in ids[: self._budget]] + self._suffix for ids in raw]
        vectors = np.empty((len(fed), self.dimension), dtype=np.float32)
        order = sorted(range(len(fed)), key=lambda index: len(fed[index]))
        for start in range(0, len(order), FORWARD_CHUNK):
            chunk = order[start : start + FORWARD_CHUNK]
            vectors[chunk] = self._forward([fed[index] for index in chunk])
        return EmbeddingResult(vectors=vectors, token_counts=[len(ids) for ids in fed], truncated=truncated)

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            span = slice(width - len(ids), width) if self._left_padding else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
        features: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._token_type_ids:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        features = {key: value.to(self._model.device) for key, value in features.items()}
        with torch.inference_mode():
            embeddings = self._model(features)["sentence_embedding"]
        # Plain HF folders get no Normalize module, and fp16 norms drift: normalise here in fp32.
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        return embeddings.cpu().numpy()

    # -- helpers ---------------------------------------------------------------------------

    def _tokenize_texts(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        with self._tokenizer_lock:
            encoded = self._tokenizer(texts, add_special_tokens=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text, found by probing it.

        Transformers 5 tokenizers no longer offer build_inputs_with_special_tokens, and models
        differ ([CLS] x [SEP], <s> x </s>, x </s>), so compare a text with and without them.
        """
        probe = "hello world"
        with self._tokenizer_lock:
            plain = list(self._tokenizer(probe, add_special_tokens=False)["input_ids"])
            full = list(self._tokenizer(probe, add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
        logger.warning("could not tell the special tokens of %s's tokenizer; token-id inputs get none", self.name)
        return [], []


def load_embedding_model(spec: str, device: str = "auto", aliases: Mapping[str, str] | None = None) -> EmbeddingModel:
    """Resolve `spec` and load it on the torch thread (fp32 on CPU, fp16 on CUDA)."""
    source = resolve_embedding_model(spec, aliases)
    return torch_thread().call(_load, source, device)


def _load(source: EmbeddingSource, device: str) -> EmbeddingModel:
    started = time.perf_counter()
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ModelLoadError(f"sentence-transformers cannot be imported ({error}): run `uv sync` in the labs folder") from None
    target = _pick_device(device, torch)
    dtype = torch.float16 if target.startswith("cuda") else torch.float32
    if not source.sentence_transformers:
        logger.info(
            "%s is a plain Hugging Face model folder (no modules.json): sentence-transformers adds mean pooling", source.path
        )
    try:
        model = SentenceTransformer(str(source.path), device=target, local_files_only=True, model_kwargs={"dtype": dtype})
        model.eval()
        loaded = EmbeddingModel(source.name, model, target, source.origin)
    except LabsError:
        raise
    except Exception as error:  # noqa: BLE001 - any loading failure becomes one line for the user
        raise ModelLoadError(f"could not load embedding model {source.name!r} from {source.path}: {_first_line(error)}") from error
    logger.info(
        "embedding model %s (%s) loaded on %s, %s, %d dimensions, max %d tokens, in %.1f s",
        loaded.name, source.origin, target, str(dtype).removeprefix("torch."), loaded.dimension, loaded.max_tokens,
        time.perf_counter() - started,
    )
    return loaded


def _pick_device(device: str, torch: Any) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"embeddings device is {device!r} but torch sees no CUDA device: set LABS_EMBEDDING_DEVICE to auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("embeddings device is 'mps' but Apple MPS is not available: set LABS_EMBEDDING_DEVICE to auto or cpu")
    if device != "cpu" and device != "mps" and not device.startswith("cuda"):
        raise ModelLoadError(f"embeddings device {device!r} is not one of auto, cuda, cpu, mps: fix LABS_EMBEDDING_DEVICE")
    return device


def _embedding_dimension(model: "SentenceTransformer") -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = getter()
    if not dimension:
        raise ModelLoadError("the embedding model does not report its embedding dimension")
    return dimension


def _max_tokens(model: "SentenceTransformer") -> int:
    limit = model.max_seq_length
    positions = getattr(getattr(model, "transformers_model", None), "config", None)
    positions = getattr(positions, "max_position_embeddings", None)
    if not limit or limit > 1_000_000:
        limit = positions or FALLBACK_MAX_TOKENS
    if positions and positions > 0:
        limit = min(limit, positions)
    return int(limit)


def _vocab_size(model: "SentenceTransformer") -> int:
    size = len(model.tokenizer)
    transformers_model = getattr(model, "transformers_model", None)
    if transformers_model is not None:
        size = min(size, transformers_model.get_input_embeddings().num_embeddings)
    return size


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["EmbeddingInput", "EmbeddingInputError", "EmbeddingModel", "EmbeddingResult", "load_embedding_model"]
