"""A real full disk for tests: a small tmpfs (needs root; skipped with the reason otherwise) and a
filler that takes every free block of it; and a real corrupt event log under a running store.
Shared by the store's tests and the gateway's."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["scribble_over_windows", "small_tmpfs", "take_every_free_block"]


@contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount(8) syntax, e.g. "1m") on ``mount``; unmounted at the end."""
    mount.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the store's tests also use RLIMIT_FSIZE)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def take_every_free_block(filler: Path) -> None:
    """Write ``filler`` until the file system refuses (ENOSPC): the disk is then full."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def scribble_over_windows(path: Path) -> None:
    """Overwrite the pages of the windows table (and its indexes) on disk with garbage, then
    commit an unrelated change from another connection, so that the store's connection drops
    the pages it had cached and reads the garbage: corruption found while running."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # everything in the file
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        try:
            pages = [
                int(p)
                for (p,) in conn.execute(
                    "SELECT pageno FROM dbstat WHERE name IN"
                    " (SELECT name FROM sqlite_schema WHERE tbl_name = 'windows')"
                )
            ]
        except sqlite3.OperationalError as exc:
            pytest.skip(f"this SQLite cannot list a table's pages (dbstat): {exc}")
    finally:
        conn.close()
    assert pages
    with path.open("r+b") as f:
        for page in pages:
            f.seek((page - 1) * page_size)
            f.write(b"\xa5" * page_size)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute(f"PRAGMA user_version = {version}")  # a commit: the WAL header changes
    finally:
        conn.close()
