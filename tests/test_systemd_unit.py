"""systemd/gatewayd.service and gatewayd.sysusers.conf, checked by systemd's own tools.

`systemd-analyze verify` parses the unit as systemd would; `systemd-analyze security --offline`
scores its hardening, and the score must be the one docs/install.md records; `systemd-sysusers
--root` creates the service user in a scratch root. The settings the code relies on (the
credential name, the exit code not to restart on, the state and config directories, the
shutdown bounds) are checked against the code's own constants. The tools are skipped with a
reason where absent: installing systemd on a machine without it would upgrade libsystemd0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.app import ShutdownTimeouts
from gatewayd.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, MQTT_PASSWORD_CREDENTIAL
from gatewayd.errors import EXIT_CONFIG

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "gatewayd.service"
SYSUSERS = ROOT / "systemd" / "gatewayd.sysusers.conf"
INSTALL_DOC = ROOT / "docs" / "install.md"
#: Where the .deb puts the command the unit runs (tests/test_packaging.py checks the .deb).
PACKAGED_COMMAND = "/usr/bin/gatewayd"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (part of systemd; not installed by the tests because"
    " it would upgrade libsystemd0 to match)",
)


def settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, by key, in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    """A systemd time span such as ``45s``, ``10min`` or ``2min 30s``, in seconds."""
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def runnable_copy(directory: Path) -> Path:
    """The unit with ExecStart's program replaced by this checkout's gatewayd (nothing else).

    `systemd-analyze verify` requires the program to exist; /usr/bin/gatewayd exists only once
    the .deb is installed.
    """
    text = UNIT.read_text(encoding="utf-8")
    program = Path(sys.executable).parent / "gatewayd"
    copy = directory / UNIT.name
    copy.write_text(
        text.replace(f"ExecStart={PACKAGED_COMMAND} ", f"ExecStart={program} "), encoding="utf-8"
    )
    return copy


def test_the_unit_says_what_the_code_expects() -> None:
    unit = settings(UNIT.read_text(encoding="utf-8"))
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]  # gatewayd sends from its main process
    assert unit["ExecStart"] == [f"{PACKAGED_COMMAND} run --config {DEFAULT_CONFIG_PATH}"]
    assert unit["Restart"] == ["on-failure"]
    assert str(EXIT_CONFIG) in unit["RestartPreventExitStatus"][0].split()
    assert seconds(unit["WatchdogSec"][0]) > 0
    stop = ShutdownTimeouts()
    assert seconds(unit["TimeoutStopSec"][0]) > stop.total_s
    assert unit["User"] == ["gatewayd"]
    assert "bluetooth" in unit["SupplementaryGroups"][0].split()
    assert unit["StateDirectory"] == [DEFAULT_STATE_DIR.name]
    assert unit["ConfigurationDirectory"] == [DEFAULT_CONFIG_PATH.parent.name]
    credential, _, _source = unit["LoadCredential"][0].partition(":")
    assert credential == MQTT_PASSWORD_CREDENTIAL
    assert "bluetooth.service" in unit["After"][0].split()
    # bleak reaches BlueZ over the system D-Bus: a unix socket must stay allowed.
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0].split()
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[hardening] == ["yes"], hardening
    assert unit["ProtectSystem"] == ["strict"]
    assert "@system-service" in unit["SystemCallFilter"]
    assert "MemoryMax" in unit


def test_the_service_user_is_created_in_group_bluetooth(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers not installed (part of systemd)")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "-"],
        input=SYSUSERS.read_bytes(),
        check=True,
        capture_output=True,
    )
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "group").read_text(encoding="utf-8").splitlines()
    }
    user = passwd["gatewayd"]
    assert user[6] == "/usr/sbin/nologin"
    assert user[5] == str(DEFAULT_STATE_DIR)
    assert user[3] == groups["gatewayd"][2], "the user's primary group is its own"
    assert "gatewayd" in groups["bluetooth"][3].split(",")


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(runnable_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "gatewayd.service" not in result.stderr, result.stderr  # no warning about our unit


def exposure(unit: Path) -> str:
    """The overall exposure level `systemd-analyze security --offline=yes` gives ``unit``."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    return found.group(1)


@needs_analyze
def test_the_hardening_score_is_the_one_docs_install_md_records(tmp_path: Path) -> None:
    ours = exposure(runnable_copy(tmp_path))
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    bare = bare_dir / UNIT.name
    bare.write_text(f"[Service]\nExecStart={Path(sys.executable).parent / 'gatewayd'} run\n")
    before = exposure(bare)
    assert float(ours) < 2.0, f"exposure {ours}: the hardening was weakened"
    doc = INSTALL_DOC.read_text(encoding="utf-8")
    recorded = re.search(r"exposure: (\d+\.\d) \S+ before, (\d+\.\d) \S+ after", doc)
    assert recorded is not None, "docs/install.md does not record the exposure scores"
    assert recorded.groups() == (before, ours), (
        f"docs/install.md records {recorded.groups()}, systemd-analyze says {(before, ours)}"
    )
