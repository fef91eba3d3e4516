"""Config precedence, sources, and every bad-value case named by the foundation issue."""

from __future__ import annotations

from pathlib import Path

import pytest

from labs.config import KEYS, CliValue, load_settings
from labs.config.loader import AdapterAlias
from labs.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.generation.model_name == "smollm2-135m-instruct"
    assert settings.generation.trust_remote_code is False
    assert settings.server.port == 8000
    assert settings.config_file is None
    assert set(settings.sources.values()) == {"default"}


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", "[generation]\ntemperature = 0.3\ntop_p = 0.5\nmax_new_tokens = 10\n")
    env = {"LABS_TOP_P": "0.6", "LABS_MAX_NEW_TOKENS": "20"}
    settings = load_settings({"generation.max_new_tokens": CliValue(30, "--max-new-tokens")}, environ=env, cwd=tmp_path)
    assert settings.generation.temperature == 0.3
    assert settings.sources["generation.temperature"] == f"file {tmp_path / 'labs.toml'}"
    assert settings.generation.top_p == 0.6
    assert settings.sources["generation.top_p"] == "env LABS_TOP_P"
    assert settings.generation.max_new_tokens == 30
    assert settings.sources["generation.max_new_tokens"] == "flag --max-new-tokens"
    assert settings.generation.top_k == 0 and settings.sources["generation.top_k"] == "default"


def test_dotenv_fills_in_but_never_overrides_the_environment(tmp_path: Path) -> None:
    write(tmp_path / ".env", "LABS_TEMPERATURE=0.2\nLABS_TOP_K=5\n")
    settings = load_settings(environ={"LABS_TEMPERATURE": "0.9"}, cwd=tmp_path)
    assert settings.generation.temperature == 0.9
    assert settings.sources["generation.temperature"] == "env LABS_TEMPERATURE"
    assert settings.generation.top_k == 5
    assert settings.sources["generation.top_k"] == f"LABS_TOP_K in {tmp_path / '.env'}"


def test_config_file_search_order(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    write(home / "labs.toml", "[server]\nport = 9001\n")
    settings = load_settings(environ={"LABS_HOME": str(home)}, cwd=cwd)
    assert settings.server.port == 9001 and settings.config_file == home / "labs.toml"
    write(cwd / "labs.toml", "[server]\nport = 9002\n")
    assert load_settings(environ={"LABS_HOME": str(home)}, cwd=cwd).server.port == 9002
    explicit = write(tmp_path / "other.toml", "[server]\nport = 9003\n")
    settings = load_settings(environ={"LABS_HOME": str(home), "LABS_CONFIG": str(explicit)}, cwd=cwd)
    assert settings.server.port == 9003 and settings.config_file == explicit


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml not found \(env LABS_CONFIG\)"):
        load_settings(environ={"LABS_CONFIG": str(tmp_path / "nope.toml")}, cwd=tmp_path)


def test_model_aliases_from_the_models_table(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", '[models]\nmine = "/models/mine"\n')
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.model_aliases == {"mine": "/models/mine"}
    assert settings.alias_sources["mine"].startswith("file ")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LABS_TEMPERATURE": "abc"}, r"^LABS_TEMPERATURE = 'abc' \(env LABS_TEMPERATURE\): expected a number"),
        ({"LABS_MAX_NEW_TOKENS": "-5"}, r"^LABS_MAX_NEW_TOKENS = '-5' \(env LABS_MAX_NEW_TOKENS\): must be >= 1"),
        ({"LABS_TORCH_DTYPE": "int3"}, r"^LABS_TORCH_DTYPE = 'int3' \(env LABS_TORCH_DTYPE\): expected one of auto, bf16, fp16, fp32"),
        ({"LABS_DEVICE_MAP": "tpu"}, r"LABS_DEVICE_MAP = 'tpu'.*expected one of auto, cuda, cpu, mps"),
        ({"LABS_TOP_P": "0"}, r"LABS_TOP_P = '0'.*must be in \(0.0, 1.0\]"),
        ({"LABS_DO_SAMPLE": "maybe"}, r"LABS_DO_SAMPLE = 'maybe'.*expected true or false"),
        ({"LABS_PORT": "70000"}, r"LABS_PORT = '70000'.*between 0 and 65535"),
        ({"LABS_TEMPERATURE": "nan"}, r"LABS_TEMPERATURE = 'nan'.*finite"),
    ],
)
def test_bad_environment_values_name_the_key_and_source(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(environ=env, cwd=tmp_path)
    assert "\n" not in str(caught.value)


def test_bad_value_in_file_names_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "labs.toml", '[generation]\nmax_new_tokens = -1\n')
    with pytest.raises(ConfigError, match=rf"^generation.max_new_tokens = -1 \(file {config}\): must be >= 1"):
        load_settings(environ={}, cwd=tmp_path)


def test_bad_value_in_flag_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--max-new-tokens = -3 \(flag --max-new-tokens\): must be >= 1"):
        load_settings({"generation.max_new_tokens": CliValue(-3, "--max-new-tokens")}, environ={}, cwd=tmp_path)


def test_both_quantization_modes_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", "[quantization]\nload_in_4bit = true\n")
    with pytest.raises(ConfigError, match=r"load_in_4bit and load_in_8bit are both on \(file .*labs.toml; env LABS_LOAD_IN_8BIT\)"):
        load_settings(environ={"LABS_LOAD_IN_8BIT": "true"}, cwd=tmp_path)


def test_unknown_key_in_file_suggests_the_right_one(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", "[generation]\ntemprature = 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'temprature' in \[generation\] of .*labs.toml \(did you mean 'temperature'\?\)"):
        load_settings(environ={}, cwd=tmp_path)


def test_key_in_the_wrong_table_points_to_the_right_one(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", "[generation]\nport = 8001\n")
    with pytest.raises(ConfigError, match=r"unknown key 'port' in \[generation\].*did you mean \[server\] port\?"):
        load_settings(environ={}, cwd=tmp_path)


def test_unknown_table_and_invalid_toml(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", "[genration]\nmodel_name = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown table \[genration\].*did you mean 'generation'"):
        load_settings(environ={}, cwd=tmp_path)
    write(tmp_path / "labs.toml", "[generation\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_settings(environ={}, cwd=tmp_path)


def test_lora_adapters_in_the_models_table(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", '[models]\nmine = "/models/mine"\ntone = { base = "mine", adapter = "~/adapters/tone" }\n'
                                  'plain = { adapter = "/adapters/plain" }\n')
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.model_aliases == {"mine": "/models/mine"}
    assert settings.adapter_aliases == {"tone": AdapterAlias(Path("~/adapters/tone").expanduser(), "mine"),
                                        "plain": AdapterAlias(Path("/adapters/plain"), None)}
    assert settings.alias_sources["tone"].startswith("file ")


@pytest.mark.parametrize(("entry", "message"), [
    ('{ base = "mine" }', r"\[models\] tone in .*: 'adapter' must name a PEFT LoRA adapter folder, e.g. \[models\] tone = "),
    ('{ adapter = "/a", bsae = "mine" }', r"unknown key 'bsae' \(did you mean 'base'\?\); an adapter entry has 'adapter'"),
    ('{ adapter = "/a", base = 3 }', r"'base' must name a model"),
])
def test_bad_adapter_entries(tmp_path: Path, entry: str, message: str) -> None:
    write(tmp_path / "labs.toml", f"[models]\ntone = {entry}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, cwd=tmp_path)


def test_bad_alias_target(tmp_path: Path) -> None:
    write(tmp_path / "labs.toml", "[models]\nmine = 3\n")
    with pytest.raises(ConfigError, match=r"\[models\] mine = 3 .*expected a string"):
        load_settings(environ={}, cwd=tmp_path)


def test_unknown_labs_environment_variable_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    load_settings(environ={"LABS_TEMPERATUR": "0.1"}, cwd=tmp_path)
    assert "ignoring unknown setting LABS_TEMPERATUR" in caplog.text and "LABS_TEMPERATURE" in caplog.text


def test_committed_samples_match_the_schema() -> None:
    """labs.toml and .env.example are rendered from the schema: regenerate with `python -m labs.config.samples`."""
    from labs.config.samples import render_env, render_toml

    root = Path(__file__).resolve().parents[2]
    assert (root / "labs.toml").read_text() == render_toml()
    assert (root / ".env.example").read_text() == render_env()
    for key in KEYS:
        assert key.env in render_env()
        assert not key.toml or f"# {key.name} = " in render_toml()


def test_the_sample_labs_toml_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    import re

    sample = (Path(__file__).resolve().parents[2] / "labs.toml").read_text()
    uncommented = re.sub(r"^# ([\w-]+ = .*)$", r"\1", sample, flags=re.MULTILINE)
    write(tmp_path / "labs.toml", uncommented)
    settings = load_settings(environ={}, cwd=tmp_path)
    defaults = load_settings(environ={}, cwd=tmp_path / "..")
    assert settings.values == defaults.values
    assert settings.model_aliases == {"my-qwen": "/models/Qwen2.5-0.5B-Instruct", "tiny-gguf": "/models/gguf:tinyllama.Q4_K_M.gguf"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("auto", "auto"), ("2GiB", 2 * 1024**3), ("512MB", 512_000_000), ("0.8", 0.8), ("1073741824", 1073741824)],
)
def test_kv_cache_memory_accepts_sizes_fractions_and_auto(tmp_path: Path, raw: str, expected: object) -> None:
    assert load_settings(environ={"LABS_KV_CACHE_MEMORY": raw}, cwd=tmp_path).engine.kv_cache_memory == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [("lots", "expected auto, a size such as 2GiB"), ("3TB", "unknown size unit 'tb'"), ("-1", "must be positive"),
     ("1.5", "byte count and must be whole")],
)
def test_kv_cache_memory_rejects_nonsense(tmp_path: Path, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^LABS_KV_CACHE_MEMORY = '{raw}' \(env LABS_KV_CACHE_MEMORY\): .*{message}"):
        load_settings(environ={"LABS_KV_CACHE_MEMORY": raw}, cwd=tmp_path)
