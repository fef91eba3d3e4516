"""What loading a model without transformers needs, recorded the first time transformers loads it.

The first load of a Llama-family model goes through transformers. Then, if the model is one the
lean path builds (labs.models.lean_llama) and the engine's fused forward runs, this module
checks the lean modules on the model's own weights against transformers' forward (logits on a
few random tokens), snapshots the tokenizer (labs.models.lean_tokenizer) and checks it too, and
writes what it found under `<cache_dir>/lean/`: transformers' rotary frequencies and the
tokenizer snapshot. Later loads of the same files read the record and never import transformers.

A record is keyed by the model folder's files (names, sizes, modification times) and the
installed copies of transformers and tokenizers that made it: a changed file or library makes a new one.
It is written under a temporary name and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
import importlib.util
from pathlib import Path
from typing import Any

from labs.models.lean_llama import LEAN_ARCHITECTURES, Rotary, checkpoint_files

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1
RECORD_FILE = "record.json"
TOKENIZER_FILE = "tokenizer.json"
DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")  # frequencies that change with the sequence length
# Largest RMS logit difference (as a share of the logits' spread) between the lean modules and
# transformers' forward on the same weights: the same arithmetic, apart from the attention kernel.
AGREEMENT = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.1}
TOKENIZER_PROBES = ("Hello, world!", "  leading spaces and\ttabs\n\nnew lines", "Ünïcödé — 日本語 🙂", "don't , . ? it's",
                    "<|im_start|>user\nspecial tokens in text<|im_end|>")


@dataclass(frozen=True)
class LeanRecord:
    rotary: Rotary
    tokenizer: dict[str, Any] | None  # the snapshot's attributes, None: load the tokenizer through transformers
    folder: Path  # where the record lives
    logit_difference: float  # the lean modules against transformers' forward, as a share of the logits' spread

    @property
    def tokenizer_json(self) -> str:
        return (self.folder / TOKENIZER_FILE).read_text(encoding="utf-8")


def _library_identity(name: str) -> str:
    """Which installed copy of a library this is: its package file's path, size and modification
    time (reinstalling or upgrading it changes them; importlib.metadata would cost ~30 ms at start)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return "absent"
    stat = os.stat(spec.origin)
    return f"{spec.origin}:{stat.st_size}:{stat.st_mtime_ns}"


def record_folder(model_folder: Path, cache_dir: Path) -> Path:
    """Where the record of this exact model folder lives."""
    digest = hashlib.sha256(f"{RECORD_FORMAT}|{model_folder.resolve()}".encode())
    for versioned in ("transformers", "tokenizers"):
        digest.update(f"|{versioned}={_library_identity(versioned)}".encode())
    for entry in sorted(os.scandir(model_folder), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith("."):
            stat = entry.stat()
            digest.update(f"|{entry.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir / "lean" / f"{model_folder.name}-{digest.hexdigest()[:16]}"


def read_record(model_folder: Path, cache_dir: Path) -> LeanRecord | None:
    """The record of `model_folder`, or None when there is none (or it cannot be read: logged)."""
    folder = record_folder(model_folder, cache_dir)
    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != RECORD_FORMAT:
            return None
        rotary = Rotary([float(x) for x in data["rotary"]["inv_freq"]], float(data["rotary"]["attention_scaling"]))
        return LeanRecord(rotary, data.get("tokenizer"), folder, float(data["logit_difference"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring the unreadable lean-load record %s: %s", path, error)
        return None


def why_not_lean(model: Any) -> str | None:
    """None when the lean path can build this (transformers-loaded) model, else why not."""
    from labs.engine.fused_llama import supports

    name = type(model).__name__
    if name not in LEAN_ARCHITECTURES or not type(model).__module__.startswith("transformers.models."):
        return f"architecture {name} (the lean path builds {', '.join(LEAN_ARCHITECTURES)})"
    if getattr(model.config, "model_type", None) != LEAN_ARCHITECTURES[name]:
        return f"model type {getattr(model.config, 'model_type', None)!r}"
    if getattr(model, "is_quantized", False):
        return "quantized weights (bitsandbytes)"
    reason = supports(model)
    if reason is not None:
        return f"the fused forward does not cover {reason}"
    rotary = getattr(model.model, "rotary_emb", None)
    if getattr(rotary, "rope_type", "default") in DYNAMIC_ROPE_TYPES:
        return f"rope type {rotary.rope_type!r} (its frequencies change with the sequence length)"
    if rotary is None or str(rotary.inv_freq.dtype) != "torch.float32":
        return "rotary frequencies that are not fp32"
    return None


def write_record(model_folder: Path, cache_dir: Path, model: Any, tokenizer: Any) -> LeanRecord | None:
    """Check the lean path against the transformers-loaded `model` and `tokenizer` (before any
    quantization) and record it; None (and a log line saying why) when the lean path does not apply."""
    reason = why_not_lean(model)
    if reason is None and checkpoint_files(model_folder) is None:
        reason = "no safetensors checkpoint"
    if reason is not None:
        logger.info("this model loads through transformers on every start: %s", reason)
        return None
    rotary = Rotary([float(x) for x in model.model.rotary_emb.inv_freq.float().cpu().tolist()],
                    float(model.model.rotary_emb.attention_scaling))
    try:
        difference = _model_difference(model, rotary)
    except ValueError as error:
        logger.info("this model loads through transformers on every start: %s", error)
        return None
    tolerance = AGREEMENT.get(str(model.get_input_embeddings().weight.dtype).removeprefix("torch."), 0.1)
    if not difference <= tolerance:
        logger.warning("this model loads through transformers on every start: the lean modules' logits differ from "
                       "transformers' by %.3g of their spread (more than %g)", difference, tolerance)
        return None
    snapshot = _checked_tokenizer_snapshot(tokenizer)
    final = record_folder(model_folder, cache_dir)
    temporary = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        temporary.mkdir(parents=True)
        if snapshot is not None:
            (temporary / TOKENIZER_FILE).write_text(snapshot[0], encoding="utf-8")
        record = {"format": RECORD_FORMAT, "architecture": type(model).__name__, "source": str(model_folder.resolve()),
                  "rotary": {"inv_freq": rotary.inv_freq, "attention_scaling": rotary.attention_scaling},
                  "tokenizer": snapshot[1] if snapshot is not None else None, "logit_difference": difference}
        (temporary / RECORD_FILE).write_text(json.dumps(record), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        temporary.rename(final)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        logger.warning("could not write the lean-load record for %s (%s): it loads through transformers next time too",
                       model_folder, error)
        return None
    logger.info("recorded %s for loading without transformers (logits agree within %.2g of their spread%s)",
                model_folder.name, difference, "" if snapshot is not None else "; the tokenizer still loads through transformers")
    return LeanRecord(rotary, snapshot[1] if snapshot is not None else None, final, difference)


def _model_difference(model: Any, rotary: Rotary) -> float:
    """RMS logit difference, as a share of the spread, between transformers' forward and the lean
    modules holding the same weight tensors, on two rows of random tokens."""
    import torch

    from labs.models.lean_llama import adopt_weights

    lean = adopt_weights(model, rotary)
    generator = torch.Generator().manual_seed(0)
    device = model.get_input_embeddings().weight.device
    tokens = torch.randint(0, model.get_input_embeddings().num_embeddings, (2, 9), generator=generator).to(device)
    with torch.inference_mode():
        expected = model(input_ids=tokens, use_cache=False).logits.float()
        got = lean(input_ids=tokens).logits.float()
    spread = expected.std(dim=-1).clamp(min=1e-6)
    return float(((got - expected).pow(2).mean(dim=-1).sqrt() / spread).max())


def _checked_tokenizer_snapshot(tokenizer: Any) -> tuple[str, dict[str, Any]] | None:
    """The tokenizer's snapshot, if the restored tokenizer gives the same ids, text and chat prompt."""
    from labs.models.lean_tokenizer import LeanTokenizer, snapshot_of

    snapshot = snapshot_of(tokenizer)
    if snapshot is None:
        logger.info("the tokenizer (%s) is not a fast tokenizer: it loads through transformers", type(tokenizer).__name__)
        return None
    lean = LeanTokenizer(*snapshot)
    problem = None
    for text in TOKENIZER_PROBES:
        for special in (True, False):
            ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
            if lean(text, add_special_tokens=special)["input_ids"] != ids:
                problem = f"encoding {text!r}"
            elif any(lean.decode(ids, skip_special_tokens=skip) != tokenizer.decode(ids, skip_special_tokens=skip) for skip in (True, False)):
                problem = f"decoding {text!r}"
    if problem is None and getattr(tokenizer, "chat_template", None):
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TOKENIZER_PROBES[0]},
                {"role": "assistant", "content": TOKENIZER_PROBES[2]}, {"role": "user", "content": TOKENIZER_PROBES[3]}]
        try:
            expected = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that refuses this chat says nothing about the snapshot
            expected = None
        if expected is not None and lean.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) != expected:
            problem = "rendering the chat template"
    if len(lean) != len(tokenizer) or lean.eos_token_id != tokenizer.eos_token_id or lean.pad_token_id != tokenizer.pad_token_id:
        problem = problem or "the vocabulary or special tokens"
    if problem is not None:
        logger.warning("the tokenizer loads through transformers on every start: its snapshot differs in %s", problem)
        return None
    return snapshot


# The CPU int8 weights (labs.models.int8), kept beside the record so that later starts skip
# quantizing (0.25 s for SmolLM2-135M here); named by the quantization's version. All layers'
# weights are one tensor, in module order, so layers that read the same input (q, k and v; gate and
# up) lie side by side and the fused forward takes them as one matrix without copying them.
INT8_FILE = "int8-v1.safetensors"


def read_int8(record: LeanRecord) -> dict[str, tuple[Any, Any]] | None:
    """{layer name: (int8 weight [N, K], scales [N])} kept by an earlier start, or None."""
    path = record.folder / INT8_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            layers = json.loads(handle.metadata()["layers"])
            weights, scales = handle.get_tensor("qweight"), handle.get_tensor("weight_scale")
        found, offset, row = {}, 0, 0
        for name, rows, columns in layers:
            found[name] = (weights[offset:offset + rows * columns].view(rows, columns), scales[row:row + rows])
            offset, row = offset + rows * columns, row + rows
        if offset != weights.numel() or row != scales.numel():
            raise ValueError("the layer table does not cover the weights")
        return found
    except Exception as error:  # noqa: BLE001 - a damaged file is quantized again, and rewritten
        logger.warning("ignoring the damaged int8 weights %s (%s): quantizing again", path, error)
        path.unlink(missing_ok=True)
        return None


def discard_int8(record: LeanRecord) -> None:
    (record.folder / INT8_FILE).unlink(missing_ok=True)


def write_int8(record: LeanRecord, model: Any) -> None:
    """Keep the int8 weights of `model` (just quantized) for the next start."""
    import torch
    from safetensors.torch import save_file

    from labs.models.int8 import Int8Linear

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, Int8Linear)]
    table = [[name, module.out_features, module.in_features] for name, module in layers]
    tensors = {"qweight": torch.cat([module.qweight.reshape(-1) for _, module in layers]),
               "weight_scale": torch.cat([module.weight_scale for _, module in layers])}
    temporary = record.folder / f".tmp-{INT8_FILE}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save_file(tensors, str(temporary), metadata={"layers": json.dumps(table)})
        temporary.rename(record.folder / INT8_FILE)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        logger.warning("could not keep the int8 weights in %s (%s): they are quantized again at the next start", record.folder, error)
