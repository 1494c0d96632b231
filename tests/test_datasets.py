"""gatewayd.datasets: `Recording`, the PPG-DaLiA reader (restricted unpickler, cache), discovery.

The E4, TROIKA and synthetic-generator tests are in test_datasets_*.py.
"""

from __future__ import annotations

import codecs
import copy
import io
import os
import pickle
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from scipy import io as sio

from gatewayd.activity import ActivityGroup
from gatewayd.datasets import (
    DALIA_ACTIVITY_NAMES,
    NO_LABEL,
    DatasetError,
    Recording,
    find_recordings,
    flat_bvp,
    generate_subject,
    load,
    load_dalia,
    write_subject,
    write_synthetic_dataset,
)
from gatewayd.datasets.dalia import cache_path_for, default_cache_dir, restricted_load
from gatewayd.errors import GatewayError

MINUTES = 3.0


# --- helpers -----------------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (STRING / BINSTRING), like the real files.

    PPG-DaLiA was pickled by Python 2; its files need ``encoding="latin1"``. Protocol 0 of this
    pickler is about 2.8x the data size, which is what makes the real files 1.2-1.7 GB.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # noqa: RUF012 - mirrors the base class

    def _save_py2str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if self.proto == 0:
            self.write(b"S'" + codecs.escape_encode(data)[0] + b"'\n")
        elif len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2str
    dispatch[str] = _save_py2str


def py2_pickle(obj: object, protocol: int) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


class CountingOpener:
    """An injected opener that counts how often the pickle is opened."""

    def __init__(self) -> None:
        self.opened: list[Path] = []

    def __call__(self, path: Path) -> IO[bytes]:
        self.opened.append(path)
        return path.open("rb")


@pytest.fixture(scope="module")
def tree() -> dict[str, Any]:
    """A small synthetic subject in the PPG-DaLiA layout (without the synthetic marker)."""
    data = generate_subject(1, MINUTES, seed=11, events=[("fall", 120.0, 20.0)])
    data.pop("gatewayd_synthetic")
    return data


def write_pickle(path: Path, obj: object, protocol: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.fixture
def pkl(tmp_path: Path, tree: dict[str, Any]) -> Path:
    return write_pickle(tmp_path / "S1.pkl", tree)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def make_recording(seconds: int = 20, **kwargs: Any) -> Recording:
    bvp = np.arange(seconds * 64, dtype=np.float32)
    acc = np.stack([np.arange(seconds * 32)] * 3, axis=1).astype(np.float32)
    return Recording(name="r", source="synthetic", subject="s", bvp=bvp, acc=acc, **kwargs)


# --- Recording ---------------------------------------------------------------------------------


def test_recording_windows_are_8s_with_2s_shift() -> None:
    rec = make_recording(20)
    assert rec.duration_s == 20.0
    assert rec.window_count() == 7  # (20 - 8) / 2 + 1
    bvp, acc = rec.window(3)
    assert bvp.shape == (512,)
    assert acc.shape == (256, 3)
    assert bvp[0] == 3 * 128
    assert acc[0, 0] == 3 * 64
    all_bvp, all_acc = rec.windows()
    assert all_bvp.shape == (7, 512)
    assert all_acc.shape == (7, 256, 3)
    np.testing.assert_array_equal(all_bvp[3], bvp)
    np.testing.assert_array_equal(all_acc[6], rec.window(6)[1])
    assert rec.window_start_s(3) == 6.0
    with pytest.raises(IndexError):
        rec.window(7)
    with pytest.raises(IndexError):
        rec.window(-1)


def test_recording_window_count_uses_the_shorter_sensor() -> None:
    bvp = np.zeros(20 * 64, dtype=np.float32)
    acc = np.zeros((12 * 32, 3), dtype=np.float32)
    rec = Recording(name="r", source="e4", subject="s", bvp=bvp, acc=acc)
    assert rec.window_count() == 3


def test_recording_labels_per_window() -> None:
    labels = np.zeros(20 * 4, dtype=np.int8)
    labels[24:] = 7  # walking from 6 s on
    hr = np.array([60.0, 61.0, np.nan, 63.0, 64.0], dtype=np.float64)
    rec = make_recording(
        20, labels=labels, label_names=DALIA_ACTIVITY_NAMES, hr_ref_bpm=hr, hr_ref_kind="ecg"
    )
    assert rec.label_for_window(0) == "transient"  # 0-8 s: 6 s transient, 2 s walking
    assert rec.label_for_window(1) == "transient"  # 2-10 s: 4 s each: a tie goes to code 0
    assert rec.label_for_window(2) == "walking"  # 4-12 s: 2 s transient, 6 s walking
    assert rec.hr_for_window(1) == 61.0
    assert rec.hr_for_window(2) is None  # NaN: unknown
    assert rec.hr_for_window(6) is None  # beyond the reference
    assert rec.subject_key == "synthetic:s"
    assert make_recording(20).label_for_window(0) is None  # no labels at all


def test_recording_group_for_window_applies_the_purity_rule() -> None:
    # 0-6 s transient (unknown), then walking (light); the last 2 s are unlabelled.
    labels = np.full(20 * 4, 7, dtype=np.int8)
    labels[:24] = 0
    labels[72:] = NO_LABEL
    rec = make_recording(20, labels=labels, label_names=DALIA_ACTIVITY_NAMES)
    groups = [rec.group_for_window(i) for i in range(rec.window_count())]
    # Window 0 (0-8 s): 2 s light of 8 -> unknown. Window 1 (2-10 s): 4 s light -> unknown.
    # Window 2 (4-12 s): 6 s light (75 % >= 2/3) -> light. Windows 3-5: all light.
    # Window 6 (12-20 s): 6 s light, 2 s unlabelled -> light (75 %).
    assert groups == [ActivityGroup.UNKNOWN] * 2 + [ActivityGroup.LIGHT] * 5
    mixed = np.full(20 * 4, 1, dtype=np.int8)  # sitting (rest) ...
    mixed[20:] = 2  # ... then stairs (vigorous) from 5 s on
    rec = make_recording(20, labels=mixed, label_names=DALIA_ACTIVITY_NAMES)
    # 0-8 s: 5 s rest, 3 s vigorous; 2-10 s: 3 s rest, 5 s vigorous: 62.5 % < 2/3, mixed,
    # though the majority label exists. 4-12 s: 7 s vigorous.
    assert rec.group_for_window(0) == ActivityGroup.UNKNOWN
    assert rec.group_for_window(1) == ActivityGroup.UNKNOWN
    assert rec.label_for_window(1) == "stairs"
    assert rec.group_for_window(2) == ActivityGroup.VIGOROUS
    assert make_recording(20).group_for_window(0) == ActivityGroup.UNKNOWN


def test_recording_without_bvp_must_be_flat() -> None:
    acc = np.zeros((20 * 32, 3), dtype=np.float32)
    rec = Recording(
        name="r", source="sp-sw-har", subject="s", bvp=flat_bvp(20 * 32), acc=acc, has_bvp=False
    )
    assert rec.bvp.shape == (20 * 64,)
    assert rec.window_count() == 7
    with pytest.raises(ValueError, match="all zeros"):
        Recording(
            name="r",
            source="sp-sw-har",
            subject="s",
            bvp=np.ones(20 * 64, dtype=np.float32),
            acc=acc,
            has_bvp=False,
        )


def test_recording_is_read_only_and_validated() -> None:
    rec = make_recording(10)
    with pytest.raises(ValueError, match="read-only"):
        rec.bvp[0] = 1.0
    with pytest.raises(ValueError, match="bvp must be float32"):
        Recording(
            name="r",
            source="e4",
            subject="s",
            bvp=np.zeros(10),
            acc=np.zeros((5, 3), dtype=np.float32),
        )
    with pytest.raises(ValueError, match="acc must be float32"):
        make_recording(10).__class__(
            name="r",
            source="e4",
            subject="s",
            bvp=np.zeros(10, dtype=np.float32),
            acc=np.zeros((5, 2), dtype=np.float32),
        )
    with pytest.raises(ValueError, match="hr_ref_kind"):
        make_recording(10, hr_ref_bpm=np.zeros(2))
    with pytest.raises(ValueError, match="labels must be"):
        make_recording(10, labels=np.full(40, 9, dtype=np.int8), label_names=DALIA_ACTIVITY_NAMES)
    with pytest.raises(ValueError, match="labels must be"):
        make_recording(10, labels=np.full(40, -2, dtype=np.int8), label_names=("a",))
    with pytest.raises(ValueError, match="label_names"):
        make_recording(10, labels=np.zeros(40, dtype=np.int8))


def test_dataset_error_is_a_gateway_error_naming_the_file() -> None:
    err = DatasetError("/some/where/S3.pkl", "missing key signal.wrist.BVP")
    assert isinstance(err, GatewayError)
    assert str(err) == "S3.pkl: missing key signal.wrist.BVP"
    assert err.file == "/some/where/S3.pkl"


# --- PPG-DaLiA: reading ------------------------------------------------------------------------


def test_load_dalia_pickle(pkl: Path, tree: dict[str, Any], cache_dir: Path) -> None:
    rec = load_dalia(pkl, cache_dir=cache_dir)
    seconds = MINUTES * 60
    assert (rec.name, rec.source, rec.subject) == ("S1", "dalia", "S1")
    assert rec.bvp.dtype == np.float32
    assert rec.bvp.shape == (seconds * 64,)
    assert rec.acc.shape == (seconds * 32, 3)
    assert rec.hr_ref_kind == "ecg"
    assert rec.hr_ref_bpm is not None
    assert rec.hr_ref_bpm.shape == (rec.window_count(),) == (tree["label"].shape[0],)
    assert rec.labels is not None
    assert rec.label_names == DALIA_ACTIVITY_NAMES
    assert rec.labels.shape == (seconds * 4,)
    np.testing.assert_array_equal(rec.bvp, tree["signal"]["wrist"]["BVP"][:, 0].astype(np.float32))
    np.testing.assert_array_equal(rec.acc, tree["signal"]["wrist"]["ACC"].astype(np.float32))
    np.testing.assert_array_equal(rec.labels, tree["activity"][:, 0].astype(np.int8))
    assert rec.metadata["questionnaire"] == tree["questionnaire"]
    assert "synthetic" not in rec.metadata


def test_load_dalia_accepts_the_subject_folder(tmp_path: Path, tree: dict[str, Any]) -> None:
    write_pickle(tmp_path / "S7" / "S7.pkl", tree)
    rec = load_dalia(tmp_path / "S7", use_cache=False)
    assert rec.name == "S7"
    with pytest.raises(DatasetError, match="not a PPG-DaLiA subject folder"):
        load_dalia(tmp_path, use_cache=False)


@pytest.mark.parametrize("protocol", range(6))
def test_restricted_load_reads_every_pickle_protocol(tree: dict[str, Any], protocol: int) -> None:
    raw = pickle.dumps(tree, protocol=protocol)
    loaded = restricted_load(io.BytesIO(raw), "S1.pkl")
    obj: Any = loaded.obj
    np.testing.assert_array_equal(obj["signal"]["wrist"]["BVP"], tree["signal"]["wrist"]["BVP"])
    np.testing.assert_array_equal(obj["label"], tree["label"])
    np.testing.assert_array_equal(obj["rpeaks"], tree["rpeaks"])
    assert obj["questionnaire"] == tree["questionnaire"]


@pytest.mark.parametrize("protocol", [0, 2])
def test_restricted_load_reads_python2_pickles(tree: dict[str, Any], protocol: int) -> None:
    raw = py2_pickle(tree, protocol)
    loaded = restricted_load(io.BytesIO(raw), "S1.pkl")
    obj: Any = loaded.obj
    np.testing.assert_array_equal(obj["signal"]["wrist"]["ACC"], tree["signal"]["wrist"]["ACC"])
    np.testing.assert_array_equal(obj["activity"], tree["activity"])
    assert obj["subject"] == "S1"
    # Same answer as the standard unpickler the PPG-DaLiA readme suggests.
    plain = pickle.loads(raw, encoding="latin1")
    np.testing.assert_array_equal(plain["signal"]["wrist"]["BVP"], obj["signal"]["wrist"]["BVP"])


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_chest_arrays_are_skipped_not_read(tree: dict[str, Any], protocol: int) -> None:
    raw = py2_pickle(tree, protocol) if protocol in (0, 2) else pickle.dumps(tree, protocol)
    chest_bytes = sum(a.nbytes for a in tree["signal"]["chest"].values())
    loaded = restricted_load(io.BytesIO(raw), "S1.pkl")
    obj: Any = loaded.obj
    assert loaded.skipped_bytes >= chest_bytes
    assert all(not isinstance(v, np.ndarray) for v in obj["signal"]["chest"].values())
    assert isinstance(obj["signal"]["wrist"]["BVP"], np.ndarray)
    full: Any = restricted_load(io.BytesIO(raw), "S1.pkl", skip_chest=False).obj
    np.testing.assert_array_equal(full["signal"]["chest"]["ECG"], tree["signal"]["chest"]["ECG"])


def test_wrist_first_order_is_not_confused_with_chest(tree: dict[str, Any]) -> None:
    # The skip rule must hold whichever branch the pickle stores first.
    flipped = dict(tree)
    flipped["signal"] = {"wrist": tree["signal"]["wrist"], "chest": tree["signal"]["chest"]}
    for raw in (pickle.dumps(flipped, 4), py2_pickle(flipped, 0), py2_pickle(flipped, 2)):
        obj: Any = restricted_load(io.BytesIO(raw), "S1.pkl").obj
        np.testing.assert_array_equal(obj["signal"]["wrist"]["BVP"], tree["signal"]["wrist"]["BVP"])
        assert not isinstance(obj["signal"]["chest"]["ACC"], np.ndarray)


def test_peak_memory_is_about_the_wrist_signals_not_the_file(pkl: Path) -> None:
    size = pkl.stat().st_size

    def peak(skip_chest: bool) -> int:
        tracemalloc.start()
        try:
            with pkl.open("rb") as f:
                loaded = restricted_load(f, pkl.name, skip_chest=skip_chest)
            del loaded
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed, full = peak(True), peak(False)
    assert full > 0.9 * size  # the standard way holds the whole file's arrays
    assert streamed < 0.15 * size  # the wrist signals are ~4 % of a subject's data


@pytest.mark.slow
def test_realistic_size_python2_pickle_is_streamed(tmp_path: Path) -> None:
    # 150 min, pickled like the real files (Python 2, protocol 0): ~1.2 GB on disk.
    path = tmp_path / "S1.pkl"
    with path.open("wb") as f:
        Py2Pickler(f, protocol=0).dump(generate_subject(1, 150.0, seed=3))
    assert path.stat().st_size > 1.0e9
    tracemalloc.start()
    try:
        rec = load_dalia(path, cache_dir=tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rec.window_count() == (150 * 60 - 8) // 2 + 1
    assert peak < 64 * 2**20  # docs/datasets.md: ~46 MiB


# --- PPG-DaLiA: the cache ----------------------------------------------------------------------


def test_second_load_reads_the_cache_not_the_pickle(pkl: Path, cache_dir: Path) -> None:
    opener = CountingOpener()
    first = load_dalia(pkl, cache_dir=cache_dir, opener=opener)
    assert opener.opened == [pkl]
    assert not first.metadata["from_cache"]
    assert first.metadata["pickle_skipped_bytes"] > 0
    cache = cache_path_for(pkl, cache_dir)
    assert cache.is_file()
    assert cache.stat().st_size < pkl.stat().st_size / 5
    second = load_dalia(pkl, cache_dir=cache_dir, opener=opener)
    assert opener.opened == [pkl]  # not opened again
    assert second.metadata["from_cache"]
    np.testing.assert_array_equal(first.bvp, second.bvp)
    np.testing.assert_array_equal(first.acc, second.acc)
    assert first.hr_ref_bpm is not None
    assert second.hr_ref_bpm is not None
    np.testing.assert_array_equal(first.hr_ref_bpm, second.hr_ref_bpm)
    assert second.labels is not None
    assert first.labels is not None
    np.testing.assert_array_equal(first.labels, second.labels)
    assert second.metadata["questionnaire"] == first.metadata["questionnaire"]


def test_cache_is_invalidated_when_the_pickle_changes(pkl: Path, cache_dir: Path) -> None:
    opener = CountingOpener()
    load_dalia(pkl, cache_dir=cache_dir, opener=opener)
    st = pkl.stat()
    os.utime(pkl, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_dalia(pkl, cache_dir=cache_dir, opener=opener)
    assert len(opener.opened) == 2


def test_corrupt_cache_falls_back_to_the_pickle(pkl: Path, cache_dir: Path) -> None:
    load_dalia(pkl, cache_dir=cache_dir)
    cache = cache_path_for(pkl, cache_dir)
    cache.write_bytes(cache.read_bytes()[:100])
    opener = CountingOpener()
    rec = load_dalia(pkl, cache_dir=cache_dir, opener=opener)
    assert len(opener.opened) == 1
    assert rec.window_count() > 0
    assert load_dalia(pkl, cache_dir=cache_dir, opener=opener).metadata["from_cache"]


def test_unwritable_cache_still_loads(pkl: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    rec = load_dalia(pkl, cache_dir=blocker / "cache")
    assert rec.window_count() > 0


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "gatewayd" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "gatewayd" / "datasets"


# --- PPG-DaLiA: bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.05, 0.3, 0.7, 0.999])
@pytest.mark.parametrize("flavour", ["py3-4", "py2-0", "py2-2"])
def test_truncated_pickle_is_a_dataset_error(
    tmp_path: Path, tree: dict[str, Any], fraction: float, flavour: str
) -> None:
    raw = {
        "py3-4": lambda: pickle.dumps(tree, 4),
        "py2-0": lambda: py2_pickle(tree, 0),
        "py2-2": lambda: py2_pickle(tree, 2),
    }[flavour]()
    path = tmp_path / "S1.pkl"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(DatasetError, match=r"^S1\.pkl: ") as info:
        load_dalia(path, use_cache=False)
    assert "truncated" in str(info.value) or "missing" in str(info.value)


def test_not_a_pickle_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "S2.pkl"
    path.write_text("signal,wrist\n1,2\n")
    with pytest.raises(DatasetError, match=r"^S2\.pkl: not a readable pickle"):
        load_dalia(path, use_cache=False)


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"^S9\.pkl: cannot read"):
        load_dalia(tmp_path / "S9.pkl")


def test_length_past_the_end_of_the_file_is_refused_before_allocating(tmp_path: Path) -> None:
    # A BINBYTES8 claiming 2**60 bytes must not reach file.read(2**60).
    path = tmp_path / "S1.pkl"
    path.write_bytes(b"\x80\x04" + pickle.BINBYTES8 + struct.pack("<Q", 2**60) + b"xxxx.")
    with pytest.raises(DatasetError, match="runs past the end"):
        load_dalia(path, use_cache=False)


def _broken(tree: dict[str, Any], edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    broken = copy.deepcopy(tree)
    edit(broken)
    return broken


def _wrist(t: dict[str, Any]) -> dict[str, Any]:
    wrist: dict[str, Any] = t["signal"]["wrist"]
    return wrist


BROKEN_LAYOUTS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "no BVP": (lambda t: _wrist(t).pop("BVP"), r"S1\.pkl: missing key signal\.wrist\.BVP$"),
    "no ACC": (lambda t: _wrist(t).pop("ACC"), "missing key signal.wrist.ACC"),
    "no wrist": (lambda t: t["signal"].pop("wrist"), "missing key signal.wrist.BVP"),
    "no label": (lambda t: t.pop("label"), "missing key label"),
    "ACC 2 axes": (
        lambda t: _wrist(t).update(ACC=_wrist(t)["ACC"][:, :2]),
        r"signal\.wrist\.ACC has shape \(5760, 2\), expected \(n, 3\)",
    ),
    "BVP 2-D": (
        lambda t: _wrist(t).update(BVP=np.zeros((100, 2))),
        r"signal\.wrist\.BVP has shape \(100, 2\)",
    ),
    "BVP text": (
        lambda t: _wrist(t).update(BVP=np.array(["a", "b"])),
        "signal.wrist.BVP is not a numeric array",
    ),
    "BVP object": (
        lambda t: _wrist(t).update(BVP=np.array([1, "a"], dtype=object)),
        "signal.wrist.BVP is not a numeric array",
    ),
    "BVP NaN": (
        lambda t: _wrist(t)["BVP"].__setitem__((5, 0), np.nan),
        "signal.wrist.BVP contains NaN",
    ),
    "ACC short": (
        lambda t: _wrist(t).update(ACC=_wrist(t)["ACC"][:1000]),
        r"signal\.wrist\.ACC covers 31\.2 s at 32 Hz but signal\.wrist\.BVP covers 180\.0 s",
    ),
    "label short": (
        lambda t: t.update(label=t["label"][:10]),
        "label has 10 values but the signals have 87 windows",
    ),
    "activity id": (
        lambda t: t["activity"].__setitem__((3, 0), 12.0),
        r"activity has ids outside 0\.\.8",
    ),
    "not a dict": (lambda t: t.clear(), "missing key signal.wrist.BVP"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LAYOUTS))
def test_wrong_layout_is_a_dataset_error_naming_the_key(
    tmp_path: Path, tree: dict[str, Any], case: str
) -> None:
    edit, message = BROKEN_LAYOUTS[case]
    path = write_pickle(tmp_path / "S1.pkl", _broken(tree, edit))
    with pytest.raises(DatasetError, match=message):
        load_dalia(path, use_cache=False)


def test_top_level_not_a_dict(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "S1.pkl", [1, 2, 3])
    with pytest.raises(DatasetError, match="top level is list, expected a dict"):
        load_dalia(path, use_cache=False)


def test_object_arrays_elsewhere_are_not_rebuilt(tmp_path: Path, tree: dict[str, Any]) -> None:
    odd = dict(tree)
    odd["questionnaire"] = np.array([1, "x"], dtype=object)
    rec = load_dalia(write_pickle(tmp_path / "S1.pkl", odd), use_cache=False)
    assert rec.metadata["questionnaire"] == "<not loaded: object dtype>"


class _Evil:
    """Pickles as a call of ``func(*args)``: what a hostile pickle does."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


@pytest.mark.parametrize(
    ("func", "name"),
    [
        (os.system, "posix.system"),
        (eval, "builtins.eval"),
        (np.load, "numpy.load"),
        (getattr, "builtins.getattr"),
        (Path.write_text, "pathlib.Path.write_text"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_nothing_runs(
    tmp_path: Path, func: Callable[..., Any], name: str, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    args = {
        "posix.system": (f"touch {marker}",),
        "builtins.eval": (f"open({str(marker)!r}, 'w')",),
        "numpy.load": (str(marker),),
        "builtins.getattr": (Path, "home"),
        "pathlib.Path.write_text": (marker, "x"),
    }[name]
    payload = {"signal": {"wrist": {"BVP": _Evil(func, *args)}}, "label": []}
    path = tmp_path / "S1.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(DatasetError, match=r"^S1\.pkl: refused: the pickle references "):
        load_dalia(path, use_cache=False)
    assert not marker.exists()


def test_allow_listed_names_cannot_be_called_directly(tmp_path: Path) -> None:
    # numpy.ndarray is allowed only as _reconstruct's first argument, never as a callable.
    raw = b"\x80\x02cnumpy\nndarray\nK\x05\x85R."
    path = tmp_path / "S1.pkl"
    path.write_bytes(raw)
    with pytest.raises(DatasetError, match=r"^S1\.pkl: not a readable pickle"):
        load_dalia(path, use_cache=False)
    raw = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    path.write_bytes(raw)
    with pytest.raises(DatasetError, match="refused"):
        load_dalia(path, use_cache=False)


# --- discovery ---------------------------------------------------------------------------------


def _write_e4(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "BVP.csv").write_text("1500000000.0\n64.0\n" + "1.0\n" * 64 * 20)
    (folder / "ACC.csv").write_text(
        "1500000000.0, 1500000000.0, 1500000000.0\n32.0, 32.0, 32.0\n" + "1,2,60\n" * 32 * 20
    )


def _write_troika(folder: Path, stem: str, windows: int = 3) -> None:
    n = 1000 + (windows - 1) * 250
    rng = np.random.default_rng(0)
    sio.savemat(folder / f"DATA_{stem}.mat", {"sig": rng.normal(size=(6, n))})
    sio.savemat(folder / f"REF_{stem}.mat", {"BPM0": np.full((windows, 1), 80.0)})


@pytest.fixture
def data_tree(tmp_path: Path, tree: dict[str, Any]) -> Path:
    root = tmp_path / "data"
    field = root / "PPG_FieldStudy"
    small = copy.deepcopy(tree)
    write_pickle(field / "S1" / "S1.pkl", small)
    write_pickle(field / "S2" / "S2.pkl", small)
    (field / "S1" / "S1_activity.csv").write_text("# SUBJECT_ID,S1\n")
    with zipfile.ZipFile(field / "S1" / "S1_E4.zip", "w") as zf:  # same session: skipped
        zf.writestr("BVP.csv", "1500000000.0\n64.0\n")
    troika = root / "troika"
    troika.mkdir()
    _write_troika(troika, "01_TYPE01")
    _write_troika(troika, "02_TYPE02")
    (troika / "Readme.pdf").write_bytes(b"%PDF")
    _write_e4(root / "e4" / "session_a")
    _write_e4(tmp_path / "zipsrc")
    with zipfile.ZipFile(root / "e4" / "S5_E4.zip", "w") as zf:
        for name in ("BVP.csv", "ACC.csv"):
            zf.write(tmp_path / "zipsrc" / name, name)
    (root / "notes.txt").write_text("hello")
    (root / "other.pkl").write_bytes(b"not ours")
    return root


def test_find_recordings_finds_every_kind(data_tree: Path) -> None:
    found = find_recordings(data_tree)
    rel = [(s.kind, str(s.path.relative_to(data_tree))) for s in found]
    assert rel == [
        ("dalia", "PPG_FieldStudy/S1/S1.pkl"),
        ("dalia", "PPG_FieldStudy/S2/S2.pkl"),
        ("e4", "e4/S5_E4.zip"),
        ("e4", "e4/session_a"),
        ("troika", "troika/DATA_01_TYPE01.mat"),
        ("troika", "troika/DATA_02_TYPE02.mat"),
    ]
    troika = [s for s in found if s.kind == "troika"]
    assert [s.ref_path.name if s.ref_path else None for s in troika] == [
        "REF_01_TYPE01.mat",
        "REF_02_TYPE02.mat",
    ]
    assert [s.name for s in found] == [
        "S1",
        "S2",
        "S5_E4",
        "session_a",
        "DATA_01_TYPE01",
        "DATA_02_TYPE02",
    ]


def test_load_every_found_recording(data_tree: Path, cache_dir: Path) -> None:
    for source in find_recordings(data_tree):
        rec = load(source, cache_dir=cache_dir)
        assert rec.window_count() >= 3
        assert rec.source == source.kind
        assert rec.bvp.dtype == np.float32


def test_find_recordings_on_a_single_file(data_tree: Path) -> None:
    path = data_tree / "troika" / "DATA_01_TYPE01.mat"
    [source] = find_recordings(path)
    assert source.kind == "troika"
    assert find_recordings(data_tree / "notes.txt") == []
    with pytest.raises(DatasetError, match="no such file or folder"):
        find_recordings(data_tree / "missing")


def test_synthetic_dataset_is_discovered_and_loads_as_synthetic(
    tmp_path: Path, cache_dir: Path
) -> None:
    paths = write_synthetic_dataset(tmp_path / "synth", subjects=2, minutes=0.5, seed=3)
    assert [p.relative_to(tmp_path) for p in paths] == [
        Path("synth/S1/S1.pkl"),
        Path("synth/S2/S2.pkl"),
    ]
    found = find_recordings(tmp_path / "synth")
    assert [s.path for s in found] == paths
    rec = load(found[1], cache_dir=cache_dir)
    assert rec.source == "synthetic"
    assert rec.subject == "S2"
    assert rec.hr_ref_kind == "synthetic-truth"
    assert rec.metadata["synthetic"]["seed"] == 3
    again = load(found[1], cache_dir=cache_dir)
    assert again.metadata["from_cache"]
    assert again.source == "synthetic"


def test_write_subject_is_atomic_and_loadable(tmp_path: Path) -> None:
    path = write_subject(tmp_path / "S4.pkl", 4, 0.5, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S4.pkl"]
    assert load_dalia(path, use_cache=False).subject == "S4"


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A test that forgets cache_dir must not write into the developer's ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
