"""LoRA adapters through the engine: the same tokens as PEFT, alone and in mixed batches, on both
forwards; residency (LRU), refusals, prefix-cache separation, int8."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from labs.engine.core import EngineCore
from labs.engine.errors import EngineRequestError
from labs.engine.errors import AdapterError
from labs.engine.sampling import SamplingParams
from labs.models.int8 import quantize_linears_int8

from tests.engine.test_engine import Collector, assert_cache_empty, load_fp32, prompts_of_lengths, run_all, tiny_core

NEW_TOKENS = 12


def make_adapter(base_dir: Path, folder: Path, seed: int, boost: float = 30.0, **config: Any) -> Path:
    """A random PEFT LoRA adapter of the model in `base_dir`, its B matrices scaled up so that it
    changes the greedy tokens (PEFT starts B at zero; random small B barely moves a random model)."""
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(init_lora_weights=False, **config))
    peft_model.save_pretrained(folder)
    weights_file = folder / "adapter_model.safetensors"
    weights = load_file(str(weights_file))
    save_file({key: value * boost if "lora_B" in key else value for key, value in weights.items()}, str(weights_file))
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": make_adapter(tiny_model_dir, root / "alpha", 1, r=4, lora_alpha=8, target_modules="all-linear"),
        # rsLoRA, a subset of modules, a per-module alpha
        "beta": make_adapter(tiny_model_dir, root / "beta", 2, r=8, lora_alpha=16, use_rslora=True,
                             target_modules=["q_proj", "v_proj", "down_proj", "gate_proj"], alpha_pattern={"down_proj": 4}),
    }


def peft_reference(tiny_model_dir: Path, adapter: Path | None, prompt: list[int]) -> list[int]:
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def greedy() -> SamplingParams:
    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, min_tokens=NEW_TOKENS)


def lora_core(tiny_model_dir: Path, adapters: dict[str, Path], fused: bool = True, model: Any = None, **config: Any) -> EngineCore:
    """An engine with the adapters registered; `fused` is the forward expected to run (fused_forward in
    `config` asks for one that the model may refuse)."""
    model_and_tokenizer = load_fp32(tiny_model_dir) if model is None else model
    config = {"fused_forward": fused, "max_loras": 2} | config
    core = tiny_core(model_and_tokenizer, **config)
    assert (core.runner.fused is not None) == fused
    for name, path in adapters.items():
        core.add_adapter(name, path)
    return core


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "model-forward"])
def test_adapters_match_peft_alone_and_in_one_mixed_batch(fused: bool, tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    prompts = prompts_of_lengths([9, 23, 5, 40], seed=11)
    plan = [("base", None, prompts[0]), ("alpha", "alpha", prompts[1]), ("beta", "beta", prompts[2]), ("alpha-2", "alpha", prompts[3])]
    expected = {rid: peft_reference(tiny_model_dir, None if name is None else adapters[name], prompt) for rid, name, prompt in plan}
    assert expected["alpha"] != peft_reference(tiny_model_dir, None, prompts[1])  # the adapter changes the answer
    assert expected["beta"] != peft_reference(tiny_model_dir, None, prompts[2])

    core = lora_core(tiny_model_dir, adapters, fused)
    for rid, name, prompt in plan:  # alone
        sink = Collector()
        core.add_request(rid, prompt, greedy(), sink, adapter=name)
        run_all(core)
        assert sink.tokens(rid) == expected[rid], rid
    sink = Collector()
    for rid, name, prompt in plan:  # together, joining at different steps
        core.add_request(rid, prompt, greedy(), sink, adapter=name)
        core.step()
    run_all(core)
    for rid, _, _ in plan:
        assert sink.tokens(rid) == expected[rid], rid
    assert_cache_empty(core)


def test_the_prefix_cache_is_never_shared_across_adapters(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    core = lora_core(tiny_model_dir, adapters)
    prompt = prompts_of_lengths([50], seed=3)[0]
    sink = Collector()
    for rid, adapter in [("base", None), ("alpha", "alpha"), ("beta", "beta"), ("alpha-again", "alpha"), ("base-again", None)]:
        core.add_request(rid, prompt, greedy(), sink, adapter=adapter)
        run_all(core)
    cached = {rid: sink.final(rid).cached_prompt_tokens for rid in sink.outputs}
    assert cached == {"base": 0, "alpha": 0, "beta": 0, "alpha-again": 48, "base-again": 48}
    assert sink.tokens("alpha-again") == sink.tokens("alpha")


def test_least_recently_used_adapters_leave_memory_and_come_back(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    core = lora_core(tiny_model_dir, adapters, max_loras=1)
    assert list(core.adapters.resident) == ["beta"] and set(core.adapters.known) == {"alpha", "beta"}  # the newest
    prompts = prompts_of_lengths([12, 17], seed=4)
    expected = [peft_reference(tiny_model_dir, adapters["alpha"], prompts[0]), peft_reference(tiny_model_dir, adapters["beta"], prompts[1])]
    sink = Collector()
    core.add_request("a", prompts[0], greedy(), sink, adapter="alpha")
    core.add_request("b", prompts[1], greedy(), sink, adapter="beta")  # waits: alpha is in use and only one fits
    core.step()
    assert [seq.request_id for seq in core.scheduler.running] == ["a"] and len(core.scheduler.waiting) == 1
    run_all(core)
    assert [sink.tokens("a"), sink.tokens("b")] == expected
    assert list(core.adapters.resident) == ["beta"]
    loads = core.adapters.loads_total
    core.add_request("a2", prompts[0], greedy(), sink, adapter="alpha")
    run_all(core)
    assert sink.tokens("a2") == expected[0] and core.adapters.loads_total == loads + 1
    assert_cache_empty(core)


def test_load_use_unload_and_reload_at_run_time(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    core = lora_core(tiny_model_dir, {})
    prompt = prompts_of_lengths([10], seed=8)[0]
    sink = Collector()
    with pytest.raises(EngineRequestError, match="no adapter named 'alpha' is loaded; loaded: none"):
        core.add_request("x", prompt, greedy(), sink, adapter="alpha")
    core.add_adapter("alpha", adapters["alpha"])
    with pytest.raises(EngineRequestError, match="an adapter named 'alpha' is already loaded"):
        core.add_adapter("alpha", adapters["beta"])
    core.add_request("a", prompt, greedy(), sink, adapter="alpha")
    core.step()
    with pytest.raises(EngineRequestError, match="adapter 'alpha' is serving requests"):
        core.remove_adapter("alpha")
    run_all(core)
    core.remove_adapter("alpha")
    with pytest.raises(EngineRequestError, match="no adapter named 'alpha'"):
        core.remove_adapter("alpha")
    core.add_adapter("alpha", adapters["beta"])  # the name now means other weights
    core.add_request("b", prompt, greedy(), sink, adapter="alpha")
    run_all(core)
    assert sink.tokens("b") == peft_reference(tiny_model_dir, adapters["beta"], prompt) != sink.tokens("a")
    assert sink.final("b").cached_prompt_tokens == 0  # the old adapter's cached prefix is not reused
    assert_cache_empty(core)


def test_adapters_that_cannot_be_served_are_refused_with_what_is_wrong(tiny_model_dir: Path, adapters: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    core = lora_core(tiny_model_dir, {}, max_lora_rank=8)
    other = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2)
    LlamaForCausalLM(other).save_pretrained(tmp_path / "other")
    wrong = make_adapter(tmp_path / "other", tmp_path / "wrong", 1, r=4, target_modules=["q_proj"])
    with pytest.raises(AdapterError, match=r"'wrong' does not fit this base model \(it was trained on '.*other'\): model.layers.0.self_attn.q_proj is 64 -> 64 here, "
                                           r"but the adapter's matrices are \(4, 32\) and \(32, 4\)"):
        core.add_adapter("wrong", wrong)
    dora = make_adapter(tiny_model_dir, tmp_path / "dora", 1, r=4, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(AdapterError, match="DoRA adapter"):
        core.add_adapter("dora", dora)
    big = make_adapter(tiny_model_dir, tmp_path / "big", 1, r=16, target_modules=["q_proj"])
    with pytest.raises(AdapterError, match="rank 16 .* above engine.max_lora_rank = 8"):
        core.add_adapter("big", big)
    head = make_adapter(tiny_model_dir, tmp_path / "head", 1, r=4, target_modules=["lm_head"])
    with pytest.raises(AdapterError, match="holds 'base_model.model.lm_head.base_layer.weight', which is not a LoRA A/B matrix"):
        core.add_adapter("head", head)  # the head is tied to the embeddings: PEFT saves them whole
    attention_only = make_adapter(tiny_model_dir, tmp_path / "rotary", 1, r=4, target_modules=["q_proj"])
    weights = load_file(str(attention_only / "adapter_model.safetensors"))
    save_file({key.replace("layers.0.self_attn.q_proj", "layers.0.input_layernorm"): value for key, value in weights.items()},
              str(attention_only / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="targets model.layers.0.input_layernorm .LlamaRMSNorm.; adapters may target the linear layers"):
        core.add_adapter("norm", attention_only)
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        core.add_adapter("empty", tmp_path)
    config = json.loads((adapters["alpha"] / "adapter_config.json").read_text())
    (tmp_path / "prefix").mkdir()
    (tmp_path / "prefix" / "adapter_config.json").write_text(json.dumps(config | {"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(AdapterError, match="is a PREFIX_TUNING adapter; labs serves LoRA adapters only"):
        core.add_adapter("prefix", tmp_path / "prefix")
    assert core.adapters.known == {}
    off = tiny_core(load_fp32(tiny_model_dir))
    with pytest.raises(EngineRequestError, match="serves no adapters"):
        off.add_adapter("alpha", adapters["alpha"])


@pytest.mark.parametrize("native", ["off", "on"], ids=["pytorch-int8", "native-kernels"])
def test_int8_adapters_change_only_their_own_rows(native: str, tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    """With int8 weights the adapter runs in the activation dtype beside the int8 matmuls: base rows
    in a mixed batch give exactly the tokens of a base-only run, adapter rows those of running alone."""
    model, tokenizer = load_fp32(tiny_model_dir)
    quantize_linears_int8(model)
    prompts = prompts_of_lengths([9, 23, 30], seed=12)
    core = lora_core(tiny_model_dir, adapters, model=(model, tokenizer), native_kernels=native)
    assert (core.runner.fused.kernels is not None) == (native == "on")
    alone = {}
    for rid, adapter, prompt in [("base", None, prompts[0]), ("alpha", "alpha", prompts[1]), ("beta", "beta", prompts[2])]:
        sink = Collector()
        core.add_request(rid, prompt, greedy(), sink, adapter=adapter)
        run_all(core)
        alone[rid] = sink.tokens(rid)
    sink = Collector()
    for rid, adapter, prompt in [("base", None, prompts[0]), ("alpha", "alpha", prompts[1]), ("beta", "beta", prompts[2])]:
        core.add_request(rid, prompt, greedy(), sink, adapter=adapter)
    run_all(core)
    assert {rid: sink.tokens(rid) for rid in alone} == alone
    base_only = tiny_core((model, tokenizer), native_kernels=native)
    base_sink = Collector()
    base_only.add_request("base", prompts[1], greedy(), base_sink)
    run_all(base_only)
    assert base_sink.tokens("base") != alone["alpha"]
    assert_cache_empty(core)


@pytest.mark.parametrize("mode", ["LABS_LOAD_IN_8BIT", "LABS_LOAD_IN_4BIT"])
def test_adapters_on_a_bitsandbytes_base(mode: str, tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    """bitsandbytes layers run in their own modules (the model's own forward), the adapter beside them."""
    from labs.config import load_settings
    from labs.config.loader import CliValue
    from labs.models import load_model

    settings = load_settings({"generation.model_name": CliValue(str(tiny_model_dir), "--model")},
                             environ={mode: "true", "LABS_DEVICE_MAP": "cpu"})
    loaded = load_model(settings)
    core = lora_core(tiny_model_dir, adapters, fused=False, model=(loaded.model, loaded.tokenizer), fused_forward=True)
    prompt = prompts_of_lengths([14], seed=6)[0]
    sink = Collector()
    for rid, adapter in [("base", None), ("alpha", "alpha"), ("beta", "beta")]:
        core.add_request(rid, prompt, greedy(), sink, adapter=adapter)
    run_all(core)
    tokens = {rid: sink.tokens(rid) for rid in ("base", "alpha", "beta")}
    assert all(len(t) == NEW_TOKENS for t in tokens.values()) and len({tuple(t) for t in tokens.values()}) == 3
    assert_cache_empty(core)
