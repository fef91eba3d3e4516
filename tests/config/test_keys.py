"""Named API keys in labs.toml: what a [keys.NAME] table accepts, and every mistake refused by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from labs.config import load_settings
from labs.config.keys import digest_of
from labs.errors import ConfigError

ALICE_SHA = hashlib.sha256(b"alice-secret").hexdigest()


def settings_with(tmp_path: Path, toml: str, **environ: str):  # noqa: ANN201 - Settings
    (tmp_path / "labs.toml").write_text(toml)
    return load_settings(environ=environ, cwd=tmp_path)


def test_named_keys_with_limits_from_sha256_and_env(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, f"""
[keys.alice]
sha256 = "{ALICE_SHA.upper()}"
requests_per_minute = 5
tokens_per_minute = 1000
max_concurrent = 2
models = ["smol", "tiny"]
priority = "Batch"

[keys.nightly-jobs_2]
env = "NIGHTLY_KEY"
""", NIGHTLY_KEY=" bob-secret ")
    alice, nightly = settings.named_keys["alice"], settings.named_keys["nightly-jobs_2"]
    assert alice.digest == digest_of("alice-secret")
    assert (alice.requests_per_minute, alice.tokens_per_minute, alice.max_concurrent) == (5, 1000, 2)
    assert alice.models == ("smol", "tiny") and alice.priority == "batch"
    assert alice.secret_from == "sha256" and alice.source == f"file {tmp_path / 'labs.toml'}"
    assert nightly.digest == digest_of("bob-secret")  # surrounding spaces are not part of a key
    assert (nightly.requests_per_minute, nightly.models, nightly.priority) == (None, None, "interactive")
    assert nightly.secret_from == "env NIGHTLY_KEY"
    assert "bob-secret" not in repr(settings.named_keys) and ALICE_SHA not in repr(settings.named_keys).lower()


def test_no_keys_table_means_no_named_keys(tmp_path: Path) -> None:
    assert settings_with(tmp_path, "[server]\nport = 8001\n").named_keys == {}
    assert load_settings(environ={}, cwd=tmp_path / "..").named_keys == {}


def test_the_secret_variable_is_not_warned_about_as_an_unknown_setting(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    settings_with(tmp_path, '[keys.ci]\nenv = "LABS_CI_KEY"\n', LABS_CI_KEY="ci-secret")
    assert "LABS_CI_KEY" not in caplog.text


def test_the_secret_may_come_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CAROL_KEY=carol-secret\n")
    settings = settings_with(tmp_path, '[keys.carol]\nenv = "CAROL_KEY"\n')
    assert settings.named_keys["carol"].digest == digest_of("carol-secret")


@pytest.mark.parametrize(("table", "environ", "message"), [
    ('[keys.alice]\nrequests_per_minute = 5\n', {},
     r"^\[keys.alice\] in .*labs.toml: give the key's secret exactly once, as sha256 = .*printf %s KEY \| sha256sum"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nenv = "A"\n', {"A": "x"}, r"^\[keys.alice\] .*exactly once"),
    ('[keys.alice]\nsha256 = "abc123"\n', {}, r"^\[keys.alice\] .*sha256 must be 64 hexadecimal digits.*got 6 characters"),
    (f'[keys.alice]\nsha256 = "{"g" * 64}"\n', {}, r"sha256 must be 64 hexadecimal digits"),
    ('[keys.alice]\nsha256 = 12\n', {}, r"sha256 must be 64 hexadecimal digits.*got a int"),
    ('[keys.alice]\nenv = "ALICE_KEY"\n', {}, r"^\[keys.alice\] .*env = \"ALICE_KEY\", but the variable ALICE_KEY is not set"),
    ('[keys.alice]\nenv = "ALICE_KEY"\n', {"ALICE_KEY": "  "}, r"the variable ALICE_KEY is empty"),
    ('[keys.alice]\nenv = ""\n', {}, r"env must name an environment variable"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nrequests_per_minit = 5\n', {},
     r"^\[keys.alice\] .*unknown field 'requests_per_minit' \(did you mean 'requests_per_minute'\?\)"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nrequests_per_minute = -1\n', {},
     r"^\[keys.alice\] .*requests_per_minute must be >= 1, got -1 \(leave it out for no limit\)"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\ntokens_per_minute = 0\n', {}, r"tokens_per_minute must be >= 1, got 0"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nmax_concurrent = 1.5\n', {}, r"max_concurrent must be a whole number, got 1.5"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nmax_concurrent = true\n', {}, r"max_concurrent must be a whole number"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nmodels = "smol"\n', {}, r"models must be a list of model ids"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nmodels = []\n', {}, r"models must name at least one model"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\npriority = "urgent"\n', {},
     r"priority must be one of interactive, batch, low, got 'urgent'"),
    (f'[keys."al ice"]\nsha256 = "{ALICE_SHA}"\n', {}, r"^\[keys.al ice\] .*letters, digits, '-' and '_'"),
    (f'[keys."-"]\nsha256 = "{ALICE_SHA}"\n', {}, r"starting with a letter or digit"),
    ('[keys]\nalice = "secret"\n', {}, r"^\[keys.alice\] .*expected a table"),
    (f'[keys.alice]\nsha256 = "{ALICE_SHA}"\n[keys.bob]\nenv = "B"\n', {"B": "alice-secret"},
     r"\[keys.alice\] and \[keys.bob\] in .* have the same secret"),
])
def test_bad_key_tables_are_refused_naming_the_key_and_field(tmp_path: Path, table: str, environ: dict[str, str],
                                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings_with(tmp_path, table, **environ)
    assert "alice-secret" not in str(caught.value)


def test_a_plain_key_that_is_also_a_named_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"a key in server.api_keys \(env LABS_API_KEY\) is also \[keys.alice\]'s key"):
        settings_with(tmp_path, f'[keys.alice]\nsha256 = "{ALICE_SHA}"\n', LABS_API_KEY="other, alice-secret")
    settings = settings_with(tmp_path, f'[keys.alice]\nsha256 = "{ALICE_SHA}"\n', LABS_API_KEY="other")
    assert settings.server.api_keys == ("other",) and list(settings.named_keys) == ["alice"]


def test_show_config_shows_names_and_limits_never_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from labs.cli.gen import app

    (Path.cwd() / "labs.toml").write_text(f'[keys.alice]\nsha256 = "{ALICE_SHA}"\nrequests_per_minute = 5\n'
                                          'models = ["smol"]\n[keys.ci]\nenv = "CI_KEY"\npriority = "low"\n')
    monkeypatch.setenv("CI_KEY", "ci-secret-value")
    monkeypatch.setenv("LABS_API_KEY", "plain-secret-value")
    runner = CliRunner()
    result = runner.invoke(app, ["--show-config", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["api_keys"]["alice"] == {
        "secret": "sha256", "requests_per_minute": 5, "tokens_per_minute": None, "max_concurrent": None,
        "models": ["smol"], "priority": "interactive", "source": f"file {Path.cwd() / 'labs.toml'}"}
    assert report["api_keys"]["ci"]["secret"] == "env CI_KEY" and report["api_keys"]["ci"]["models"] == "all"
    table = runner.invoke(app, ["--show-config"])
    assert table.exit_code == 0 and "keys.alice" in table.stdout and "requests_per_minute 5" in table.stdout
    for output in (result.stdout, table.stdout):
        for secret in ("ci-secret-value", "plain-secret-value", ALICE_SHA, ALICE_SHA[:8],
                       hashlib.sha256(b"ci-secret-value").hexdigest()[:8]):
            assert secret not in output


def test_the_readme_example_loads(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Sharing one server", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    assert example is not None
    settings = settings_with(tmp_path, example.group(1), REPORTS_KEY="reports-secret")
    alice, reports = settings.named_keys["alice"], settings.named_keys["nightly-reports"]
    assert alice.digest == digest_of("alice-example-key") and alice.requests_per_minute == 60
    assert reports.models == ("smollm2-135m-instruct",) and reports.priority == "batch"
