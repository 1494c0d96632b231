"""Config loading: defaults, derived values, paths, secrets, and the error messages users see."""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from gatewayd.config import (
    REMOVED_KEYS,
    Config,
    MqttConfig,
    config_warnings,
    default_config,
    gateway_id_from_hostname,
    load_config,
    resolve_mqtt_password,
)
from gatewayd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "gatewayd.example.toml"
CONFIGS = Path(__file__).parent / "configs"


def write(tmp_path: Path, text: str, name: str = "gatewayd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    assert info.value.path == str(path)
    return str(info.value)


# --- defaults ------------------------------------------------------------------------------------


def test_empty_file_gives_the_embedded_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env={})
    assert config == default_config(env={})
    assert config.mqtt.host == "localhost"
    assert config.mqtt.port == 1883
    assert config.mqtt.qos_alerts == 1
    assert config.ble.adapters == ("hci0",)
    assert config.ble.slots_per_adapter == 5
    assert config.offload.tau_bits == 4.05
    assert config.inference.model == "mnv2-1d-w1.0"
    assert config.inference.heart_rate == "fused"
    assert config.gateway.state_dir == Path("/var/lib/gatewayd")
    assert config.store.path == Path("/var/lib/gatewayd/gatewayd.db")
    assert config.mqtt.password is None
    assert config.logging.level == "info"


def test_gateway_id_defaults_to_the_slugged_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Pi-Room12.local")
    assert default_config(env={}).gateway.id == "pi-room12"


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("raspberrypi", "raspberrypi"),
        ("Pi-Room12.local", "pi-room12"),
        ("ward_3 bay 2", "ward-3-bay-2"),
        ("--", "gatewayd"),
        ("", "gatewayd"),
        ("x" * 80, "x" * 63),
    ],
)
def test_gateway_id_from_hostname(hostname: str, expected: str) -> None:
    assert gateway_id_from_hostname(hostname) == expected


def test_state_directory_from_systemd_sets_state_dir_and_store_path(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env={"STATE_DIRECTORY": "/var/lib/gw:/var/lib/x"})
    assert config.gateway.state_dir == Path("/var/lib/gw")
    assert config.store.path == Path("/var/lib/gw/gatewayd.db")


def test_explicit_state_dir_wins_over_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nstate_dir = "/srv/gw"\n')
    config = load_config(path, env={"STATE_DIRECTORY": "/var/lib/gw"})
    assert config.store.path == Path("/srv/gw/gatewayd.db")


def test_explicit_store_path_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nstate_dir = "/srv/gw"\n[store]\npath = "/data/log.db"\n')
    assert load_config(path, env={}).store.path == Path("/data/log.db")


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        config_dir,
        """
        [gateway]
        state_dir = "state"
        [mqtt]
        username = "gw"
        password_file = "secrets/mqtt-password"
        [mqtt.tls]
        enabled = true
        ca_file = "../ca.pem"
        cert_file = "/abs/client.pem"
        """,
    )
    config = load_config(Path("..") / "etc" / "gatewayd.toml", env={})
    assert config.gateway.state_dir == config_dir / "state"
    assert config.store.path == config_dir / "state" / "gatewayd.db"
    assert config.mqtt.password_file == config_dir / "secrets" / "mqtt-password"
    assert config.mqtt.tls.ca_file == tmp_path / "ca.pem"
    assert config.mqtt.tls.cert_file == Path("/abs/client.pem")
    assert path.exists()


def test_level_and_format_are_case_insensitive(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[logging]\nlevel = "DEBUG"\nformat = "Json"\n'), env={})
    assert (config.logging.level, config.logging.format) == ("debug", "json")


def test_config_is_frozen() -> None:
    config = default_config(env={})
    with pytest.raises(ValidationError):
        config.mqtt.port = 1


def test_loading_never_writes_the_file(tmp_path: Path) -> None:
    text = "# my comments\n[mqtt]\nport = 1884 # stay\n"
    path = write(tmp_path, text)
    before = path.stat().st_mtime_ns
    load_config(path, env={})
    assert path.read_text(encoding="utf-8") == text
    assert path.stat().st_mtime_ns == before


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[mqtt]\nport = 1884\n")
    assert load_config(path, env={}).mqtt.port == 1884


def test_effective_client_id() -> None:
    assert MqttConfig().effective_client_id("room-12") == "gatewayd-room-12"
    assert MqttConfig(client_id="mine").effective_client_id("room-12") == "mine"


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port: expected an integer between 1 and 65535, got 70000"),
        ("[mqtt]\nport = 0\n", "mqtt.port: expected an integer between 1 and 65535, got 0"),
        (
            '[inference]\nmax_batch = "16"\n',
            'inference.max_batch: expected an integer between 1 and 256, got "16" (a string)',
        ),
        (
            "[ble]\nconnect_timeout_s = 0\n",
            "ble.connect_timeout_s: expected a number greater than 0 and at most 120, got 0",
        ),
        (
            "[offload]\nmin_confidence = 1.5\n",
            "offload.min_confidence: expected a number between 0 and 1, got 1.5",
        ),
        ("[offload]\ntau_bits = nan\n", "offload.tau_bits: expected a number between 0 and 16"),
        (
            "[mqtt]\nhomeassistant_discovery = 1\n",
            "mqtt.homeassistant_discovery: expected true or false, got 1 (an integer)",
        ),
        (
            '[logging]\nlevel = "verbose"\n',
            "logging.level: expected one of 'debug', 'info', 'warning', 'error', got \"verbose\"",
        ),
        ("[mqtt]\nqos_alerts = 2\n", "mqtt.qos_alerts: expected 1: alerts are always published"),
        ("mqtt = 5\n", "mqtt: expected a table, got 5 (an integer)"),
        ("[ble]\nadapters = []\n", "ble.adapters: expected at least 1 item(s), got []"),
        ('[ble]\nadapters = ["wlan0"]\n', 'ble.adapters: expected BlueZ adapter names like "hci0"'),
        (
            '[ble]\nadapters = ["hci0", "hci0"]\n',
            "ble.adapters: adapter listed more than once: hci0",
        ),
        ('[ble]\nadapters = ["hci0", 1]\n', "ble.adapters[1]: expected a string, got 1"),
        ('[gateway]\nid = "Room 12"\n', "gateway.id: expected 1 to 63 lower-case letters"),
        ('[gateway]\nid = "-gw"\n', 'got "-gw"'),
        ('[mqtt]\nhost = "mqtt://broker:1883"\n', "mqtt.host: expected a host name or address"),
        (
            '[mqtt]\ntopic_root = "a/#"\n',
            "mqtt.topic_root: expected an MQTT topic without wildcards",
        ),
        ('[mqtt]\ndiscovery_prefix = "ha/"\n', "mqtt.discovery_prefix: expected an MQTT topic"),
        ('[store]\npath = ""\n', "store.path: expected a non-empty path"),
        ("[store]\npath = 5\n", "store.path: expected a path (a string), got 5 (an integer)"),
        (
            '[store]\nsynchronous = "sometimes"\n',
            "store.synchronous: expected one of 'normal', 'full', got \"sometimes\"",
        ),
        ('[mqtt]\npassword_file = "pw"\n', "mqtt.password_file: a password needs mqtt.username"),
        (
            '[mqtt.tls]\nkey_file = "k.pem"\n',
            "mqtt.tls.key_file: a client key needs mqtt.tls.cert_file",
        ),
    ],
)
def test_validation_errors_name_the_key_and_the_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    message = error_for(path)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message  # one problem, one line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[mqtt]\nhots = "x"\n', "unknown key 'mqtt.hots' (did you mean 'mqtt.host'?)"),
        (
            "[mqtt.tls]\nenabeld = true\n",
            "unknown key 'mqtt.tls.enabeld' (did you mean 'mqtt.tls.enabled'?)",
        ),
        ("[mqtt]\ntau_bits = 3.0\n", "unknown key 'mqtt.tau_bits' (it belongs in [offload])"),
        ("[mqt]\nport = 1\n", "unknown section [mqt] (did you mean [mqtt]?)"),
        ("colour = 1\n", "unknown key 'colour'; valid keys in the top level: gateway, logging"),
        (
            "[store]\nzzz = 1\n",
            "unknown key 'store.zzz'; valid keys in [store]: path, retention_days",
        ),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in error_for(write(tmp_path, text))


def test_the_old_activity_lists_fail_saying_what_replaced_them(tmp_path: Path) -> None:
    text = (
        '[rules.activities]\nrest = ["sitting", "driving"]\nlight = ["walking"]\n'
        "min_confidence = 0.5\n"
    )
    path = write(tmp_path, text)
    assert error_for(path) == (
        f"{path}: rules.activities: 'rest' and 'light' (lists of activity names) were replaced"
        " by fixed activity groups: the wearable and the model now report rest, light, vigorous"
        " or unknown themselves, so there is nothing to map. Delete these keys; only"
        " min_confidence remains here (docs/rules.md)"
    )


def test_several_problems_are_listed_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nport = 70000\nhots = 1\n[ble]\nslots_per_adapter = 30\n")
    message = error_for(path)
    assert message.splitlines() == [
        f"{path}: 3 problems:",
        "  - ble.slots_per_adapter: expected an integer between 1 and 20, got 30",
        "  - mqtt.port: expected an integer between 1 and 65535, got 70000",
        "  - unknown key 'mqtt.hots' (did you mean 'mqtt.host'?)",
    ]


def test_password_values_are_never_echoed(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, '[mqtt]\nusername = "u"\npassword = ["hunter2"]\n'))
    assert "mqtt.password: expected a string" in message
    assert "hunter2" not in message


def test_password_and_password_file_are_mutually_exclusive() -> None:
    message = error_for(CONFIGS / "two_passwords.toml")
    assert "mqtt.password: set either mqtt.password or mqtt.password_file, not both" in message
    assert "hunter2" not in message


def test_toml_syntax_error_gives_line_and_column() -> None:
    message = error_for(CONFIGS / "syntax_error.toml")
    assert message == (
        f"{CONFIGS / 'syntax_error.toml'}: invalid TOML at line 4, column 13:"
        " expected '=' after a key in a key/value pair"
    )


def test_toml_error_at_end_of_file(tmp_path: Path) -> None:
    assert "invalid TOML at end of file: invalid value" in error_for(write(tmp_path, "a ="))


def test_missing_file(tmp_path: Path) -> None:
    message = error_for(tmp_path / "absent.toml")
    assert "absent.toml: no such file" in message
    assert "gatewayd.example.toml" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "is a directory" in error_for(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.chmod(0)
    assert "permission denied" in error_for(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[mqtt]\nhost = "caf\xe9"\n'.encode("latin-1"))
    assert "not valid UTF-8 (byte 0xe9 on line 2)" in error_for(path)


# --- secrets -------------------------------------------------------------------------------------


def mqtt_with(tmp_path: Path, extra: str) -> MqttConfig:
    return load_config(write(tmp_path, f'[mqtt]\nusername = "gw"\n{extra}'), env={}).mqtt


def secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"s3cret\n", "s3cret"),
        (b"s3cret", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n\n", "s3cret\n"),  # only one newline is the file's; the rest is the password
        (b" pad ", " pad "),
    ],
)
def test_password_from_file(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "mqtt-password").write_bytes(content)
    mqtt = mqtt_with(tmp_path, 'password_file = "mqtt-password"\n')
    assert secret(resolve_mqtt_password(mqtt, env={})) == expected


def test_password_file_missing_is_a_config_error(tmp_path: Path) -> None:
    mqtt = mqtt_with(tmp_path, 'password_file = "nope"\n')
    with pytest.raises(ConfigError, match=r"nope: mqtt.password_file: no such file"):
        resolve_mqtt_password(mqtt, env={})


def test_empty_password_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_bytes(b"\n")
    mqtt = mqtt_with(tmp_path, 'password_file = "pw"\n')
    with pytest.raises(ConfigError, match="the file is empty"):
        resolve_mqtt_password(mqtt, env={})


@pytest.fixture
def credentials(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "mqtt-password").write_text("from-systemd\n", encoding="utf-8")
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def test_password_from_systemd_credential(tmp_path: Path, credentials: dict[str, str]) -> None:
    mqtt = mqtt_with(tmp_path, "")
    assert secret(resolve_mqtt_password(mqtt, env=credentials)) == "from-systemd"


def test_password_file_wins_over_the_credential(
    tmp_path: Path, credentials: dict[str, str]
) -> None:
    (tmp_path / "pw").write_text("from-file\n", encoding="utf-8")
    mqtt = mqtt_with(tmp_path, 'password_file = "pw"\n')
    assert secret(resolve_mqtt_password(mqtt, env=credentials)) == "from-file"


def test_credential_without_username_is_a_config_error(
    tmp_path: Path, credentials: dict[str, str]
) -> None:
    mqtt = load_config(write(tmp_path, ""), env={}).mqtt
    with pytest.raises(ConfigError, match=r"mqtt\.username is not"):
        resolve_mqtt_password(mqtt, env=credentials)


def test_password_in_config_and_no_password(tmp_path: Path) -> None:
    assert secret(resolve_mqtt_password(mqtt_with(tmp_path, 'password = "pw"\n'), env={})) == "pw"
    assert resolve_mqtt_password(mqtt_with(tmp_path, ""), env={}) is None
    empty_dir = tmp_path / "no-credentials"
    empty_dir.mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(empty_dir)}
    assert resolve_mqtt_password(mqtt_with(tmp_path, ""), env=env) is None


def test_password_is_not_in_the_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[mqtt]\nusername = "u"\npassword = "hunter2"\n'), env={})
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config.model_dump())


def test_config_warnings(tmp_path: Path) -> None:
    assert config_warnings(default_config(env={})) == ()
    path = write(
        tmp_path,
        '[mqtt]\nhost = "broker.example"\nusername = "u"\npassword = "p"\n'
        '[mqtt.tls]\ninsecure = true\nca_file = "ca.pem"\n',
    )
    warnings = config_warnings(load_config(path, env={}))
    assert len(warnings) == 4
    assert any("mqtt.password is stored in the config file" in w for w in warnings)
    assert any("clear text to broker.example" in w for w in warnings)
    assert any("mqtt.tls.insecure" in w for w in warnings)
    assert any("they are unused" in w for w in warnings)


# --- the example file is the reference: it must not drift ----------------------------------------


def model_keys(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel]]:
    """Every leaf key of the config models, dotted, with the model that holds it."""
    keys: dict[str, type[BaseModel]] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.update(model_keys(annotation, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = model
    return keys


def example_keys() -> dict[str, Any]:
    """Keys in the example file, set or commented out (``# key = value``), with their values."""
    keys: dict[str, Any] = {}
    section = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\[([a-z_.]+)\]", line.strip())
        if header:
            section = header[1] + "."
            continue
        candidate = line.removeprefix("#").strip()
        try:
            parsed = tomllib.loads(candidate)
        except tomllib.TOMLDecodeError:
            continue  # prose
        for key, value in parsed.items():
            keys[section + key] = value
    return keys


def test_every_config_key_is_documented_in_the_example() -> None:
    documented = example_keys()
    assert sorted(documented) == sorted(model_keys(Config))


def test_every_key_in_the_example_has_a_comment() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for key in model_keys(Config):
        name = key.rsplit(".", 1)[-1]
        index = next(
            (i for i, line in enumerate(lines) if re.match(rf"^#? ?{name} = ", line)), None
        )
        assert index is not None, f"{key} is missing from {EXAMPLE.name}"
        assert lines[index - 1].startswith("#"), f"{key} has no comment above it"


def test_example_file_values_are_the_defaults() -> None:
    assert load_config(EXAMPLE, env={}) == default_config(env={})


def test_commented_example_values_are_valid() -> None:
    set_keys = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for key, value in example_keys().items():
        *sections, name = key.split(".")
        node = set_keys
        for part in sections:
            node = node.get(part, {})
        if name in node:
            continue  # set, so already validated by test_example_file_values_are_the_defaults
        data: dict[str, Any] = {}
        target = data
        for part in sections:
            target = target.setdefault(part, {})
        target[name] = value
        if key in {"mqtt.password", "mqtt.password_file"}:
            data["mqtt"]["username"] = "gw"
        if key == "mqtt.tls.key_file":
            target["cert_file"] = "client.pem"
        Config.model_validate(data, context={"env": {}})


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("ble", "scan_interval_s = 10.0"),
        ("ble", "mtu_request = 247"),
        ("ble", "allowlist_only = true"),
        ("inference", "max_wait_ms = 5"),
    ],
)
def test_removed_keys_are_refused_with_the_reason(tmp_path: Path, section: str, key: str) -> None:
    path = write(tmp_path, f"[{section}]\n{key}\n")
    name = f"{section}.{key.split(' ', maxsplit=1)[0]}"
    message = error_for(path)
    assert f"'{name}' was removed: " in message
    assert REMOVED_KEYS[name] in message
    assert "delete the line" in message
