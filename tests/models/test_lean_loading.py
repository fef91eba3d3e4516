"""Loading Llama-family models without transformers: the record made at the first load, the lean
modules and tokenizer it allows later, and that they give exactly what transformers' objects give."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from labs.config import CliValue, load_settings
from labs.engine.core import EngineConfig, EngineCore
from labs.engine.errors import UnsupportedModelError
from labs.engine.sampling import SamplingParams
from labs.models import load_model
from labs.models.lean_llama import LeanCausalLM
from labs.models.lean_record import INT8_FILE, read_record, record_folder, write_record
from labs.models.lean_tokenizer import LeanTokenizer, snapshot_of
from tests.engine.test_engine import Collector, run_all
from tests.engine.test_fused import plain_qwen2


def settings_for(folder: Path, cache: Path, **environ: str) -> Any:
    return load_settings({"generation.model_name": CliValue(str(folder), "--model")},
                         environ={"LABS_CACHE_DIR": str(cache), "LABS_DEVICE_MAP": "cpu", **environ})


def copy_model(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def greedy(loaded: Any, prompts: list[list[int]], tokens: int = 12) -> list[tuple[list[int], list[float]]]:
    core = EngineCore(loaded.model, loaded.tokenizer, loaded.context_length, EngineConfig(kv_cache_memory=64 * 2**20))
    sink = Collector()
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0, logprobs=0), sink)
        core.step()
    run_all(core)
    return [(sink.tokens(f"r{i}"), [lp for out in sink.outputs[f"r{i}"] for lp in (out.logprobs or [])]) for i in range(len(prompts))]


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("cpu_int8", ["on", "off"])
def test_the_second_load_needs_no_transformers_and_generates_the_same_tokens(cpu_int8: str, tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    settings = settings_for(folder, tmp_path / "cache", LABS_CPU_INT8=cpu_int8)
    first = load_model(settings)
    assert first.import_seconds > 0 and type(first.model).__name__ == "LlamaForCausalLM"
    assert read_record(folder, tmp_path / "cache") is not None
    assert ((record_folder(folder, tmp_path / "cache") / INT8_FILE).is_file()) == (cpu_int8 == "on")
    second = load_model(settings)
    assert isinstance(second.model, LeanCausalLM) and isinstance(second.tokenizer, LeanTokenizer)
    assert second.import_seconds == 0 and second.quantization == first.quantization
    assert second.context_length == first.context_length and second.embedding_rows == first.embedding_rows
    prompts = [chat_ids(first.tokenizer, "What is the capital of France?"), chat_ids(first.tokenizer, "Count to five.") * 3]
    assert [chat_ids(second.tokenizer, t) for t in ("What is the capital of France?", "Count to five.")] == \
        [prompts[0], chat_ids(first.tokenizer, "Count to five.")]
    reference, lean = greedy(first, prompts), greedy(second, prompts)
    for (tokens, logprobs), (lean_tokens, lean_logprobs) in zip(reference, lean):
        assert lean_tokens == tokens and lean_logprobs == logprobs  # the same bits: same weights, same arithmetic
    if cpu_int8 == "on":
        third = load_model(settings)  # the kept int8 weights, read as they are, give the same bits again
        assert greedy(third, prompts) == lean


def test_the_embedded_model_answers_the_same_without_transformers(default_model_dir: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(default_model_dir, tmp_path / "cache")
    first, second = load_model(settings), load_model(settings)
    assert isinstance(second.model, LeanCausalLM)
    prompt = chat_ids(first.tokenizer, "What is the capital of France?")
    with caplog.at_level(logging.INFO, logger="labs.engine"):
        (tokens, logprobs), = greedy(first, [prompt], tokens=8)
        assert "checked LlamaForCausalLM (llama) against its own forward" in caplog.text  # transformers' modules: probed
        caplog.clear()
        (lean_tokens, lean_logprobs), = greedy(second, [prompt], tokens=8)
        assert "LeanCausalLM was checked against transformers' forward when it was recorded" in caplog.text
        assert "against its own forward" not in caplog.text
    assert lean_tokens == tokens and lean_logprobs == logprobs
    assert "Paris" in second.tokenizer.decode(lean_tokens)


def test_a_changed_model_file_is_loaded_through_transformers_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    settings = settings_for(folder, tmp_path / "cache")
    load_model(settings)
    assert isinstance(load_model(settings).model, LeanCausalLM)
    config = folder / "config.json"
    config.write_text(config.read_text())  # same bytes, new modification time: a new identity
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    assert read_record(folder, tmp_path / "cache") is None
    assert type(load_model(settings).model).__name__ == "LlamaForCausalLM"


def test_damaged_int8_weights_are_quantized_again_with_a_warning(tiny_model_dir: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    settings = settings_for(folder, tmp_path / "cache", LABS_CPU_INT8="on")
    reference = load_model(settings)
    kept = record_folder(folder, tmp_path / "cache") / INT8_FILE
    kept.write_bytes(kept.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        loaded = load_model(settings)
    assert "ignoring the damaged int8 weights" in caplog.text and isinstance(loaded.model, LeanCausalLM)
    prompt = chat_ids(reference.tokenizer, "Hello")
    assert greedy(loaded, [prompt]) == greedy(reference, [prompt])
    assert kept.stat().st_size > 1000  # rewritten


@pytest.mark.parametrize("setting", [{"LABS_FUSED_FORWARD": "false"}, {"LABS_LOAD_IN_8BIT": "true", "LABS_CPU_INT8": "off"}])
def test_settings_the_lean_modules_cannot_serve_always_load_through_transformers(setting: dict[str, str], tiny_model_dir: Path,
                                                                                 tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    load_model(settings_for(folder, tmp_path / "cache"))  # a record exists
    loaded = load_model(settings_for(folder, tmp_path / "cache", **setting))
    assert not isinstance(loaded.model, LeanCausalLM)


def test_the_record_is_refused_when_the_modules_do_something_the_config_does_not_say(tiny_model_dir: Path, tmp_path: Path,
                                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()  # the config still says silu
    with caplog.at_level(logging.INFO):
        assert write_record(tiny_model_dir, tmp_path, model, tokenizer) is None
    assert "the lean modules' logits differ from transformers'" in caplog.text
    assert read_record(tiny_model_dir, tmp_path) is None


def test_architectures_the_lean_path_does_not_build_are_not_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=128, bos_token_id=0, eos_token_id=0)).eval()
    windowed = MistralForCausalLM(MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=1, sliding_window=4,
                                                max_position_embeddings=256)).eval()
    with caplog.at_level(logging.INFO):
        assert write_record(tmp_path, tmp_path / "cache", gpt2, None) is None
        assert write_record(tmp_path, tmp_path / "cache", windowed, None) is None
    assert "architecture GPT2LMHeadModel" in caplog.text and "does not cover sliding-window attention" in caplog.text


def test_qwen2_with_biases_is_recorded_and_matches(tmp_path: Path) -> None:
    model, _ = plain_qwen2(512)
    model.save_pretrained(tmp_path / "qwen2")
    assert write_record(tmp_path / "qwen2", tmp_path / "cache", model, None) is not None
    record = read_record(tmp_path / "qwen2", tmp_path / "cache")
    assert record is not None and record.tokenizer is None
    from labs.models.lean_llama import build

    lean = build(tmp_path / "qwen2", record.rotary, torch.float32, "cpu")
    tokens = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(lean(tokens).logits, model(input_ids=tokens).logits, rtol=1e-5, atol=1e-5)


def test_a_lean_model_is_refused_by_an_engine_without_the_fused_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    settings = settings_for(folder, tmp_path / "cache")
    load_model(settings)
    lean = load_model(settings)
    with pytest.raises(UnsupportedModelError, match=r"runs only through the engine's fused forward, which is off"):
        EngineCore(lean.model, lean.tokenizer, lean.context_length, EngineConfig(kv_cache_memory=16 * 2**20, fused_forward=False))


# ---------------------------------------------------------------- the tokenizer snapshot

TEXTS = ["", "Hello, world!", "  two  spaces\tand a tab\n\n\nlines", "Ünïcödé — 日本語 🙂 ∑", "don't , . ? it's", "<|im_start|>x<|im_end|>",
         "<|endoftext|>tail", "1234567890 3.14159 -42", "https://example.com/a?b=c&d=e", "a" * 300]

TOOL_TEMPLATE = """{%- set ns = namespace(found=false) -%}
{%- for message in messages -%}
{%- if message.role == 'system' %}{% set ns.found = true %}{% endif -%}
<|im_start|>{{ message.role }}
{% generation %}{{ message.content }}{% endgeneration %}{% if message.tool_calls is defined %}{{ message.tool_calls | tojson }}{% endif %}<|im_end|>
{% endfor -%}
{%- if tools %}<tools>{% for tool in tools %}{{ tool | tojson(indent=2) }}{% endfor %}</tools>{% endif -%}
{%- if not ns.found %}{{ bos_token }}no system{% endif -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""


@pytest.fixture(scope="module")
def hf_and_lean(default_model_dir: Path) -> tuple[Any, LeanTokenizer]:
    hf = AutoTokenizer.from_pretrained(default_model_dir)
    snapshot = snapshot_of(hf)
    assert snapshot is not None
    return hf, LeanTokenizer(*snapshot)


@pytest.mark.parametrize("text", TEXTS)
def test_the_snapshot_encodes_and_decodes_as_transformers(text: str, hf_and_lean: tuple[Any, LeanTokenizer]) -> None:
    hf, lean = hf_and_lean
    for special in (True, False):
        ids = list(hf(text, add_special_tokens=special)["input_ids"])
        assert lean(text, add_special_tokens=special)["input_ids"] == ids
        for skip in (True, False):
            assert lean.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert lean.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)


def test_the_snapshot_has_the_vocabulary_and_special_tokens(hf_and_lean: tuple[Any, LeanTokenizer]) -> None:
    hf, lean = hf_and_lean
    assert (len(lean), lean.vocab_size, lean.get_vocab()) == (len(hf), hf.vocab_size, hf.get_vocab())
    assert (lean.eos_token, lean.eos_token_id, lean.pad_token_id, lean.bos_token_id) == \
        (hf.eos_token, hf.eos_token_id, hf.pad_token_id, hf.bos_token_id)
    assert lean.chat_template == hf.chat_template and lean.model_max_length == min(hf.model_max_length, 1 << 62)


@pytest.mark.parametrize("template", ["model's", "tools, namespace, tojson and generation tags"])
def test_chat_templates_render_as_transformers_renders_them(template: str, hf_and_lean: tuple[Any, LeanTokenizer]) -> None:
    hf, lean = hf_and_lean
    if template != "model's":
        hf, lean = copy.deepcopy(hf), copy.deepcopy(lean)
        hf.chat_template = lean.chat_template = TOOL_TEMPLATE
    tools = [{"type": "function", "function": {"name": "weather", "description": "Météo à Paris", "parameters": {"type": "object"}}}]
    chats = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ünïcödé 🙂"},
         {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
         {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny.", "reasoning_content": "checked"}],
    ]
    def render(tokenizer: Any, chat: list[dict[str, Any]], **options: Any) -> str:
        try:
            return tokenizer.apply_chat_template(chat, tokenize=False, **options)
        except Exception as error:  # noqa: BLE001 - a template's own error must be the same error
            return f"{type(error).__name__}: {error}"

    rendered = 0
    for chat in chats:
        for generation_prompt in (True, False):
            for extra in ({}, {"tools": tools}):
                expected = render(hf, chat, add_generation_prompt=generation_prompt, **extra)
                assert render(lean, chat, add_generation_prompt=generation_prompt, **extra) == expected
                rendered += not expected.startswith("UndefinedError")
    assert rendered >= 4


def test_template_errors_are_the_templates_own(hf_and_lean: tuple[Any, LeanTokenizer]) -> None:
    import jinja2

    _, lean = hf_and_lean
    lean = copy.deepcopy(lean)
    lean.chat_template = "{{ raise_exception('only user messages, please') }}"
    with pytest.raises(jinja2.exceptions.TemplateError, match="only user messages, please"):
        lean.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    lean.chat_template = "{% set ns = namespace() %}{% set ns.__class__ = 1 %}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        lean.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    with pytest.raises(ValueError, match="empty conversation"):
        lean.apply_chat_template([], tokenize=False)
    lean.chat_template = {"default": "D{{ messages[0].content }}", "tool_use": "T"}
    assert lean.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "Dx"
    assert lean.apply_chat_template([{"role": "user", "content": "x"}], tools=[{}], tokenize=False) == "T"


def test_a_wordpiece_tokenizer_cleans_up_spaces_as_transformers_does(tmp_path: Path) -> None:
    from labs.embeddings.embedded import embedded_embedding_model_folder

    hf = AutoTokenizer.from_pretrained(embedded_embedding_model_folder("all-minilm-l6-v2"))  # BERT's WordPiece
    snapshot = snapshot_of(hf)
    assert snapshot is not None
    lean = LeanTokenizer(*snapshot)
    for text in ("Hello , world ! It 's fine .", "don't stop", "Ünïcödé"):
        ids = hf(text)["input_ids"]
        assert lean(text)["input_ids"] == list(ids)
        for skip in (True, False):
            assert lean.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_a_snapshot_of_another_format_is_refused(hf_and_lean: tuple[Any, LeanTokenizer]) -> None:
    hf, _ = hf_and_lean
    backend, attributes = snapshot_of(hf)
    with pytest.raises(ValueError, match="tokenizer snapshot format"):
        LeanTokenizer(backend, {**attributes, "format": 99})
    assert json.loads(backend)["truncation"] is None and json.loads(backend)["padding"] is None

