"""Shared fixtures: the embedded default model converted once, and a tiny random model.

No test touches the network: HF_HUB_OFFLINE is set before anything imports huggingface_hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from labs.engine.native import NativeKernels, NativeKernelsError, missing_toolchain  # noqa: E402
from labs.models.embedded import embedded_chat_model_file  # noqa: E402
from labs.models.gguf_cache import ensure_converted  # noqa: E402

DEFAULT_ALIAS = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def _isolated_labs_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, labs_cache_dir: Path) -> None:
    """Keep the developer's own LABS_* variables, labs.toml and .env out of every test, and point
    the cache at the session's (so no engine starts a background build in the user's cache)."""
    for name in list(os.environ):
        if name.startswith("LABS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LABS_HOME", str(tmp_path_factory.mktemp("labs-home")))
    monkeypatch.setenv("LABS_CACHE_DIR", str(labs_cache_dir))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def labs_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the converted default model and, where this machine has a C++
    toolchain, the native kernels (both built once per test session), so every engine started
    on it runs one fixed path instead of switching when a background build lands."""
    cache = tmp_path_factory.mktemp("labs-cache")
    ensure_converted(embedded_chat_model_file(DEFAULT_ALIAS), cache)
    if missing_toolchain() is None:
        try:
            NativeKernels("on", cache)
        except NativeKernelsError:
            pass  # tests/engine/test_native_kernels.py fails with the compiler's output; the rest run on PyTorch
    return cache


@pytest.fixture(scope="session")
def default_model_dir(labs_cache_dir: Path) -> Path:
    folders = [p for p in (labs_cache_dir / "converted").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1
    return folders[0]


@pytest.fixture(scope="session")
def tiny_model_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_reasoning_model(tiny_model_dir: Path, folder: Path, opened: str, silent_tags: bool = False) -> Path:
    """The tiny model with <think>/</think> tokens, its generation prompt ending in `opened`.

    With `silent_tags` the tags' (tied) embedding rows are zero, so their logit is 0 and never the
    largest: greedy output never closes the reasoning.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["<think>", "</think>"])
    opener = "'<|im_start|>assistant\n'"  # the template holds a real newline
    assert opener in tokenizer.chat_template
    tokenizer.chat_template = tokenizer.chat_template.replace(opener, f"'<|im_start|>assistant\n{opened}'")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=not silent_tags)
    if silent_tags:
        with torch.no_grad():
            model.get_input_embeddings().weight[-2:] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def thinking_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a reasoning model: <think>/</think> tokens, the generation prompt opens the thinking.

    Its output starts inside the reasoning, as with DeepSeek-R1-0528's template.
    """
    return build_reasoning_model(tiny_model_dir, tmp_path_factory.mktemp("thinking-model"), "<think>\n")
