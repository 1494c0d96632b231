"""The `gatewayd` command line: check-config, exit codes, stubs and the lazy demo hook."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gatewayd import __version__, cli
from gatewayd.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_USAGE, GatewayError
from gatewayd.logs import reset_logging

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "gatewayd.example.toml"
CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAYD_CONFIG", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- check-config --------------------------------------------------------------------------------


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["check-config", str(EXAMPLE)], capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"ok: {EXAMPLE} (gateway id ")
    assert out.endswith(", mqtt localhost:1883, 1 adapter, 0 paired)\n")


def test_check_config_as_a_real_process() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAYD_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "config/gatewayd.example.toml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {EXAMPLE} (gateway id ")
    assert result.stderr == ""


def test_check_config_summary_counts_adapters_and_names_the_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nid = "room-12"\n[ble]\nadapters = ["hci0", "hci1"]\n'
        '[mqtt]\nhost = "broker.lan"\nport = 8883\n',
        encoding="utf-8",
    )
    code, out, _ = run_main(["check-config", str(path)], capsys)
    assert code == 0
    assert out == f"ok: {path} (gateway id room-12, mqtt broker.lan:8883, 2 adapters, 0 paired)\n"


def test_check_config_fails_on_a_paired_device_list_run_could_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n', encoding="utf-8")
    (tmp_path / "devices.json").write_text("{not json", encoding="utf-8")
    code, _, err = run_main(["check-config", str(path)], capsys)
    assert code == 1
    assert "not a paired-device list" in err


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad_port.toml", "mqtt.port: expected an integer between 1 and 65535, got 70000"),
        ("unknown_key.toml", "unknown key 'mqtt.hots' (did you mean 'mqtt.host'?)"),
        ("syntax_error.toml", "invalid TOML at line 4, column 13"),
        ("two_passwords.toml", "mqtt.password: set either mqtt.password or mqtt.password_file"),
        ("bad_gateway_id.toml", "gateway.id: expected 1 to 63 lower-case letters"),
        ("wrong_type.toml", 'inference.max_batch: expected an integer between 1 and 256, got "16"'),
    ],
)
def test_check_config_rejects_broken_files_with_exit_78(
    name: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = CONFIGS / name
    code, out, err = run_main(["check-config", str(path)], capsys)
    assert code == EXIT_CONFIG == 78
    assert out == ""
    assert err.startswith(f"gatewayd: error: {path}: {expected}")
    assert err.count("\n") == 1  # one line


def test_check_config_as_a_real_process_fails_with_78() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", str(CONFIGS / "bad_port.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "bad_port.toml: mqtt.port: expected an integer" in result.stderr
    assert result.stdout == ""


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["check-config", str(tmp_path / "nope.toml")], capsys)
    assert code == 78
    assert f"{tmp_path / 'nope.toml'}: no such file" in err


def test_check_config_reads_the_password_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[mqtt]\nusername = "gw"\npassword_file = "missing"\n', encoding="utf-8")
    code, _, err = run_main(["check-config", str(path)], capsys)
    assert code == 78
    assert "mqtt.password_file: no such file" in err


def test_check_config_prints_warnings_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[mqtt]\nusername = "gw"\npassword = "hunter2"\n', encoding="utf-8")
    code, out, err = run_main(["check-config", str(path)], capsys)
    assert code == 0
    assert out.startswith("ok: ")
    assert "gatewayd: warning: mqtt.password is stored in the config file" in err
    assert "hunter2" not in out + err


def test_check_config_defaults_to_the_config_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_main(["--config", str(CONFIGS / "bad_port.toml"), "check-config"], capsys)
    assert code == 78
    assert out == ""


def test_config_option_defaults_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAYD_CONFIG", str(EXAMPLE))
    code, out, _ = run_main(["check-config"], capsys)
    assert code == 0
    assert out.startswith(f"ok: {EXAMPLE} ")


def test_config_option_default_is_etc() -> None:
    args = cli.build_parser().parse_args(["run"])
    assert args.config == "/etc/gatewayd/gatewayd.toml"


def test_global_options_are_accepted_after_the_subcommand() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["--log-level", "debug", "check-config", "x.toml"])
    assert (args.log_level, args.log_format, args.path) == ("debug", None, "x.toml")
    args = parser.parse_args(["--log-level", "debug", "check-config", "--log-format", "JSON"])
    assert (args.log_level, args.log_format) == ("debug", "json")


# --- general options and exit codes --------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0
    assert out == f"gatewayd {__version__}\n"


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for command in ("check-config", "run", "pair", "devices", "events", "emulate", "demo"):
        assert command in out


@pytest.mark.parametrize(
    "argv",
    [[], ["no-such-command"], ["check-config", "a", "b"], ["--log-level", "loud", "run"]],
)
def test_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == EXIT_USAGE == 64
    assert "error:" in err


def test_events_without_an_event_log_exits_69(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # More in tests/test_cli_events.py.
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
    try:
        code, out, err = run_main(["--config", str(config), "events"], capsys)
    finally:
        reset_logging()
    assert code == EXIT_UNAVAILABLE == 69
    assert out == ""
    assert err.startswith("gatewayd events: no event log at ")
    assert err.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_gateway_error_from_a_command_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(_args: argparse.Namespace) -> int:
        raise GatewayError("the broker said no")

    monkeypatch.setattr(cli, "cmd_run", failing)
    code, _, err = run_main(["run"], capsys)
    assert code == 1
    assert err == "gatewayd: error: the broker said no\n"


def test_keyboard_interrupt_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_events", interrupted)
    assert run_main(["events"], capsys) == (130, "", "")


def test_load_config_from_args_applies_the_log_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[logging]\nlevel = "warning"\nformat = "console"\n', encoding="utf-8")
    args = cli.build_parser().parse_args(["--config", str(path), "--log-level", "debug", "run"])
    try:
        config = cli.load_config_from_args(args, env={})
        assert config.logging.level == "warning"
        assert logging.getLogger().level == logging.DEBUG  # --log-level wins
    finally:
        reset_logging()


@pytest.mark.parametrize(
    "argv",
    [
        ["--state-dir", "{d}", "run"],
        ["run", "--state-dir", "{d}"],
        ["events", "--state-dir", "{d}"],
        ["doctor", "--state-dir", "{d}"],
        ["pair", "--state-dir", "{d}"],
        ["devices", "--state-dir", "{d}", "list"],
        ["devices", "list", "--state-dir", "{d}"],
    ],
)
def test_state_dir_is_one_global_option_that_moves_the_event_log_too(
    tmp_path: Path, argv: list[str]
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f'[gateway]\nstate_dir = "{tmp_path / "from-file"}"\n', encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    args = cli.build_parser().parse_args(
        ["--config", str(path), *(a.format(d=elsewhere) for a in argv)]
    )
    try:
        config = cli.load_config_from_args(args, env={})
    finally:
        reset_logging()
    assert config.gateway.state_dir == elsewhere
    assert config.store.path == elsewhere / "gatewayd.db"


# --- demo: provided by gatewayd.demo, imported lazily -------------------------------------------


class FakeDemo(types.ModuleType):
    """A stand-in gatewayd.demo exposing the agreed hook: add_arguments + run."""

    def __init__(self) -> None:
        super().__init__("gatewayd.demo")
        self.received: argparse.Namespace | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seed", type=int, default=1)

    def run(self, args: argparse.Namespace) -> int:
        self.received = args
        return 7


def test_demo_runs_the_demo_module_with_its_own_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeDemo()
    monkeypatch.setitem(sys.modules, "gatewayd.demo", fake)
    code, _, _ = run_main(["--log-level", "debug", "demo", "--seed", "42"], capsys)
    assert code == 7
    assert fake.received is not None
    assert fake.received.seed == 42
    assert fake.received.log_level == "debug"  # global options reach the demo too


def test_demo_help_comes_from_the_demo_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gatewayd.demo", FakeDemo())
    code, out, _ = run_main(["demo", "--help"], capsys)
    assert code == 0
    assert "--seed" in out


def test_demo_bad_argument_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gatewayd.demo", FakeDemo())
    code, _, err = run_main(["demo", "--seed", "many"], capsys)
    assert code == 64
    assert "gatewayd demo: error:" in err


def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    # `gatewayd events | head -1`: stdout's reader closes the pipe while the command writes.
    script = (
        "import sys; from gatewayd import cli;"
        " cli.cmd_check_config = lambda args: print('line\\n' * 200_000) or 0;"
        " sys.exit(cli.main(['check-config']))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline() == b"line\n"
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err, err
