"""One config: the environment is read in broker/settings.py, and the README's table is generated from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.errors import ConfigurationError
from broker.settings import Environment, Settings, environment_table, load_environment

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in Environment.model_fields:
        monkeypatch.delenv(Environment.variable(name), raising=False)
    return monkeypatch


def test_readme_holds_exactly_the_generated_table() -> None:
    lines = README.read_text().splitlines()
    table = environment_table().splitlines()
    start = lines.index(table[0])
    end = lines.index("", start)  # the table runs to the next blank line: no row more, no row less
    assert lines[start:end] == table


def test_every_variable_has_a_meaning() -> None:
    for name, info in Environment.model_fields.items():
        assert info.description, name


def test_an_empty_home_is_the_default_home(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ACB_HOME", "")
    assert load_environment().home == Path("~/.acb").expanduser()
    assert Environment.defaults().home == Path("~/.acb").expanduser()


def test_a_bad_number_names_its_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ACB_REPLY_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="^ACB_REPLY_TIMEOUT must be a number of seconds$"):
        load_environment()


def test_role_urls_come_from_the_environment_else_from_home(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "system").mkdir()
    (tmp_path / "system" / "broker.json").write_text(json.dumps(
        {"urls": {"peer": "amqp://p@h/", "replica": "amqp://r@h/", "operator": "amqp://o@h/"}}))
    (tmp_path / "broker.url").write_text("amqp://file@h/\n")
    clean_env.setenv("ACB_HOME", str(tmp_path))
    clean_env.setenv("ACB_OPERATOR_BROKER_URL", "amqp://env@h/")
    clean_env.setenv("ACB_PREFIX", "t1")
    s = Settings.from_env()
    assert (s.home, s.names.prefix) == (tmp_path, "t1")
    assert (s.broker_url, s.replica_broker_url, s.operator_broker_url) == ("amqp://file@h/", "amqp://r@h/",
                                                                           "amqp://env@h/")


def test_settings_built_in_code_read_no_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ACB_ENDPOINT", "10.0.0.1:9")
    s = Settings(tmp_path, None, Settings.from_env().names)
    assert s.env.endpoint == "127.0.0.1:7700"
    with pytest.raises(ConfigurationError, match="no broker URL"):
        _ = s.broker_url
