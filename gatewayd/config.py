"""The configuration file: one TOML file validated once, at the edge, into frozen models.

Every key has a default, so an empty file (or no file, via `default_config`) is a working
configuration. Unknown keys are errors, the user's file is never written back, and every
error becomes one `ConfigError` naming the file, the dotted key and what was expected.

Loading is pure: the environment (systemd's ``$STATE_DIRECTORY``, ``$CREDENTIALS_DIRECTORY``)
is passed in as a mapping, and relative paths are resolved against the config file's directory.
config/gatewayd.example.toml documents every key; a test keeps it in step with these models.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Annotated, Any, Final, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from gatewayd.errors import ConfigError
from gatewayd.rules.config import RulesConfig

__all__ = [
    "CREDENTIALS_DIRECTORY_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "MQTT_PASSWORD_CREDENTIAL",
    "STATE_DIRECTORY_ENV",
    "BleConfig",
    "Config",
    "GatewayConfig",
    "InferenceConfig",
    "LoggingConfig",
    "MqttConfig",
    "OffloadConfig",
    "StoreConfig",
    "TlsConfig",
    "config_warnings",
    "default_config",
    "gateway_id_from_hostname",
    "load_config",
    "resolve_mqtt_password",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/gatewayd/gatewayd.toml")
DEFAULT_STATE_DIR: Final = Path("/var/lib/gatewayd")
DEFAULT_DB_NAME: Final = "gatewayd.db"
#: Set by systemd for units with StateDirectory=; may list several directories, colon-separated.
STATE_DIRECTORY_ENV: Final = "STATE_DIRECTORY"
#: Set by systemd for units with LoadCredential=/SetCredential=.
CREDENTIALS_DIRECTORY_ENV: Final = "CREDENTIALS_DIRECTORY"
#: The credential name the unit loads the MQTT password under: LoadCredential=mqtt-password:...
MQTT_PASSWORD_CREDENTIAL: Final = "mqtt-password"  # noqa: S105 - a name, not a secret

_GATEWAY_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ADAPTER_RE: Final = re.compile(r"^hci[0-9]{1,3}$")
_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def gateway_id_from_hostname(hostname: str) -> str:
    """Slug a host name into a gateway id: first label, lower case, [a-z0-9-], at most 63 chars."""
    label = hostname.strip().split(".", 1)[0].lower()
    slug = re.sub(r"[^a-z0-9]+", "-", label).strip("-")[:63].rstrip("-")
    return slug or "gatewayd"


def _default_gateway_id() -> str:
    return gateway_id_from_hostname(socket.gethostname())


# --- reusable field types ----------------------------------------------------------------------


def _check_path_input(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("expected a non-empty path")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if isinstance(base, Path) and not value.is_absolute():
        # Lexical normalisation, like the shell's `cd ..`: "../ca.pem" next to the config file.
        return Path(os.path.normpath(base / value))
    return value


#: A filesystem path; relative paths are resolved against the config file's directory.
ConfigPath = Annotated[
    Path,
    Field(strict=False),
    BeforeValidator(_check_path_input),
    AfterValidator(_resolve_path),
]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _check_topic(value: str) -> str:
    if any(c in value for c in "+#\0"):
        raise ValueError(
            f"expected an MQTT topic without wildcards '+' or '#', got {_toml_repr(value)}"
        )
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(
            "expected an MQTT topic without leading, trailing or empty levels,"
            f" got {_toml_repr(value)}"
        )
    return value


def _check_qos_alerts(value: object) -> object:
    if value != 1 or isinstance(value, bool):
        raise ValueError(
            "expected 1: alerts are always published at QoS 1 (at least once; subscribers drop"
            f" duplicates by event id), got {_toml_repr(value)}"
        )
    return value


MqttTopic = Annotated[str, Field(min_length=1), AfterValidator(_check_topic)]


class _Section(BaseModel):
    # strict: TOML already has types, so "1883" for an integer is a mistake worth reporting.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- sections ----------------------------------------------------------------------------------


class GatewayConfig(_Section):
    """[gateway]: who this gateway is and where it keeps its state."""

    id: str = Field(default_factory=_default_gateway_id)
    state_dir: ConfigPath = DEFAULT_STATE_DIR

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _GATEWAY_ID_RE.fullmatch(value):
            raise ValueError(
                "expected 1 to 63 lower-case letters, digits or '-', starting with a letter or"
                f" digit (it becomes part of MQTT topics), got {_toml_repr(value)}"
            )
        return value


class LoggingConfig(_Section):
    """[logging]: level and output format (see gatewayd.logs)."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["auto", "console", "json", "journald"], BeforeValidator(_lower)] = (
        "auto"
    )


class BleConfig(_Section):
    """[ble]: adapters, connection slots and scanning."""

    adapters: Annotated[tuple[str, ...], Field(strict=False, min_length=1)] = ("hci0",)
    slots_per_adapter: int = Field(default=5, ge=1, le=20)
    connect_timeout_s: float = Field(default=20.0, gt=0, le=120, allow_inf_nan=False)
    acquire_notify: bool = True

    @field_validator("adapters")
    @classmethod
    def _check_adapters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ADAPTER_RE.fullmatch(name):
                raise ValueError(
                    f'expected BlueZ adapter names like "hci0", got {_toml_repr(name)}'
                )
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"adapter listed more than once: {', '.join(duplicates)}")
        return value


class OffloadConfig(_Section):
    """[offload]: when a wearable sends the raw window instead of its own answer."""

    # The defaults are gatewayd.signals.offload.DEFAULT_TAU_MBITS / DEFAULT_MIN_CONF_E4, chosen
    # leave-one-subject-out on real recordings (docs/eval.md).
    tau_bits: float = Field(default=4.05, ge=0, le=16, allow_inf_nan=False)
    min_confidence: float = Field(default=0.325, ge=0, le=1, allow_inf_nan=False)


class InferenceConfig(_Section):
    """[inference]: the full model the gateway runs on offloaded windows, and its batching."""

    model: NonEmptyStr = "mnv2-1d-w1.0"
    #: How the heart rate of an offloaded window is chosen (docs/eval.md): "fused" takes the
    #: wearable's own estimate (its tracker, in the window's summary) unless the full model's
    #: confidence beats the wearable's signal quality by more than hr_model_margin and that
    #: quality is below hr_signal_trusted (above 1: no ceiling); "signal" always the wearable's;
    #: "model" always the model's.
    heart_rate: Literal["fused", "signal", "model"] = "fused"
    #: 0.5: chosen leave-one-subject-out on real recordings (docs/accuracy.md).
    hr_model_margin: float = Field(default=0.5, ge=-1, le=1, allow_inf_nan=False)
    hr_signal_trusted: float = Field(default=1.01, ge=0, le=1.01, allow_inf_nan=False)
    #: The margin instead of hr_model_margin where the wearable's estimate coincides with the
    #: wrist's own rhythm (half, once or twice the ACC cadence); None: no such rule.
    hr_cadence_margin: float | None = Field(default=None, ge=-1, le=1, allow_inf_nan=False)
    max_batch: int = Field(default=16, ge=1, le=256)
    queue_size: int = Field(default=256, ge=1, le=65536)
    threads: int = Field(default=1, ge=1, le=64)


class StoreConfig(_Section):
    """[store]: the SQLite event log and how long it keeps things."""

    # The default is filled in from gateway.state_dir by Config, see _derive_defaults.
    path: ConfigPath = DEFAULT_STATE_DIR / DEFAULT_DB_NAME
    retention_days: int = Field(default=30, ge=1, le=3650)
    max_size_mb: int = Field(default=1024, ge=1, le=1_048_576)
    keep_raw_windows: bool = False
    raw_retention_hours: int = Field(default=24, ge=1, le=87_600)
    #: SQLite's synchronous: "normal" survives a crash of gatewayd, "full" (an fsync per
    #: commit) a power loss too (docs/store.md, "Durability").
    synchronous: Annotated[Literal["normal", "full"], BeforeValidator(_lower)] = "normal"


class TlsConfig(_Section):
    """[mqtt.tls]: TLS to the broker."""

    enabled: bool = False
    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    insecure: bool = False

    @field_validator("key_file")
    @classmethod
    def _key_needs_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("cert_file") is None:
            raise ValueError("a client key needs mqtt.tls.cert_file as well")
        return value


class MqttConfig(_Section):
    """[mqtt]: the broker, the topic tree, credentials and Home Assistant discovery."""

    host: NonEmptyStr = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_root: MqttTopic = "gatewayd"
    client_id: NonEmptyStr | None = None
    keepalive_s: int = Field(default=60, ge=5, le=65535)
    qos_alerts: Annotated[Literal[1], BeforeValidator(_check_qos_alerts)] = 1
    tls: TlsConfig = Field(default_factory=TlsConfig)
    username: NonEmptyStr | None = None
    password_file: ConfigPath | None = None
    password: SecretStr | None = None
    homeassistant_discovery: bool = False
    discovery_prefix: MqttTopic = "homeassistant"

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if "://" in value or "/" in value:
            raise ValueError(
                "expected a host name or address without scheme or path (use mqtt.port and"
                f" mqtt.tls.enabled), got {_toml_repr(value)}"
            )
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file_needs_user(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("username") is None:
            raise ValueError("a password needs mqtt.username as well (MQTT 3.1.1 §3.1.2.9)")
        return value

    @field_validator("password")
    @classmethod
    def _one_password_source(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is None:
            return value
        if info.data.get("password_file") is not None:
            raise ValueError(
                "set either mqtt.password or mqtt.password_file, not both"
                " (prefer password_file or the systemd credential 'mqtt-password')"
            )
        if info.data.get("username") is None:
            raise ValueError("a password needs mqtt.username as well (MQTT 3.1.1 §3.1.2.9)")
        return value

    def effective_client_id(self, gateway_id: str) -> str:
        """The MQTT client id: `client_id` if set, else ``gatewayd-<gateway id>``."""
        return self.client_id or f"gatewayd-{gateway_id}"


class Config(_Section):
    """The whole validated configuration."""

    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    ble: BleConfig = Field(default_factory=BleConfig)
    offload: OffloadConfig = Field(default_factory=OffloadConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)

    @model_validator(mode="before")
    @classmethod
    def _derive_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill defaults that depend on the environment or on other keys, before validation.

        gateway.state_dir falls back to systemd's $STATE_DIRECTORY, store.path to
        <state_dir>/gatewayd.db. Anything malformed is left alone for validation to report.
        """
        if not isinstance(data, Mapping):
            return data
        env = (info.context or {}).get("env") or {}
        data = dict(data)
        gateway = data.get("gateway", {})
        if isinstance(gateway, Mapping):
            gateway = dict(gateway)
            state_dirs = env.get(STATE_DIRECTORY_ENV, "")
            if "state_dir" not in gateway and state_dirs.split(":", 1)[0]:
                gateway["state_dir"] = state_dirs.split(":", 1)[0]
            data["gateway"] = gateway
            state_dir = gateway.get("state_dir", DEFAULT_STATE_DIR)
        elif isinstance(gateway, GatewayConfig):
            state_dir = gateway.state_dir
        else:
            return data
        store = data.get("store", {})
        if (
            isinstance(store, Mapping)
            and "path" not in store
            and isinstance(state_dir, str | PurePath)
            and str(state_dir).strip()
        ):
            data["store"] = {**store, "path": str(PurePath(state_dir) / DEFAULT_DB_NAME)}
        return data


# --- loading -----------------------------------------------------------------------------------


def default_config(env: Mapping[str, str] | None = None) -> Config:
    """The embedded defaults, as an empty config file would give (env: default os.environ)."""
    return _validate({}, source=None, env=os.environ if env is None else env)


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    state_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Read and validate one TOML config file; raise ConfigError with one human message.

    ``env`` supplies $STATE_DIRECTORY (default: os.environ, read here at the edge and nowhere
    deeper). Relative paths in the file are resolved against the file's directory.
    ``state_dir`` (the command line's --state-dir) replaces ``gateway.state_dir``; the event
    log moves with it unless the file sets ``store.path`` itself.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            source,
            "no such file; copy config/gatewayd.example.toml there, or pass --config PATH"
            " (or set $GATEWAYD_CONFIG)",
        ) from None
    except IsADirectoryError:
        raise ConfigError(source, "is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(
            source, "permission denied; the file must be readable by the user gatewayd runs as"
        ) from None
    except OSError as exc:
        raise ConfigError(source, f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            source,
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); TOML files must be"
            " UTF-8",
        ) from None
    # Editors on some systems prepend a byte-order mark; TOML forbids it, we quietly allow it.
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, _describe_toml_error(exc)) from None
    if state_dir is not None:
        gateway = data.get("gateway")
        data["gateway"] = {**(gateway if isinstance(gateway, dict) else {}),
                           "state_dir": str(Path(state_dir).absolute())}  # fmt: skip
    return _validate(data, source=source, env=os.environ if env is None else env)


def _validate(data: dict[str, Any], *, source: Path | None, env: Mapping[str, str]) -> Config:
    context = {
        "env": env,
        "base_dir": Path(os.path.normpath(source.absolute())).parent if source else None,
    }
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        message = _describe_validation_error(exc)
        raise ConfigError(source if source is not None else "<defaults>", message) from None


_TOML_POSITION_RE: Final = re.compile(
    r"^(?P<msg>.*?)\s*\((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$",
    re.DOTALL,
)


def _describe_toml_error(exc: tomllib.TOMLDecodeError) -> str:
    text = str(exc)
    match = _TOML_POSITION_RE.match(text)
    if match is None:
        return f"invalid TOML: {text}"
    msg = match["msg"]
    msg = msg[:1].lower() + msg[1:]
    where = f"line {match['line']}, column {match['col']}" if match["line"] else "end of file"
    return f"invalid TOML at {where}: {msg}"


# --- turning pydantic errors into one human message --------------------------------------------


def _describe_validation_error(exc: ValidationError) -> str:
    problems = [_describe_error(error) for error in exc.errors(include_url=False)]
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that holds the key at ``loc`` (its parent), or None."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = _unwrap(model.model_fields[part].annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return (
            "["
            + ", ".join(_toml_repr(v) for v in value[:5])
            + (", ...]" if len(value) > 5 else "]")
        )
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value)


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a float"}
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return names.get(type(value), f"a {type(value).__name__}")


def _number_expectation(loc: tuple[int | str, ...]) -> str | None:
    """'an integer between 1 and 65535' for a numeric field, from its annotated bounds."""
    model = _model_at(loc)
    key = loc[-1]
    if model is None or not isinstance(key, str) or key not in model.model_fields:
        return None
    field = model.model_fields[key]
    kind = {int: "an integer", float: "a number"}.get(_unwrap(field.annotation))
    if kind is None:
        return None
    bounds: dict[str, object] = {}
    for meta in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if hasattr(meta, name) and isinstance(meta, annotated_types.BaseMetadata):
                bounds[name] = getattr(meta, name)
    low = "ge" if "ge" in bounds else "gt" if "gt" in bounds else None
    high = "le" if "le" in bounds else "lt" if "lt" in bounds else None
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    if low == "ge" and high == "le":
        return f"{kind} between {bounds['ge']} and {bounds['le']}"
    parts = [f"{words[b]} {bounds[b]}" for b in (low, high) if b is not None]
    return f"{kind} {' and '.join(parts)}" if parts else kind


_NUMBER_ERRORS: Final = frozenset(
    {
        "int_type",
        "int_parsing",
        "int_from_float",
        "float_type",
        "float_parsing",
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    }
)

#: pydantic error type -> what the user should have written. Type errors also name the TOML
#: type they did write ("got "1883" (a string)").
_EXPECTATIONS: Final[Mapping[str, str]] = {
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "an array",
    "tuple_type": "an array",
    "path_type": "a path (a string)",
    "model_type": "a table",
    "dict_type": "a table",
    "model_attributes_type": "a table",
    "string_too_short": "a non-empty string",
}


def _describe_error(error: ErrorDetails) -> str:
    """One line for one pydantic error: 'mqtt.port: expected ..., got 70000'."""
    loc = tuple(error["loc"])
    key = _dotted(loc)
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _describe_unknown_key(loc, value)
    if kind == "value_error":
        return f"{key}: {ctx.get('error', error['msg'])}"

    expected: str | None = _EXPECTATIONS.get(kind)
    if kind in _NUMBER_ERRORS:
        expected = _number_expectation(loc)
    elif kind == "too_short":
        expected = f"at least {ctx.get('min_length', 1)} item(s)"
    elif kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        expected = f"one of {expected}" if "," in expected else expected
    if expected is None:
        msg = error["msg"]
        expected = f"{msg[:1].lower()}{msg[1:]}".removeprefix("input should be ")

    # Never echo what was written under a password key: it may be the password.
    if any(isinstance(p, str) and "password" in p for p in loc):
        return f"{key}: expected {expected}"
    got = _toml_repr(value)
    if kind.endswith(("_type", "_parsing", "_from_float")):
        got += f" ({_toml_type(value)})"
    return f"{key}: expected {expected}, got {got}"


#: Keys earlier versions accepted and never honoured, and why they are gone.
REMOVED_KEYS: Final[dict[str, str]] = {
    "ble.scan_interval_s": "BlueZ scans continuously while the gateway waits for a wearable;"
    " there is no interval to set",
    "ble.mtu_request": "BlueZ negotiates the largest MTU both sides support by itself; a"
    " client cannot ask for one",
    "ble.allowlist_only": "the gateway only ever connects to devices paired with `gatewayd"
    " pair` (docs/pairing.md)",
    "inference.max_wait_ms": "the inference worker never waits for a fuller batch: it runs what"
    " is queued as soon as it is free (up to inference.max_batch)",
}


def _describe_unknown_key(loc: tuple[int | str, ...], value: Any) -> str:
    key = _dotted(loc)
    if key in REMOVED_KEYS:
        return f"'{key}' was removed: {REMOVED_KEYS[key]}; delete the line"
    name = loc[-1]
    is_section = isinstance(value, dict)
    what = f"unknown section [{key}]" if is_section else f"unknown key '{key}'"
    model = _model_at(loc)
    if model is None or not isinstance(name, str):
        return what
    prefix = _dotted(loc[:-1])
    valid = list(model.model_fields)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        suggestion = f"{prefix}.{close[0]}" if prefix else close[0]
        return f"{what} (did you mean {f'[{suggestion}]' if is_section else repr(suggestion)}?)"
    # A valid key in the wrong section is a common slip: say where it belongs.
    for section, field in Config.model_fields.items():
        sub = _unwrap(field.annotation)
        if isinstance(sub, type) and issubclass(sub, BaseModel) and name in sub.model_fields:
            return f"{what} (it belongs in [{section}])"
    where = f"[{prefix}]" if prefix else "the top level"
    return f"{what}; valid keys in {where}: {', '.join(valid)}"


# --- use-time helpers --------------------------------------------------------------------------


def resolve_mqtt_password(
    mqtt: MqttConfig, env: Mapping[str, str] | None = None
) -> SecretStr | None:
    """Find the MQTT password at use time: password_file, then password, then the credential.

    The systemd credential is ``$CREDENTIALS_DIRECTORY/mqtt-password`` (LoadCredential=); like
    the other two it needs mqtt.username. One trailing newline is stripped from files. Raises
    ConfigError if a named file is unreadable or empty.
    Blocking file read: call it at start-up or from an executor, not from the event loop.
    """
    if mqtt.password_file is not None:
        return _read_secret(mqtt.password_file, "mqtt.password_file")
    if mqtt.password is not None:
        return mqtt.password
    env = os.environ if env is None else env
    directory = env.get(CREDENTIALS_DIRECTORY_ENV)
    if not directory:
        return None
    credential = Path(directory) / MQTT_PASSWORD_CREDENTIAL
    if not credential.exists():
        return None
    if mqtt.username is None:
        raise ConfigError(
            credential,
            f"the systemd credential '{MQTT_PASSWORD_CREDENTIAL}' is set but mqtt.username is"
            " not; set mqtt.username in the config file",
        )
    return _read_secret(credential, f"the systemd credential '{MQTT_PASSWORD_CREDENTIAL}'")


def _read_secret(path: Path, what: str) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, f"{what}: no such file") from None
    except PermissionError:
        raise ConfigError(
            path, f"{what}: permission denied; it must be readable by the user gatewayd runs as"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(path, f"{what}: not valid UTF-8") from None
    except OSError as exc:
        raise ConfigError(path, f"{what}: cannot read: {exc.strerror or exc}") from exc
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(path, f"{what}: the file is empty")
    return SecretStr(text)


def config_warnings(config: Config) -> tuple[str, ...]:
    """Valid but unwise settings, one sentence each, for `check-config` and the start-up log."""
    warnings: list[str] = []
    mqtt = config.mqtt
    if mqtt.password is not None:
        warnings.append(
            "mqtt.password is stored in the config file; prefer mqtt.password_file or the systemd"
            " credential 'mqtt-password'"
        )
    if mqtt.tls.insecure:
        warnings.append("mqtt.tls.insecure = true: the broker's certificate is not verified")
    has_password = mqtt.password is not None or mqtt.password_file is not None
    if has_password and not mqtt.tls.enabled and mqtt.host not in _LOCAL_HOSTS:
        warnings.append(
            f"the MQTT password is sent in clear text to {mqtt.host}; set mqtt.tls.enabled = true"
        )
    if not mqtt.tls.enabled and any(
        p is not None for p in (mqtt.tls.ca_file, mqtt.tls.cert_file, mqtt.tls.key_file)
    ):
        warnings.append("mqtt.tls files are set but mqtt.tls.enabled = false: they are unused")
    return tuple(warnings)
