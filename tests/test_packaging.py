"""The .deb: `packaging/build-deb.sh` builds it, and it holds what docs/install.md says.

Built once per module, for this machine's architecture, into a temporary directory (about half a
minute: the dependencies come as wheels from the configured index). Then: its contents, conffiles
and dependencies (`dpkg-deb`), an unpacked copy (`dpkg-deb -x` into a scratch root) whose
`/opt/gatewayd/bin/gatewayd --version` works with nothing from this checkout on the path, and its
maintainer scripts run with ``$DPKG_ROOT`` pointing at that root, as `dpkg --root
--force-script-chrootless` runs them: the user is created there, nothing is started, and the
state directory survives remove and upgrade but not purge.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import gatewayd

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "packaging" / "build-deb.sh"
#: The interpreter the package's venv points at: Debian's.
DEBIAN_PYTHON = Path("/usr/bin/python3")

pytestmark = [
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed"),
    pytest.mark.skipif(not DEBIAN_PYTHON.exists(), reason="no /usr/bin/python3 (not Debian)"),
]


@dataclass(frozen=True, slots=True)
class Built:
    deb: Path
    #: The package unpacked with dpkg-deb -x.
    root: Path
    build_dir: Path
    #: Debian's Python, "3.11": the package's site-packages and dependencies follow it.
    minor: tuple[int, int]


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    build_dir = tmp_path_factory.mktemp("deb-build")
    env = dict(os.environ, BUILD_DIR=str(build_dir), PIP=f"{sys.executable} -m pip")
    env.pop("ARCH", None)
    result = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, env=env, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.parent == build_dir, result.stdout
    assert deb.suffix == ".deb", result.stdout
    root = tmp_path_factory.mktemp("scratch-root")
    dpkg_deb("-x", str(deb), str(root))
    version = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return Built(deb, root, build_dir, (int(version[0]), int(version[1])))


def debian_version(version: str) -> str:
    return re.sub(r"\.?(dev|a|b|rc)(\d+)", r"~\1\2", version)


def test_the_control_file_names_version_architecture_and_dependencies(built: Built) -> None:
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    info = dpkg_deb("--info", str(built.deb))
    assert re.search(r"^ Package: gatewayd$", info, re.M), info
    assert f" Version: {debian_version(gatewayd.__version__)}\n" in info
    assert f" Architecture: {arch}\n" in info
    assert built.deb.name == f"gatewayd_{debian_version(gatewayd.__version__)}_{arch}.deb"
    major, minor = built.minor
    depends = dpkg_deb("--field", str(built.deb), "Depends").strip()
    assert f"python3 (>= {major}.{minor})" in depends
    assert f"python3 (<< {major}.{minor + 1})" in depends
    recommends = dpkg_deb("--field", str(built.deb), "Recommends")
    # No python3-systemd: gatewayd speaks sd_notify and journald's protocol itself.
    assert {r.strip() for r in recommends.split(",")} == {"bluez", "dbus", "systemd"}


def test_the_package_holds_the_venv_models_unit_user_and_config(built: Built) -> None:
    listing = dpkg_deb("--contents", str(built.deb))
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    site = f"/opt/gatewayd/lib/python{built.minor[0]}.{built.minor[1]}/site-packages"
    for expected in (
        "/opt/gatewayd/pyvenv.cfg",
        "/opt/gatewayd/bin/gatewayd",
        "/opt/gatewayd/bin/python",
        f"{site}/gatewayd/__init__.py",
        f"{site}/onnxruntime/__init__.py",
        f"{site}/bleak/__init__.py",
        "/usr/lib/systemd/system/gatewayd.service",
        "/usr/lib/sysusers.d/gatewayd.conf",
        "/etc/gatewayd/gatewayd.toml",
        "/usr/share/doc/gatewayd/copyright",
    ):
        assert expected in paths, expected
    models = sorted(p.name for p in (ROOT / "gatewayd" / "models").glob("*.onnx*"))
    assert models, "no shipped models in the checkout"
    for model in models:
        assert f"{site}/gatewayd/models/{model}" in paths, model
    assert f"{site}/systemd" not in paths, "nothing imports systemd-python"
    link = built.root / "usr" / "bin" / "gatewayd"
    assert link.readlink() == Path("/opt/gatewayd/bin/gatewayd")
    unpacked = built.root / "usr" / "lib" / "systemd" / "system" / "gatewayd.service"
    assert unpacked.read_bytes() == (ROOT / "systemd" / "gatewayd.service").read_bytes()
    config = (built.root / "etc" / "gatewayd" / "gatewayd.toml").read_bytes()
    assert config == (ROOT / "config" / "gatewayd.example.toml").read_bytes()
    owners = {line.split()[1] for line in listing.splitlines()}
    assert owners == {"root/root"}, owners


def test_nothing_in_the_package_names_the_build_directory(built: Built) -> None:
    named = [
        path
        for path in (built.root / "opt").rglob("*")
        if path.is_file()
        and not path.is_symlink()
        and str(built.build_dir).encode() in path.read_bytes()
    ]
    assert not named, named


def test_conffiles_and_maintainer_scripts(built: Built, tmp_path: Path) -> None:
    control = tmp_path / "control"
    dpkg_deb("--control", str(built.deb), str(control))
    assert (control / "conffiles").read_text().split() == ["/etc/gatewayd/gatewayd.toml"]
    for script in ("postinst", "prerm", "postrm"):
        path = control / script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True)  # parses as POSIX sh


def test_the_unpacked_gatewayd_runs_from_the_scratch_root(built: Built) -> None:
    command = built.root / "opt" / "gatewayd" / "bin" / "gatewayd"
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(built.root), "LANG": "C.UTF-8"}
    result = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, env=clean, check=False
    )
    assert result.returncode == 0, result.stderr
    assert gatewayd.__version__ in result.stdout
    # The code, the models and onnxruntime come from the unpacked tree, not from this checkout.
    python = built.root / "opt" / "gatewayd" / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "import gatewayd, onnxruntime; print(gatewayd.__file__); print(onnxruntime.__file__)",
        ],
        capture_output=True,
        text=True,
        env=clean,
        check=True,
    )
    for line in probe.stdout.split():
        assert Path(line).is_relative_to(built.root), probe.stdout
    checked = subprocess.run(
        [str(command), "check-config", str(built.root / "etc" / "gatewayd" / "gatewayd.toml")],
        capture_output=True,
        text=True,
        env=clean,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: "), checked.stdout


def run_script(root: Path, control: Path, script: str, *args: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DPKG_ROOT": str(root)}
    result = subprocess.run(
        [str(control / script), *args], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, f"{script} {args}: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def test_maintainer_scripts_in_a_scratch_root_keep_state_until_purge(
    built: Built, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    dpkg_deb("--control", str(built.deb), str(control))
    root = tmp_path / "root"  # a root of its own: remove and purge delete files
    dpkg_deb("-x", str(built.deb), str(root))

    said = run_script(root, control, "postinst", "configure", "")
    assert f"not started: installed into {root}" in said, said
    if shutil.which("systemd-sysusers") is not None:
        passwd = (root / "etc" / "passwd").read_text()
        assert re.search(
            r"^gatewayd:x:\d+:\d+:.*:/var/lib/gatewayd:/usr/sbin/nologin$", passwd, re.M
        )
        bluetooth = re.search(r"^bluetooth:x:\d+:(.*)$", (root / "etc" / "group").read_text(), re.M)
        assert bluetooth is not None
        assert "gatewayd" in bluetooth.group(1).split(",")

    state = root / "var" / "lib" / "gatewayd"
    state.mkdir(parents=True, exist_ok=True)
    (state / "gatewayd.db").write_bytes(b"the event log")
    (state / "devices.json").write_text("{}")
    run_script(root, control, "prerm", "upgrade", "0.0.1")
    run_script(root, control, "postrm", "upgrade", "0.0.1")
    assert (state / "gatewayd.db").read_bytes() == b"the event log"
    run_script(root, control, "prerm", "remove")
    run_script(root, control, "postrm", "remove")
    assert (state / "gatewayd.db").exists()
    assert (state / "devices.json").exists()
    assert not (root / "opt" / "gatewayd").exists(), "remove leaves /opt/gatewayd behind"
    run_script(root, control, "postrm", "purge")
    assert not state.exists()
    assert (root / "etc" / "gatewayd" / "gatewayd.toml").exists(), "dpkg removes conffiles"
