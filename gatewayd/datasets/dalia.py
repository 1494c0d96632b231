"""PPG-DaLiA reader: ``SX.pkl`` (or a ``PPG_FieldStudy`` folder) -> `Recording`, streamed once.

A subject's pickle is 1.2-1.7 GB, almost all of it the chest (RespiBAN) signals at 700 Hz, which
the wearable does not have. The file is read once, by a restricted unpickler that:

- resolves only the globals a pickled numpy array needs (allow-list in `_ALLOWED_GLOBALS`) and
  refuses everything else, so a hostile pickle cannot call ``os.system`` or import anything;
- never materialises a chest array: when a large string/bytes payload is about to be read while
  the object under construction sits in ``signal -> chest``, the payload is skipped with a seek
  (or chunked reads) and a placeholder is pushed instead, so peak memory is about the size of the
  wrist signals, not of the file;
- wraps kept arrays around the bytes read from the file (``np.frombuffer``), without a copy.

The wrist signals and labels are then written to a small ``.npz`` cache keyed by the pickle's
path, size and mtime, so every later load reads a few MB instead of the pickle. See
docs/datasets.md for the measured memory.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import itertools
import json
import math
import os
import pickle
import re
import struct
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Final, cast

import numpy as np
import numpy.typing as npt
import structlog

from gatewayd.datasets.recording import ACTIVITY_RATE_HZ, DatasetError, Recording
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, window_count

__all__ = [
    "ACTIVITY_NAMES",
    "CACHE_VERSION",
    "Opener",
    "PickleLoad",
    "WesadLayoutError",
    "cache_path_for",
    "dalia_subject_files",
    "default_cache_dir",
    "load_dalia",
    "looks_like_wesad",
    "pickle_in",
    "recording_from_tree",
    "restricted_load",
]

_log = structlog.get_logger(__name__)

#: Opens a file for binary reading; injected in tests to count how often the pickle is opened.
Opener = Callable[[Path], IO[bytes]]

#: PPG-DaLiA's activity ids 0-8 (its readme): the index is the id in ``activity`` and the code
#: in `Recording.labels`. Their intensity groups are in gatewayd.activity.LABEL_GROUPS["dalia"].
ACTIVITY_NAMES: Final = (
    "transient",
    "sitting",
    "stairs",
    "table soccer",
    "cycling",
    "driving",
    "lunch",
    "walking",
    "working",
)
#: Bump when the cache layout or what is stored in it changes: old entries are then ignored.
CACHE_VERSION: Final = 1
#: Top-level key the synthetic generator adds to mark its pickles (not in real PPG-DaLiA files).
SYNTHETIC_KEY: Final = "gatewayd_synthetic"
#: Payloads at least this long are candidates for skipping; shorter ones (keys, dtype codes)
#: are always read, so the dict and dtype structure around a skipped array stays intact.
_SKIP_MIN_BYTES: Final = 4096
_SKIP_CHUNK: Final = 1 << 20
#: Slack when checking that BVP, ACC and activity cover the same time.
_DURATION_SLACK_S: Final = 2.0
#: Slack in windows between ``label`` and the windows of the signal.
_LABEL_SLACK: Final = 2
_SUBJECT_FILE = re.compile(r"^S(\d+)\.pkl$")
_SUBJECT_DIR = re.compile(r"^S(\d+)$")

# Everything a malformed pickle, a malformed numpy state or a short file can raise while loading.
_LOAD_ERRORS: Final = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    struct.error,
    OverflowError,
    RecursionError,
    UnicodeError,
)


class _Refused(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list."""


# --- restricted unpickler -----------------------------------------------------------------------


class _Skipped:
    """Placeholder for a payload that was skipped without reading it."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


class _Dropped:
    """An array whose data was skipped (a chest signal)."""

    def __repr__(self) -> str:
        return "<dropped chest array>"


_DROPPED: Final = _Dropped()


class _Unsupported:
    """An array we do not rebuild (object dtype): kept as a marker, never executed."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<not loaded: {self.why}>"


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pickle; only `_reconstruct` accepts it."""


_NDARRAY_CLASS: Final = _NdarrayClass()


class _ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` returns here; BUILD fills in the data."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: npt.NDArray[Any] | _Dropped | _Unsupported = _Unsupported("no state")

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("ndarray state is not a 4- or 5-tuple")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("ndarray state has no dtype")
        if dtype.hasobject:
            # Object arrays pickle their items as a list; nothing we read needs them.
            self.value = _Unsupported("object dtype")
            return
        self.value = _array_from_raw(raw, dtype, shape, "F" if fortran else "C")


def _array_from_raw(
    raw: object, dtype: np.dtype[Any], shape: object, order: str
) -> npt.NDArray[Any] | _Dropped:
    if isinstance(raw, _Skipped):
        return _DROPPED
    if isinstance(raw, str):
        # A Python 2 str decoded with latin1 maps byte b to code point b: encode it back.
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise pickle.UnpicklingError(f"ndarray data is {type(raw).__name__}, expected bytes")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"ndarray shape {shape!r} is not a tuple of sizes")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise pickle.UnpicklingError(
            f"ndarray data has {len(raw)} bytes, shape {shape} of {dtype} needs {expected} "
            "(truncated file?)"
        )
    # No copy: the array is a read-only view of the bytes read from the file.
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if order == "F" else "C")


def _reconstruct(subtype: object, shape: object, typecode: object) -> _ArrayStub:
    if subtype is not _NDARRAY_CLASS:
        raise _Refused("numpy _reconstruct of something other than numpy.ndarray")
    return _ArrayStub()


def _frombuffer(
    buf: object, dtype: object, shape: object, order: object
) -> npt.NDArray[Any] | _Dropped:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy _frombuffer without a plain dtype")
    return _array_from_raw(buf, dtype, shape, "F" if order == "F" else "C")


def _scalar(dtype: object, data: object = None) -> object:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        return _Unsupported("object scalar")
    arr = _array_from_raw(data, dtype, (), "C")
    return _DROPPED if isinstance(arr, _Dropped) else arr[()]


def _codecs_encode(obj: object, encoding: str = "utf-8") -> object:
    # Python 3 pickles bytes for protocols < 3 as _codecs.encode(text, "latin1").
    if isinstance(obj, _Skipped):
        return obj
    if not isinstance(obj, str) or encoding.lower() not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return obj.encode("latin1")


_ALLOWED_GLOBALS: Final[Mapping[tuple[str, str], object]] = {
    **{
        (m, "_reconstruct"): _reconstruct
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY_CLASS,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs_encode,
    **{(m, "set"): set for m in ("builtins", "__builtin__")},
    **{(m, "frozenset"): frozenset for m in ("builtins", "__builtin__")},
}


class _DaliaUnpickler(pickle._Unpickler):
    """Pure-Python unpickler with an allow-list and chest-array skipping (module docstring)."""

    dispatch: ClassVar[dict[int, Callable[[pickle.Unpickler], None]]] = dict(
        pickle._Unpickler.dispatch
    )

    def __init__(
        self, file: IO[bytes], *, skip_chest: bool, keep_chest: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(file, encoding="latin1")
        self._src = file
        self._skip_chest = skip_chest
        self._keep_chest = keep_chest
        self.skipped_bytes = 0
        try:
            self._size: int | None = os.fstat(file.fileno()).st_size
        except (OSError, AttributeError, io.UnsupportedOperation):
            self._size = None

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only allow-listed numpy and builtin names; refuse everything else."""
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise _Refused(
                f"the pickle references {module}.{name}; only numpy arrays and plain "
                "containers are allowed (is this really a PPG-DaLiA file?)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids."""
        raise _Refused("the pickle uses persistent ids")

    # -- skipping -------------------------------------------------------------------------------

    def _in_chest(self) -> bool:
        """Is the object under construction inside ``signal -> chest``?

        A dict being filled sits on the unpickler's stack right after its key (the key and an
        EMPTY_DICT/DICT are pushed back to back). The last such ``'chest'``/``'wrist'`` pair on
        the stack is the innermost open branch: a finished sibling dict is either popped into its
        parent (SETITEM, protocol 0) or followed by the next sibling's pair (batched SETITEMS).
        """
        if not self._skip_chest:
            return False
        me = cast(Any, self)
        frames: list[list[Any]] = [*me.metastack, me.stack]
        last = None
        where = (0, 0)
        for f, frame in enumerate(frames):
            for i, (key, value) in enumerate(itertools.pairwise(frame)):
                if isinstance(value, dict) and isinstance(key, str) and key in ("chest", "wrist"):
                    last, where = key, (f, i + 1)
        if last != "chest":
            return False
        return not self._keep_chest or self._chest_key(frames, *where) not in self._keep_chest

    @staticmethod
    def _chest_key(frames: list[list[Any]], f: int, i: int) -> str | None:
        """The key of the chest item under construction (``'ECG'``...), or None if unclear.

        The chest dict's items follow it: in its own frame when they are set one by one
        (SETITEM: ``[chest, key, value...]``), in the next frame when batched after a MARK
        (SETITEMS: ``[k1, v1, k2, v2, key, value...]``). Items alternate key and value, and the
        value under construction is a single stub or function until its state is read, so the
        key is the last string at an even offset.
        """
        items = frames[f][i + 1 :]
        if not items and f + 1 < len(frames):
            items = frames[f + 1]
        keys = [k for k in items[::2] if isinstance(k, str)]
        return keys[-1] if keys else None

    def _skip(self, n: int) -> None:
        me = cast(Any, self)
        frame = me._unframer.current_frame
        if frame is not None:
            data = frame.read(n)
            if data:
                if len(data) < n:
                    raise pickle.UnpicklingError("pickle exhausted before end of frame")
                self.skipped_bytes += n
                return
            me._unframer.current_frame = None
        if self._size is not None and self._src.seekable():
            if self._src.tell() + n > self._size:
                raise EOFError("a chest array runs past the end of the file")
            self._src.seek(n, os.SEEK_CUR)
        else:
            left = n
            while left:
                got = len(self._src.read(min(left, _SKIP_CHUNK)))
                if not got:
                    raise EOFError("a chest array runs past the end of the file")
                left -= got
        self.skipped_bytes += n

    def _check_room(self, n: int) -> None:
        """Fail early on a length that runs past the end of the file (truncated or hostile)."""
        if (
            n >= _SKIP_MIN_BYTES
            and self._size is not None
            and cast(Any, self)._unframer.current_frame is None
            and self._src.seekable()
            and self._src.tell() + n > self._size
        ):
            raise EOFError(f"a {n}-byte payload runs past the end of the file")

    def _read_payload(self, n: int) -> bytes | None:
        """Read ``n`` bytes, or skip them and return None when they are chest data."""
        self._check_room(n)
        if n >= _SKIP_MIN_BYTES and self._in_chest():
            self._skip(n)
            cast(Any, self).append(_Skipped(n))
            return None
        data: bytes = cast(Any, self).read(n)
        if len(data) != n:
            raise EOFError(f"a {n}-byte payload is cut short at {len(data)} bytes")
        return data

    def _payload(self, n: int, *, text: bool, bytearray_: bool = False) -> None:
        data = self._read_payload(n)
        if data is None:
            return
        append = cast(Any, self).append
        if bytearray_:
            append(bytearray(data))
        elif text and n < _SKIP_MIN_BYTES:
            # A Python 2 str: a dict key or a dtype code. Large ones are array data and stay
            # bytes, which saves a latin1 decode and re-encode of every array.
            append(data.decode("latin1"))
        else:
            append(data)

    def _load_binstring(self) -> None:
        (n,) = struct.unpack("<i", cast(Any, self).read(4))
        if n < 0:
            raise pickle.UnpicklingError("BINSTRING has a negative length")
        self._payload(n, text=True)

    def _load_binbytes(self) -> None:
        (n,) = struct.unpack("<I", cast(Any, self).read(4))
        self._payload(n, text=False)

    def _load_binbytes8(self) -> None:
        (n,) = struct.unpack("<Q", cast(Any, self).read(8))
        self._payload(n, text=False)

    def _load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", cast(Any, self).read(8))
        self._payload(n, text=False, bytearray_=True)

    def _load_binunicode(self) -> None:
        (n,) = struct.unpack("<I", cast(Any, self).read(4))
        self._unicode_payload(n)

    def _load_binunicode8(self) -> None:
        (n,) = struct.unpack("<Q", cast(Any, self).read(8))
        self._unicode_payload(n)

    def _unicode_payload(self, n: int) -> None:
        data = self._read_payload(n)
        if data is not None:
            cast(Any, self).append(str(data, "utf-8", "surrogatepass"))

    def _load_string(self) -> None:
        self._load_text_line(unicode=False)

    def _load_unicode(self) -> None:
        self._load_text_line(unicode=True)

    def _load_text_line(self, *, unicode: bool) -> None:
        """STRING / UNICODE (protocol 0): a quoted, escaped line of unknown length."""
        me = cast(Any, self)
        if me._unframer.current_frame is not None:
            line = me.readline()
        else:
            line = self._src.readline(_SKIP_MIN_BYTES)
            if line and not line.endswith(b"\n"):
                if self._in_chest():
                    skipped = len(line)
                    while not line.endswith(b"\n"):
                        line = self._src.readline(_SKIP_CHUNK)
                        if not line:
                            raise EOFError("a chest array runs past the end of the file")
                        skipped += len(line)
                    self.skipped_bytes += skipped
                    me.append(_Skipped(skipped))
                    return
                rest = self._src.readline()
                line = b"".join((line, rest))
                del rest
        if not line.endswith(b"\n"):
            raise EOFError("a protocol 0 string is cut short")
        # Views, not slices: an escaped array line is ~2.8x its data; copying it would triple
        # the peak while reading a kept (wrist) array.
        data = memoryview(line)[:-1]
        if unicode:
            me.append(str(data, "raw-unicode-escape"))
            return
        if len(data) < 2 or data[0] != data[-1] or data[0] not in b"\"'":
            raise pickle.UnpicklingError("the STRING opcode argument must be quoted")
        raw = codecs.escape_decode(data[1:-1])[0]
        del data, line
        me.append(raw.decode("latin1") if len(raw) < _SKIP_MIN_BYTES else raw)


# The opcodes that carry long strings: overridden so chest payloads are skipped, not read.
for _opcode, _handler in (
    (pickle.BINSTRING, _DaliaUnpickler._load_binstring),
    (pickle.BINBYTES, _DaliaUnpickler._load_binbytes),
    (pickle.BINBYTES8, _DaliaUnpickler._load_binbytes8),
    (pickle.BYTEARRAY8, _DaliaUnpickler._load_bytearray8),
    (pickle.BINUNICODE, _DaliaUnpickler._load_binunicode),
    (pickle.BINUNICODE8, _DaliaUnpickler._load_binunicode8),
    (pickle.STRING, _DaliaUnpickler._load_string),
    (pickle.UNICODE, _DaliaUnpickler._load_unicode),
):
    _DaliaUnpickler.dispatch[_opcode[0]] = cast(Any, _handler)


def _resolve(obj: object, depth: int = 0) -> object:
    """Replace array stubs by their arrays, recursively through plain containers."""
    if depth > 64:
        raise pickle.UnpicklingError("containers nested more than 64 deep")
    if isinstance(obj, _ArrayStub):
        return obj.value
    if isinstance(obj, dict):
        return {k: _resolve(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, depth + 1) for v in obj)
    return obj


@dataclass(frozen=True)
class PickleLoad:
    """What `restricted_load` read: the object, and how many payload bytes it skipped."""

    obj: object
    skipped_bytes: int


def restricted_load(
    file: IO[bytes], name: str, *, skip_chest: bool = True, keep_chest: frozenset[str] = frozenset()
) -> PickleLoad:
    """Unpickle a PPG-DaLiA-style pickle with the allow-list, skipping chest arrays.

    ``keep_chest`` names chest signals to read all the same (WESAD's ``ECG``).
    """
    unpickler = _DaliaUnpickler(file, skip_chest=skip_chest, keep_chest=keep_chest)
    try:
        obj = unpickler.load()
        return PickleLoad(_resolve(obj), unpickler.skipped_bytes)
    except _Refused as exc:
        raise DatasetError(name, f"refused: {exc}") from exc
    except _LOAD_ERRORS as exc:
        raise DatasetError(
            name, f"not a readable pickle (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc


# --- layout ------------------------------------------------------------------------------------


def _get(tree: object, dotted: str, path: Path) -> object:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DatasetError(path, f"missing key {dotted}")
        node = node[part]
    return node


def _numeric(value: object, dotted: str, path: Path) -> npt.NDArray[Any]:
    if isinstance(value, _Dropped):
        raise DatasetError(path, f"{dotted} was skipped as a chest array (unexpected layout)")
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise DatasetError(path, f"{dotted} is not a numeric array")
    return value


def _column(value: object, dotted: str, path: Path) -> npt.NDArray[Any]:
    arr = _numeric(value, dotted, path)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DatasetError(path, f"{dotted} has shape {arr.shape}, expected (n, 1) or (n,)")
    return arr


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


@dataclass(frozen=True)
class _Arrays:
    bvp: npt.NDArray[np.float32]
    acc: npt.NDArray[np.float32]
    label: npt.NDArray[np.float64]
    activity: npt.NDArray[np.int8] | None
    meta: dict[str, Any]


class WesadLayoutError(DatasetError):
    """The pickle has WESAD's layout (labels at 700 Hz, no ``activity``), not PPG-DaLiA's."""


def looks_like_wesad(tree: Mapping[str, Any]) -> bool:
    """Tell a WESAD pickle from a PPG-DaLiA one by its keys (and its 700 Hz ``label``)."""
    if "activity" in tree or "rpeaks" in tree or SYNTHETIC_KEY in tree:
        return False
    label, signal = tree.get("label"), tree.get("signal")
    bvp = signal.get("wrist", {}).get("BVP") if isinstance(signal, dict) else None
    # PPG-DaLiA's label has one value per 2 s; WESAD's one per chest sample (700 Hz).
    return (
        isinstance(label, np.ndarray)
        and isinstance(bvp, np.ndarray)
        and label.shape[0] > 2 * bvp.shape[0]
    )


def _extract(tree: object, path: Path) -> _Arrays:
    if not isinstance(tree, dict):
        raise DatasetError(path, f"top level is {type(tree).__name__}, expected a dict")
    if looks_like_wesad(tree):
        raise WesadLayoutError(
            path, "a WESAD pickle (label at 700 Hz, no activity): see load_wesad"
        )
    bvp = _column(_get(tree, "signal.wrist.BVP", path), "signal.wrist.BVP", path)
    acc = _numeric(_get(tree, "signal.wrist.ACC", path), "signal.wrist.ACC", path)
    if acc.ndim != 2 or acc.shape[1] != 3:
        raise DatasetError(path, f"signal.wrist.ACC has shape {acc.shape}, expected (n, 3)")
    label = _column(_get(tree, "label", path), "label", path).astype(np.float64)
    for dotted, arr in (("signal.wrist.BVP", bvp), ("signal.wrist.ACC", acc)):
        if not np.isfinite(arr).all():
            raise DatasetError(path, f"{dotted} contains NaN or infinite values")
    duration = bvp.shape[0] / BVP_RATE_HZ
    if abs(acc.shape[0] / ACC_RATE_HZ - duration) > _DURATION_SLACK_S:
        raise DatasetError(
            path,
            f"signal.wrist.ACC covers {acc.shape[0] / ACC_RATE_HZ:.1f} s at {ACC_RATE_HZ} Hz but "
            f"signal.wrist.BVP covers {duration:.1f} s at {BVP_RATE_HZ} Hz",
        )
    windows = min(window_count(bvp.shape[0], BVP_RATE_HZ), window_count(acc.shape[0], ACC_RATE_HZ))
    if abs(label.shape[0] - windows) > _LABEL_SLACK:
        raise DatasetError(
            path,
            f"label has {label.shape[0]} values but the signals have {windows} windows of 8 s "
            "with a 2 s shift",
        )
    activity: npt.NDArray[np.int8] | None = None
    if "activity" in tree:
        raw_activity = _column(tree["activity"], "activity", path)
        if abs(raw_activity.shape[0] / ACTIVITY_RATE_HZ - duration) > _DURATION_SLACK_S:
            raise DatasetError(
                path,
                f"activity covers {raw_activity.shape[0] / ACTIVITY_RATE_HZ:.1f} s at "
                f"{ACTIVITY_RATE_HZ} Hz but signal.wrist.BVP covers {duration:.1f} s",
            )
        if raw_activity.size and (
            not np.all(np.isfinite(raw_activity))
            or not np.all(raw_activity == np.round(raw_activity))
            or raw_activity.min() < 0
            or raw_activity.max() >= len(ACTIVITY_NAMES)
        ):
            raise DatasetError(path, f"activity has ids outside 0..{len(ACTIVITY_NAMES) - 1}")
        activity = raw_activity.astype(np.int8)
    subject = tree.get("subject")
    meta: dict[str, Any] = {
        "subject": subject if isinstance(subject, str) else None,
        "questionnaire": _jsonable(tree.get("questionnaire")),
        "synthetic": _jsonable(tree.get(SYNTHETIC_KEY)) if SYNTHETIC_KEY in tree else None,
    }
    return _Arrays(
        bvp=bvp.astype(np.float32),
        acc=acc.astype(np.float32),
        label=label[:windows],
        activity=activity,
        meta=meta,
    )


# --- cache -------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/gatewayd/datasets`` (default ``~/.cache/gatewayd/datasets``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gatewayd" / "datasets"


def cache_path_for(path: Path, cache_dir: Path | None = None, *, prefix: str = "dalia") -> Path:
    """Return the cache file for a pickle: keyed by its resolved path, size and mtime."""
    st = path.stat()
    key = f"{CACHE_VERSION}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return (cache_dir or default_cache_dir()) / f"{prefix}-{path.stem}-{digest}.npz"


def write_npz_cache(cache: Path, arrays: Mapping[str, npt.NDArray[Any]], meta: object) -> None:
    """Write ``arrays`` and JSON ``meta`` to ``cache`` atomically (a temp file, then rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as out:
            # savez's stub types **kwds as its options; the names here are array names.
            np.savez(out, **arrays, meta=np.array(json.dumps(meta)))  # type: ignore[arg-type]
        Path(tmp).replace(cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_npz_cache(
    cache: Path, names: Sequence[str]
) -> tuple[dict[str, npt.NDArray[Any]], Any] | None:
    """The arrays ``names`` and the JSON meta of a cache file; None if absent or unreadable."""
    try:
        # Opened here, not by np.load: np.load leaks its handle when the zip is corrupt.
        with cache.open("rb") as file, np.load(file, allow_pickle=False) as npz:
            return {name: npz[name] for name in names}, json.loads(str(npz["meta"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        _log.warning(
            "dataset cache unreadable, reading the pickle", cache=str(cache), error=str(exc)
        )
        return None


def _write_cache(cache: Path, arrays: _Arrays) -> None:
    activity = arrays.activity if arrays.activity is not None else np.zeros(0, np.int8)
    fields: dict[str, npt.NDArray[Any]] = {
        "bvp": arrays.bvp,
        "acc": arrays.acc,
        "label": arrays.label,
        "activity": activity,
        "has_activity": np.array(arrays.activity is not None),
    }
    write_npz_cache(cache, fields, arrays.meta)


def _read_cache(cache: Path) -> _Arrays | None:
    read = read_npz_cache(cache, ("bvp", "acc", "label", "activity", "has_activity"))
    if read is None:
        return None
    npz, meta = read
    activity = npz["activity"] if bool(npz["has_activity"]) else None
    return _Arrays(npz["bvp"], npz["acc"], npz["label"], activity, meta)


# --- public ------------------------------------------------------------------------------------


def _open_rb(path: Path) -> IO[bytes]:
    return path.open("rb", buffering=1 << 16)


def pickle_in(path: Path) -> Path:
    """Return the ``SX.pkl`` a path names: the file itself or ``SX/SX.pkl`` in a folder."""
    if path.is_dir():
        match = _SUBJECT_DIR.match(path.name)
        candidate = path / f"{path.name}.pkl"
        if match is None or not candidate.is_file():
            raise DatasetError(path, "not a PPG-DaLiA subject folder (expected SX/SX.pkl)")
        return candidate
    return path


def load_dalia(
    path: str | os.PathLike[str],
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    opener: Opener = _open_rb,
) -> Recording:
    """Load a PPG-DaLiA ``SX.pkl`` (or ``SX/`` folder), reading the pickle at most once."""
    pkl = pickle_in(Path(path))
    try:
        cache = cache_path_for(pkl, cache_dir) if use_cache else None
    except OSError as exc:
        raise DatasetError(pkl, f"cannot read: {exc.strerror or exc}") from exc
    arrays = _read_cache(cache) if cache is not None else None
    cached = arrays is not None
    skipped = 0
    if arrays is None:
        try:
            with opener(pkl) as file:
                loaded = restricted_load(file, str(pkl))
        except OSError as exc:
            raise DatasetError(pkl, f"cannot read: {exc.strerror or exc}") from exc
        skipped = loaded.skipped_bytes
        arrays = _extract(loaded.obj, pkl)
        del loaded  # the wrist arrays now live in `arrays`; drop everything else
        if cache is not None:
            try:
                _write_cache(cache, arrays)
            except OSError as exc:
                _log.warning("cannot write dataset cache", cache=str(cache), error=str(exc))
    return _recording(
        arrays,
        pkl,
        {"file": str(pkl), "from_cache": cached, "pickle_skipped_bytes": skipped},
    )


def _recording(arrays: _Arrays, file: Path, extra: dict[str, Any]) -> Recording:
    synthetic = arrays.meta.get("synthetic")
    subject = arrays.meta.get("subject") or file.stem
    metadata: dict[str, Any] = {
        **extra,
        "questionnaire": arrays.meta.get("questionnaire"),
        "hr_ref": "per 8 s window with 2 s shift"
        + (" (generator ground truth)" if synthetic else ", from the chest ECG"),
    }
    if synthetic:
        metadata["synthetic"] = synthetic
    try:
        return Recording(
            name=file.stem,
            source="synthetic" if synthetic else "dalia",
            subject=str(subject),
            bvp=arrays.bvp,
            acc=arrays.acc,
            hr_ref_bpm=arrays.label,
            hr_ref_kind="synthetic-truth" if synthetic else "ecg",
            labels=arrays.activity,
            label_names=ACTIVITY_NAMES,
            metadata=metadata,
        )
    except ValueError as exc:
        raise DatasetError(file, str(exc)) from exc


def recording_from_tree(tree: Mapping[str, Any], name: str = "S1") -> Recording:
    """Build a `Recording` from an in-memory PPG-DaLiA dict (e.g. fresh from the generator)."""
    label = Path(f"{name}.pkl")
    return _recording(_extract(dict(tree), label), label, {"file": None})


def dalia_subject_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Return the ``SX/SX.pkl`` files of a ``PPG_FieldStudy`` folder, by subject number."""
    root = Path(folder)
    found: list[tuple[int, Path]] = []
    for child in root.iterdir() if root.is_dir() else ():
        match = _SUBJECT_DIR.match(child.name)
        if match and (child / f"{child.name}.pkl").is_file():
            found.append((int(match.group(1)), child / f"{child.name}.pkl"))
        elif _SUBJECT_FILE.match(child.name) and child.is_file():
            found.append((int(child.stem[1:]), child))
    return [p for _, p in sorted(found)]
