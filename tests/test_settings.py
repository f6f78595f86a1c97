from __future__ import annotations

from pathlib import Path

import pytest

from mongars_edge.errors import ConfigError, ConfigFileError
from mongars_edge.settings import Settings, describe, env_var, load_settings, setting_names

REPO = Path(__file__).resolve().parent.parent


def test_defaults_need_no_source() -> None:
    settings = load_settings(environ={}, config_path=None)
    assert settings == Settings()
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"


def test_sources_in_order_defaults_file_env_cli(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('port = 9001\nhost = "0.0.0.0"\nlog_level = "debug"\nmesh = false\n')
    env = {"MONGARS_PORT": "9002", "MONGARS_LOG_LEVEL": "warning"}
    settings = load_settings(config_path=config, environ=env, cli={"port": 9003})
    assert settings.port == 9003  # flag beats environment
    assert settings.log_level == "warning"  # environment beats file
    assert settings.host == "0.0.0.0"  # file beats default
    assert settings.mesh is False
    assert settings.queue_size == 32  # default


def test_environment_values_are_parsed_by_type() -> None:
    env = {
        "MONGARS_MESH": "off",
        "MONGARS_STATIC_PEERS": "10.0.0.2:8765, kitchen.local:8765",
        "MONGARS_REQUEST_DEADLINE_S": "12.5",
        "MONGARS_DATA_DIR": "/tmp/box",
    }
    settings = load_settings(environ=env)
    assert settings.mesh is False
    assert settings.static_peers == ("10.0.0.2:8765", "kitchen.local:8765")
    assert settings.request_deadline_s == 12.5
    assert settings.resolved_data_dir() == Path("/tmp/box")


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"MONGARS_PORT": "eighty"}, "port"),
        ({"MONGARS_PORT": "70000"}, "port"),
        ({"MONGARS_LOG_LEVEL": "loud"}, "log_level"),
        ({"MONGARS_MESH": "perhaps"}, "mesh"),
        ({"MONGARS_QUEUE_SIZE": "0"}, "queue_size"),
        ({"MONGARS_REQUEST_DEADLINE_S": "nan-ish"}, "request_deadline_s"),
    ],
)
def test_bad_environment_value_names_setting_value_and_allowed(
    env: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    err = info.value
    assert err.setting == setting
    message = str(err)
    assert setting in message
    assert next(iter(env.values())) in message
    assert "allowed" in message
    assert env_var(setting) in message


def test_bad_config_file_type_and_syntax_and_unknown_key(tmp_path: Path) -> None:
    wrong_type = tmp_path / "a.toml"
    wrong_type.write_text('port = "high"\n')
    with pytest.raises(ConfigError, match="port"):
        load_settings(config_path=wrong_type, environ={})
    broken = tmp_path / "b.toml"
    broken.write_text("port = = 3\n")
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        load_settings(config_path=broken, environ={})
    unknown = tmp_path / "c.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigFileError, match="colour"):
        load_settings(config_path=unknown, environ={})
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_settings(config_path=tmp_path / "missing.toml", environ={})


def test_bool_is_not_a_number() -> None:
    with pytest.raises(ConfigError):
        load_settings(environ={}, cli={"port": True})


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_replace_validates() -> None:
    settings = Settings().replace(port=1234)
    assert settings.port == 1234
    with pytest.raises(ConfigError):
        Settings().replace(port=-5)


def test_every_setting_has_help_and_is_documented() -> None:
    doc = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    for item in describe():
        assert item["help"].strip(), f"setting {item['name']} has no help text"
        assert f"`{item['name']}`" in doc, f"docs/settings.md misses {item['name']}"
        assert f"`{item['env']}`" in doc, f"docs/settings.md misses {item['env']}"
    assert len(setting_names()) == len(set(setting_names()))
