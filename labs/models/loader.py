"""Load a resolved model's tokenizer and weights on the chosen device, dtype and quantization."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labs.config import Settings
from labs.errors import ModelLoadError
from labs.models.device import Placement, dtype_name, resolve_placement
from labs.models.gguf_cache import Progress, ensure_converted
from labs.models.int8 import quantize_linears_int8
from labs.models.lean_record import LeanRecord, discard_int8, read_int8, read_record, write_int8, write_record
from labs.models.recommended import recommended_sampling
from labs.models.quantization import build_quantization_config, use_cpu_int8
from labs.models.resolve import ModelSource, resolve_model

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for the engine: weights, tokenizer and how they were placed."""

    name: str
    source: ModelSource
    model: Any
    tokenizer: Any
    placement: Placement
    quantization: str | None
    load_seconds: float  # reading tokenizer and weights onto the device
    import_seconds: float = 0.0  # importing torch/transformers' modeling code (paid once per process)
    recommended_sampling: dict[str, Any] = field(default_factory=dict)  # the authors' sampling (a defaults layer)

    @property
    def context_length(self) -> int:
        config = self.model.config
        for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attribute, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(min(self.tokenizer.model_max_length, 1 << 20))

    @property
    def embedding_rows(self) -> int:
        """Token ids the model can read (0..rows-1): its input embedding matrix, which may be smaller than
        the tokenizer (tokens added without resizing) or than the output layer (padded heads)."""
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        quant = f", {self.quantization}" if self.quantization else ""
        return f"{self.name} on {self.placement.device} ({dtype_name(self.placement.dtype)}{quant})"


def _import_modeling_code() -> float:
    """Import transformers' modeling stack (several seconds on first use, independent of the model)."""
    started = time.perf_counter()
    import transformers.activations  # noqa: F401 - pulls in torch.distributed, sympy, ...
    import transformers.modeling_utils  # noqa: F401

    return time.perf_counter() - started


def placement_from_settings(settings: Settings) -> Placement:
    """Where and in what dtype the configured model runs, with int8 linear layers where they apply."""
    return resolve_placement(
        settings.generation.device_map, settings.generation.torch_dtype, settings.sources["generation.device_map"],
        int8_linear=lambda device: use_cpu_int8(settings.quantization, device, settings.sources["quantization.cpu_int8"]),
    )


def lean_load_applies(settings: Settings, placement: Placement) -> str | None:
    """None when this configuration may load models without transformers (labs.models.lean_llama),
    else why not: the lean modules are run by the engine's fused forward only."""
    if not settings.engine.fused_forward:
        return "fused_forward is off"
    if settings.quantization.load_in_4bit or settings.quantization.load_in_8bit:
        return "bitsandbytes quantization"
    if placement.device not in ("cpu", "cuda"):
        return f"device {placement.device}"
    return None


def load_model(settings: Settings, model: str | None = None, progress: Progress | None = None) -> LoadedModel:
    """Resolve `model` (default: the configured one) and load it: without transformers where a
    record of an earlier load allows it (labs.models.lean_record), else through transformers."""
    started = time.perf_counter()
    spec = model or settings.generation.model_name
    source = resolve_model(spec, settings.model_aliases)
    placement = placement_from_settings(settings)
    folder = source.path
    if source.kind == "gguf":
        folder = ensure_converted(source.path, settings.paths.cache_dir, progress)
    if progress:
        progress(f"Loading {source.name}")
    lean_reason = lean_load_applies(settings, placement)
    record = read_record(folder, settings.paths.cache_dir) if lean_reason is None else None
    if record is not None:
        weights, tokenizer = _load_lean(folder, record, placement)
        how = "without transformers"
        import_seconds = 0.0
    else:
        import_seconds = _import_modeling_code()
        started = time.perf_counter()
        weights, tokenizer = _load_with_transformers(settings, source, folder, placement)
        how = "through transformers"
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if record is None and lean_reason is None:  # loaded through transformers: record it for the next start
        record = write_record(folder, settings.paths.cache_dir, weights, tokenizer)
    quant = "4-bit" if settings.quantization.load_in_4bit else "8-bit" if settings.quantization.load_in_8bit else None
    if placement.int8_linear:
        if quantize_linears_int8(weights) and record is not None and placement.device == "cpu":
            write_int8(record, weights)  # the next start reads them instead of quantizing
        quant = "int8"
    loaded = LoadedModel(source.name, source, weights, tokenizer, placement, quant, time.perf_counter() - started, import_seconds,
                         recommended_sampling(source, folder))
    if len(tokenizer) > loaded.embedding_rows:
        logger.warning("%s: the tokenizer has %d tokens but the embedding matrix only %d rows; prompts holding the "
                       "tokens beyond it are refused", source.name, len(tokenizer), loaded.embedding_rows)
    logger.info("loaded %s %s in %.1f s (after %.1f s importing modeling code)", loaded.describe(), how, loaded.load_seconds,
                import_seconds)
    return loaded


def _load_lean(folder: Path, record: LeanRecord, placement: Placement) -> tuple[Any, Any]:
    """The model and tokenizer from `folder` and the record of an earlier load, without transformers
    (int8 weights kept by an earlier start are used as they are)."""
    from labs.models.lean_llama import build
    from labs.models.lean_tokenizer import LeanTokenizer

    int8 = read_int8(record) if placement.int8_linear and placement.device == "cpu" else None
    try:
        try:
            weights = build(folder, record.rotary, placement.dtype, placement.device, int8)
        except ValueError as error:
            if int8 is None:
                raise
            logger.warning("the kept int8 weights do not fit the model (%s): quantizing again", error)
            discard_int8(record)
            weights = build(folder, record.rotary, placement.dtype, placement.device)
        weights.checked_against_transformers = record.logit_difference  # the engine's load-time probe has nothing to add
        if record.tokenizer is not None:
            tokenizer = LeanTokenizer(record.tokenizer_json, record.tokenizer)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load the model from {folder}: {_one_line(error)}") from None
    return weights, tokenizer


def _load_with_transformers(settings: Settings, source: ModelSource, folder: Path, placement: Placement) -> tuple[Any, Any]:
    quantization_config = build_quantization_config(settings.quantization, placement.device)
    trust = settings.generation.trust_remote_code
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
        weights = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=placement.dtype,
            device_map=placement.device,
            quantization_config=quantization_config,
            trust_remote_code=trust,
        )
    except Exception as error:  # noqa: BLE001 - any failure to read the files is one line for the user
        message = _one_line(error)
        hint = " (this model may need trust_remote_code=true, only if you trust it)" if "trust_remote_code" in message else ""
        raise ModelLoadError(f"cannot load model {source.name} from {folder}: {message}{hint}") from None
    weights.eval()
    return weights, tokenizer


def _one_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

