"""LoRA adapters over HTTP with the official OpenAI SDK: configured in [models], loaded and unloaded
at run time, listed with their base, mixed in one batch, and refused clearly."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.api.conftest import LiveServer, error_of, start_server
from tests.engine.test_lora import make_adapter

PROMPT = "Write one line about the sea."


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api-adapters")
    other = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(other).save_pretrained(root / "other-base")
    return {
        "alpha": make_adapter(tiny_model_dir, root / "alpha", 1, r=4, lora_alpha=8, target_modules="all-linear"),
        "beta": make_adapter(tiny_model_dir, root / "beta", 2, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]),
        "wrong": make_adapter(root / "other-base", root / "wrong", 3, r=4, target_modules=["q_proj"]),
    }


@pytest.fixture(scope="module")
def lora_server(tiny_settings_factory: Any, adapter_dirs: dict[str, Path]) -> Iterator[LiveServer]:
    settings = tiny_settings_factory(f'[models]\nalpha = {{ adapter = "{adapter_dirs["alpha"]}" }}\n',
                                     LABS_ALLOW_RUNTIME_LORA="true", LABS_PRELOAD_ON_START="true")
    server = start_server(settings)
    yield server
    server.stop()


def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def answer(client: openai.OpenAI, model: str) -> str:
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=16, temperature=0, extra_body={"min_tokens": 16})
    assert completion.model == model
    return completion.choices[0].message.content


def test_a_configured_adapter_is_listed_with_its_base_and_answers_differently(lora_server: LiveServer) -> None:
    client = sdk(lora_server)
    base_id = lora_server.state.models.default_id
    cards = {model.id: model for model in client.models.list()}
    assert cards["alpha"].model_extra["parent"] == base_id and cards["alpha"].model_extra["type"] == "lora"
    base, alpha = answer(client, base_id), answer(client, "alpha")
    assert alpha != base
    assert answer(client, "alpha") == alpha  # greedy: the same again
    assert client.models.retrieve("alpha").model_extra["loaded"] is True
    lora_server.wait_idle()


def test_adapters_and_the_base_share_one_engine_and_one_batch(lora_server: LiveServer, adapter_dirs: dict[str, Path]) -> None:
    client = sdk(lora_server)
    base_id = lora_server.state.models.default_id
    response = lora_server.client().post("/v1/load_lora_adapter", json={"lora_name": "beta", "lora_path": str(adapter_dirs["beta"])})
    assert response.status_code == 200, response.text
    assert response.json() | {"root": None} == {"id": "beta", "object": "model", "type": "lora", "parent": base_id, "root": None, "loaded": True}
    models = [base_id, "alpha", "beta"] * 3
    alone = {model: answer(client, model) for model in (base_id, "alpha", "beta")}
    assert len(set(alone.values())) == 3
    steps_before = lora_server.engine().stats().steps_total
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(lambda model: answer(client, model), models))
    assert together == [alone[model] for model in models]
    # nine requests of 16 tokens in far fewer than 9 * 16 steps: they ran in the same batches
    assert lora_server.engine().stats().steps_total - steps_before < 9 * 16 / 2
    assert len(lora_server.state.models.loaded_models()) == 1
    lora_server.wait_idle()
    assert lora_server.client().post("/v1/unload_lora_adapter", json={"lora_name": "beta"}).json() == \
        {"id": "beta", "object": "model", "deleted": True}


def test_run_time_adapters_load_unload_and_reload(lora_server: LiveServer, adapter_dirs: dict[str, Path]) -> None:
    client, http = sdk(lora_server), lora_server.client()
    load = {"lora_name": "gamma", "lora_path": str(adapter_dirs["beta"])}
    assert http.post("/v1/load_lora_adapter", json=load).status_code == 200
    first = answer(client, "gamma")
    assert "gamma" in {model.id for model in client.models.list()}
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "gamma"}).status_code == 200
    with pytest.raises(openai.NotFoundError) as missing:
        answer(client, "gamma")
    assert missing.value.body["code"] == "model_not_found"
    assert "gamma" not in {model.id for model in client.models.list()}
    assert http.post("/v1/load_lora_adapter", json=load).status_code == 200
    assert answer(client, "gamma") == first
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "gamma"}).status_code == 200
    lora_server.wait_idle()


def test_bad_adapter_requests_are_refused_with_what_is_wrong(lora_server: LiveServer, adapter_dirs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    http = lora_server.client()
    wrong = error_of(http.post("/v1/load_lora_adapter", json={"lora_name": "wrong", "lora_path": str(adapter_dirs["wrong"])}), 400)
    assert wrong["code"] == "invalid_adapter" and wrong["param"] == "lora_path"
    assert "does not fit this base model" in wrong["message"] and "q_proj is 64 -> 64 here" in wrong["message"]
    missing = error_of(http.post("/v1/load_lora_adapter", json={"lora_name": "nothing", "lora_path": str(tmp_path)}), 400)
    assert "has no adapter_config.json" in missing["message"]
    taken = error_of(http.post("/v1/load_lora_adapter", json={"lora_name": "alpha", "lora_path": str(adapter_dirs["beta"])}), 409)
    assert taken["code"] == "model_exists" and "already in use" in taken["message"]
    unknown = error_of(http.post("/v1/unload_lora_adapter", json={"lora_name": "nope"}), 404)
    assert unknown["code"] == "model_not_found"
    shape = error_of(http.post("/v1/load_lora_adapter", json={"lora_name": "x"}), 400)
    assert shape["param"] == "lora_path"
    assert "wrong" not in {card["id"] for card in http.get("/v1/models").json()["data"]}
    assert answer(sdk(lora_server), "alpha")  # nothing else broke
    lora_server.wait_idle()


def test_run_time_loading_is_off_unless_the_server_allows_it(tiny_server: LiveServer, adapter_dirs: dict[str, Path]) -> None:
    error = error_of(tiny_server.client().post("/v1/load_lora_adapter",
                                               json={"lora_name": "alpha", "lora_path": str(adapter_dirs["alpha"])}), 403)
    assert error["code"] == "runtime_lora_disabled" and "LABS_ALLOW_RUNTIME_LORA=true" in error["message"]
    assert tiny_server.engine().core.adapters.capacity == 0  # no memory set aside where no adapter can run
