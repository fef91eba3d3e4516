"""Convert a .gguf model once into a cached safetensors folder.

Loading through transformers' GGUF reader dequantizes every tensor and rebuilds the tokenizer
(~17-27 s here); the converted folder loads in ~0.5 s. The folder is written under a temporary
name and renamed into place, so an interrupted first run never leaves a broken cache entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from labs.errors import ModelLoadError

logger = logging.getLogger(__name__)

MARKER = "labs-conversion.json"
FORMAT_VERSION = 1
Progress = Callable[[str], None]


def converted_folder_for(gguf_file: Path, cache_dir: Path) -> Path:
    """Where the conversion of this exact file lives (keyed by path, size and mtime)."""
    stat = gguf_file.stat()
    identity = f"{FORMAT_VERSION}|{gguf_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache_dir / "converted" / f"{gguf_file.stem}-{digest}"


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def ensure_converted(gguf_file: Path, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Return the converted folder, converting first if needed."""
    target = converted_folder_for(gguf_file, cache_dir)
    if is_converted(target):
        return target
    if target.exists():  # left by a crashed older version: not trusted
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(target)
    if progress:
        progress(f"Converting {gguf_file.name} to a cached model folder (first run only)")
    temporary = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _convert(gguf_file, temporary)
        try:
            temporary.rename(target)
        except OSError:
            if not is_converted(target):  # another process did not win the race: a real error
                raise
            logger.info("another process converted %s first; using its folder", gguf_file.name)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.info("converted %s into %s", gguf_file, target)
    return target


def _convert(gguf_file: Path, destination: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"cannot read {gguf_file} as a GGUF model: {error}".splitlines()[0]) from None
    # The GGUF reader leaves the model marked as quantized (it is not: tensors are dequantized)
    # and without `architectures`, both of which break save_pretrained / from_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    destination.mkdir(parents=True)
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    (destination / MARKER).write_text(json.dumps({"source": str(gguf_file.resolve()), "format": FORMAT_VERSION}))


def _remove_abandoned_temporaries(target: Path) -> None:
    """Delete temporaries of this entry left by processes that no longer exist."""
    for leftover in target.parent.glob(f".tmp-{target.name}-*"):
        pid_text = leftover.name.removeprefix(f".tmp-{target.name}-").split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
