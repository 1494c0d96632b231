"""The C firmware stub against the Python gateway (docs/protocol.md §8).

The module builds firmware_stub/ with gcc into a temporary directory, runs its C unit tests,
regenerates the golden vectors and compares them byte for byte with the committed
firmware_stub/vectors/golden.txt, then checks every vector with the Python side: fragments,
reassembly, decoding and re-encoding, entropy, offload decision, reported motion (motion_cg),
info and control verdicts.
The motion offload's fall decision has its own vectors, firmware_stub/vectors/fall.txt
(firmware_stub/README.md), replayed with gatewayd.signals.offload, and a C program that decides
windows given on stdin (and computes their motion_cg), fed random and (when present) real
accelerometer windows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from gatewayd.errors import DecodeError
from gatewayd.protocol.control import (
    Opcode,
    decode_control,
    decode_info,
    encode_control,
    encode_info,
)
from gatewayd.protocol.fragments import Reassembler, fragment
from gatewayd.protocol.messages import (
    MOTION_SHIFT,
    OFFLOAD_MASK,
    MessageFlags,
    SampleFormat,
    Summary,
    Window,
    decode_message,
    encode_message,
)
from gatewayd.protocol.vectors import GoldenVector, parse_vectors
from gatewayd.signals.entropy import window_entropy_bits
from gatewayd.signals.offload import (
    FallTrigger,
    decide_offload,
    fall_impact_index,
    last_impact_index,
    motion_cg,
    motion_offload,
    offload_confidence_e4,
)

pytestmark = [
    pytest.mark.needs_gcc,
    pytest.mark.skipif(
        shutil.which("gcc") is None or shutil.which("make") is None,
        reason="gcc and make are needed to build firmware_stub/ (apt-get install gcc make)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "firmware_stub"
GOLDEN = STUB / "vectors" / "golden.txt"
TYPE_SUMMARY = 1
TYPE_WINDOW = 2
OFFLOAD_BITS = int(OFFLOAD_MASK)
MOTION_REPORTED = int(MessageFlags.MOTION_REPORTED)

VECTORS = parse_vectors(GOLDEN.read_text(encoding="ascii"))
WINDOW_VECTORS = [v for v in VECTORS if v.message[1] == TYPE_WINDOW]
INFO_VECTORS = [v for v in VECTORS if v.info is not None]
CONTROLS = [(cmd, ok) for v in VECTORS for cmd, ok in v.controls]


def _ids(vectors: list[GoldenVector]) -> list[str]:
    return [v.name for v in vectors]


def _run(args: list[str | Path], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command without the MAKEFLAGS of an enclosing make (e.g. `make test`)."""
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compile the library, golden, demo and test_gwfw with gcc into a fresh directory."""
    out = tmp_path_factory.mktemp("firmware_stub_build")
    result = _run(["make", "-C", STUB, f"BUILD_DIR={out}", "CC=gcc"], timeout=300)
    assert result.returncode == 0, f"make failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def generated(build_dir: Path) -> bytes:
    """The golden vectors as the freshly built C program writes them."""
    path = build_dir / "golden.txt"
    result = _run([build_dir / "golden", path])
    assert result.returncode == 0, result.stderr
    return path.read_bytes()


def _seq(message: bytes) -> int:
    return int.from_bytes(message[4:8], "little")


def _summary(decoded: Summary | Window) -> Summary:
    return decoded.summary if isinstance(decoded, Window) else decoded


# ---- checks shared by the golden vectors and the demo -------------------------------------------


def check_fragments(vec: GoldenVector) -> None:
    """C's fragments are Python's, byte for byte, and each fits one notification."""
    assert list(vec.fragments) == fragment(vec.message, _seq(vec.message), vec.mtu)
    assert all(len(f) <= vec.mtu - 3 for f in vec.fragments)


def check_reassembly(vec: GoldenVector) -> None:
    """The Reassembler rebuilds the message from the fragments, in order and reversed."""
    for order in (list(vec.fragments), list(reversed(vec.fragments))):
        reassembler = Reassembler()
        results = [reassembler.feed(f, now=0.0) for f in order]
        assert results[:-1] == [None] * (len(order) - 1)
        assert results[-1] == vec.message


def check_decode(vec: GoldenVector) -> Summary | Window:
    """The message decodes, and re-encoding the decoded message gives the same bytes."""
    decoded = decode_message(vec.message)
    assert isinstance(decoded, Window if vec.message[1] == TYPE_WINDOW else Summary)
    assert _summary(decoded).seq == _seq(vec.message)
    assert encode_message(decoded) == vec.message
    return decoded


def check_entropy_and_policy(vec: GoldenVector, decoded: Summary | Window) -> None:
    """Python's entropy equals C's; the policy and the flags' offload bits agree."""
    summary = _summary(decoded)
    if isinstance(decoded, Window):
        assert vec.entropy is not None, "a WINDOW vector carries the C entropy"
        assert vec.policy is not None, "a WINDOW vector carries the C offload decision"
        expected_dtype = np.int16 if decoded.sample_format == SampleFormat.INT16 else np.int8
        assert decoded.bvp.dtype == expected_dtype
        h = window_entropy_bits(decoded.bvp)
        assert abs(h - vec.entropy) <= 1e-9, (h, vec.entropy)
        assert summary.entropy_mbits == math.floor(vec.entropy * 1000.0 + 0.5)
    # Each vector stands alone (no fall before it): motion means the window is a fall candidate
    # (which starts before its impact, so the hold covers it).
    motion = isinstance(decoded, Window) and (
        fall_impact_index(decoded.acc, decoded.acc_lsb_per_g, decoded.acc_rate_hz) is not None
    )
    if vec.policy is not None:
        tau, min_conf, reason = vec.policy
        confidence = offload_confidence_e4(
            summary.activity_conf_e4, summary.signal_quality, summary.hr_cbpm, summary.activity
        )
        decided = decide_offload(summary.entropy_mbits, confidence, tau, min_conf, motion=motion)
        assert int(decided) == reason
        assert int(summary.flags) & OFFLOAD_BITS == reason
        if isinstance(decoded, Window):
            assert reason != 0, "a WINDOW is only sent when the policy offloads"


def check_motion(decoded: Summary | Window) -> None:
    """Bits 8-15 are motion_cg with MOTION_REPORTED (for a WINDOW: Python's motion_cg of its
    ACC), and 0 without it (C refuses reserved bits)."""
    summary = _summary(decoded)
    flags = int(summary.flags)
    if not flags & MOTION_REPORTED:
        assert flags >> MOTION_SHIFT == 0
        assert summary.motion_g is None
        return
    cg = flags >> MOTION_SHIFT
    assert summary.motion_g == cg / 100
    if isinstance(decoded, Window):
        assert motion_cg(decoded.acc, decoded.acc_lsb_per_g) == cg


# ---- the C side on its own ----------------------------------------------------------------------


def test_c_unit_tests_pass(build_dir: Path) -> None:
    result = _run([build_dir / "test_gwfw"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checks passed" in result.stdout


def test_committed_golden_vectors_are_up_to_date(generated: bytes) -> None:
    assert generated == GOLDEN.read_bytes(), (
        "firmware_stub/vectors/golden.txt differs from what build/golden writes now: "
        "run `make -C firmware_stub vectors`, review the diff and commit it"
    )


def test_golden_writes_the_same_to_stdout(build_dir: Path, generated: bytes) -> None:
    result = _run([build_dir / "golden"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode("ascii") == generated


def test_golden_vectors_cover_the_protocol() -> None:
    names = {v.name for v in VECTORS}
    assert len(names) == len(VECTORS)
    by_name = {v.name: v for v in VECTORS}
    assert len(by_name["summary_mtu23"].fragments) == 2
    assert len(by_name["window_int16_mtu23"].fragments) == 163
    assert len(by_name["window_int16_mtu247"].fragments) == 11
    assert len(by_name["window_int8_max_mtu23"].message) == 4080
    assert len(by_name["window_int8_max_mtu23"].fragments) == 255
    assert by_name["window_constant_mtu247"].entropy == 0.0
    assert {_seq(v.message) for v in VECTORS} >= {0, 0xFFFFFFFF}
    assert {v.message[28] for v in WINDOW_VECTORS} == {int(f) for f in SampleFormat}
    assert {v.policy[2] for v in VECTORS if v.policy is not None} == {0, 1, 2, 3}
    # The offload confidence is the activity's probability times the heart rate's quality, and
    # the quality is left out of a window without a pulse.
    unsure = decode_message(by_name["summary_unsure_hr_mtu247"].message)
    no_pulse = decode_message(by_name["summary_no_pulse_mtu247"].message)
    assert isinstance(unsure, Summary)
    assert isinstance(no_pulse, Summary)
    assert (unsure.activity_conf_e4, unsure.signal_quality) == (9500, 41)
    assert by_name["summary_unsure_hr_mtu247"].policy == (4000, 5000, 2)
    assert (no_pulse.hr_cbpm, no_pulse.signal_quality) == (0, 0)
    assert by_name["summary_no_pulse_mtu247"].policy == (4000, 5000, 0)
    assert {v.mtu for v in VECTORS} >= {23, 185, 247, 517}
    assert any(v.message[2] & int(MessageFlags.RESENT) for v in WINDOW_VECTORS)
    assert {ok for _, ok in CONTROLS} == {True, False}
    assert {cmd[1] for cmd, ok in CONTROLS if ok} == {int(op) for op in Opcode}
    assert INFO_VECTORS


def test_no_golden_window_holds_an_impact() -> None:
    # Their `policy` lines stay within bits 0-1, what gatewayd/protocol/vectors.py accepts; the
    # motion decision is covered by vectors/fall.txt.
    for vec in WINDOW_VECTORS:
        decoded = decode_message(vec.message)
        assert isinstance(decoded, Window)
        assert last_impact_index(decoded.acc, decoded.acc_lsb_per_g) is None
        assert not vec.message[2] & int(MessageFlags.OFFLOAD_MOTION)


def test_golden_vectors_cover_reported_motion() -> None:
    # Every WINDOW reports the motion of its own ACC; SUMMARYs both report it (0, mid values and
    # the saturated 255) and leave it out (an older sender, bit 7 clear).
    def reported(vec: GoldenVector) -> int | None:
        flags = int.from_bytes(vec.message[2:4], "little")
        return flags >> MOTION_SHIFT if flags & MOTION_REPORTED else None

    assert all(reported(v) is not None for v in WINDOW_VECTORS)
    assert len({reported(v) for v in WINDOW_VECTORS}) >= 3
    summaries = [reported(v) for v in VECTORS if v.message[1] == TYPE_SUMMARY]
    assert None in summaries
    assert {0, 255} <= set(summaries)
    assert any(cg not in (None, 0, 255) for cg in summaries)


def test_golden_activities_are_groups() -> None:
    # The activity byte carries an activity group: 0 rest, 1 light, 2 vigorous, 255 unknown.
    activities = {v.message[16] for v in VECTORS}
    assert activities <= {0, 1, 2, 255}
    assert activities >= {0, 2, 255}


# ---- every golden vector against the Python gateway ---------------------------------------------


@pytest.mark.parametrize("vec", VECTORS, ids=_ids(VECTORS))
def test_fragments_equal_python_fragments(vec: GoldenVector) -> None:
    check_fragments(vec)


@pytest.mark.parametrize("vec", VECTORS, ids=_ids(VECTORS))
def test_fragments_reassemble_to_the_message(vec: GoldenVector) -> None:
    check_reassembly(vec)


@pytest.mark.parametrize("vec", VECTORS, ids=_ids(VECTORS))
def test_message_decodes_and_reencodes_identically(vec: GoldenVector) -> None:
    decoded = check_decode(vec)
    check_entropy_and_policy(vec, decoded)
    check_motion(decoded)


def test_window_entropy_is_bit_identical_on_this_host(generated: bytes) -> None:
    # C built here and numpy here: the same IEEE operations and the same libm log2, so the
    # entropies are equal to the last bit (docs/signals.md §4.1), not merely within 1e-9.
    windows = [v for v in parse_vectors(generated.decode("ascii")) if v.message[1] == TYPE_WINDOW]
    assert windows
    for vec in windows:
        decoded = decode_message(vec.message)
        assert isinstance(decoded, Window)
        assert window_entropy_bits(decoded.bvp) == vec.entropy, vec.name


@pytest.mark.parametrize("vec", INFO_VECTORS, ids=_ids(INFO_VECTORS))
def test_info_decodes_and_reencodes_identically(vec: GoldenVector) -> None:
    assert vec.info is not None
    info = decode_info(vec.info)
    assert encode_info(info) == vec.info
    assert (info.fw_major, info.fw_minor) == (vec.info[1], vec.info[2])


@pytest.mark.parametrize(
    ("command", "accepted"),
    CONTROLS,
    ids=[f"{cmd.hex()}-{'ok' if ok else 'reject'}" for cmd, ok in CONTROLS],
)
def test_control_verdict_matches_c(command: bytes, accepted: bool) -> None:
    if accepted:
        assert encode_control(decode_control(command)) == command
    else:
        with pytest.raises(DecodeError):
            decode_control(command)


# ---- the motion offload: the fall decision (vectors/fall.txt) ----------------------------------

FALL_VECTORS_FILE = STUB / "vectors" / "fall.txt"
TROIKA = ROOT.parent / "shared" / "data" / "troika"


@dataclass(frozen=True)
class FallVector:
    """One block of vectors/fall.txt: a window (`fall`) or a stream cut into windows (`stream`)."""

    kind: str
    name: str
    rate: int
    lsb: int
    trigger: FallTrigger
    acc: np.ndarray
    #: fall: what gwfw_acc_last_impact and gwfw_fall_impact returned (None for -1).
    last_impact: int | None = None
    fall_impact: int | None = None
    #: stream: samples per window and per step, the hold, and the MOTION bit of each window.
    window: tuple[int, int] | None = None
    hold_ms: int | None = None
    motion: str | None = None


def _index(text: str) -> int | None:
    value = int(text)
    return None if value < 0 else value


def _fall_vector(kind: str, name: str, fields: dict[str, list[str]]) -> FallVector:
    impact, settle, still, block, moving = (int(v) for v in fields["params"])
    vec = FallVector(
        kind=kind,
        name=name,
        rate=int(fields["rate"][0]),
        lsb=int(fields["lsb"][0]),
        trigger=FallTrigger(impact, settle, still, block, moving),
        acc=np.frombuffer(bytes.fromhex(fields["acc"][0]), dtype="<i2").reshape(-1, 3),
    )
    if kind == "fall":
        return replace(
            vec,
            last_impact=_index(fields["last_impact"][0]),
            fall_impact=_index(fields["fall_impact"][0]),
        )
    size, step = (int(v) for v in fields["window"])
    return replace(
        vec, window=(size, step), hold_ms=int(fields["hold"][0]), motion=fields["motion"][0]
    )


def parse_fall_vectors(text: str) -> list[FallVector]:
    """The blocks of vectors/fall.txt (its format: firmware_stub/README.md)."""
    vectors: list[FallVector] = []
    block: tuple[str, str, dict[str, list[str]]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, *args = line.split()
        if key in ("fall", "stream"):
            assert block is None, f"line {number}: {key} inside a block"
            assert len(args) == 1, f"line {number}: {line[:40]}"
            block = (key, args[0], {})
        elif key == "end":
            assert block is not None, f"line {number}: end outside a block"
            vectors.append(_fall_vector(*block))
            block = None
        else:
            assert block is not None, f"line {number}: {key} outside a block"
            assert key not in block[2], f"line {number}: a second {key} line"
            block[2][key] = args
    assert block is None, "the last block has no end"
    return vectors


FALLS = parse_fall_vectors(FALL_VECTORS_FILE.read_text(encoding="ascii"))
FALL_WINDOWS = [v for v in FALLS if v.kind == "fall"]
FALL_STREAMS = [v for v in FALLS if v.kind == "stream"]


def replay_stream(vec: FallVector) -> str:
    """The wearable's loop over a stream (WearableCore._motion), in Python: one bit a window."""
    assert vec.window is not None
    assert vec.hold_ms is not None
    size, step = vec.window
    fall_ms: int | None = None
    bits = []
    for start in range(0, vec.acc.shape[0] - size + 1, step):
        start_ms = start * 1000 // vec.rate
        k = fall_impact_index(vec.acc[start : start + size], vec.lsb, vec.rate, vec.trigger)
        if k is not None:
            fall_ms = start_ms + k * 1000 // vec.rate
        bits.append("1" if motion_offload(start_ms, fall_ms, hold_ms=vec.hold_ms) else "0")
    return "".join(bits)


@pytest.fixture(scope="module")
def generated_falls(build_dir: Path) -> bytes:
    """The fall vectors as the freshly built C program writes them."""
    path = build_dir / "fall.txt"
    result = _run([build_dir / "fall", path])
    assert result.returncode == 0, result.stderr
    assert _run([build_dir / "fall"]).stdout.encode("ascii") == path.read_bytes()
    return path.read_bytes()


def test_committed_fall_vectors_are_up_to_date(generated_falls: bytes) -> None:
    assert generated_falls == FALL_VECTORS_FILE.read_bytes(), (
        "firmware_stub/vectors/fall.txt differs from what build/fall writes now: "
        "run `make -C firmware_stub vectors`, review the diff and commit it"
    )


@pytest.mark.parametrize("vec", FALL_WINDOWS, ids=[v.name for v in FALL_WINDOWS])
def test_fall_decision_equals_c(vec: FallVector) -> None:
    assert last_impact_index(vec.acc, vec.lsb, vec.trigger.impact_milli_g) == vec.last_impact
    assert fall_impact_index(vec.acc, vec.lsb, vec.rate, vec.trigger) == vec.fall_impact


@pytest.mark.parametrize("vec", FALL_STREAMS, ids=[v.name for v in FALL_STREAMS])
def test_motion_bits_of_a_stream_equal_c(vec: FallVector) -> None:
    assert replay_stream(vec) == vec.motion


def test_fall_vectors_cover_the_cases() -> None:
    by_name = {v.name: v for v in FALLS}
    assert len(by_name) == len(FALLS)
    for name in ("fall", "fall_bounce", "fall_int8_range", "fall_25hz", "spread_below_bound"):
        assert by_name[name].fall_impact is not None, name
        assert by_name[name].fall_impact == by_name[name].last_impact
    # an impact without the signature: too late in the window, running, moving afterwards
    for name in ("fall_late", "running", "impact_then_running", "fall_then_up", "spread_at_bound"):
        assert by_name[name].last_impact is not None, name
        assert by_name[name].fall_impact is None, name
    int8 = by_name["fall_int8_range"].acc
    assert int8.min() >= -128
    assert int8.max() <= 127
    assert by_name["fall_25hz"].rate == 25
    assert {by_name[n].fall_impact for n in ("wide_at_bound", "wide_below_bound")} == {None, 0}
    walk_fall = by_name["stream_walk_fall"].motion
    assert walk_fall is not None
    assert "1" in walk_fall
    # One run of offloaded windows: from the candidate to the end of the hold.
    assert walk_fall.strip("0") == "1" * walk_fall.count("1")
    assert set(by_name["stream_running"].motion or "") == {"0"}


def _eval_line(acc: np.ndarray, lsb: int, rate: int, t: FallTrigger) -> str:
    params = (rate, lsb, t.impact_milli_g, t.settle_ms, t.still_ms, t.block_ms, t.moving_milli_g)
    return " ".join(map(str, params)) + " " + acc.astype("<i2").tobytes().hex()


def _c_decides(
    build_dir: Path, cases: list[tuple[np.ndarray, int, int, FallTrigger]]
) -> list[tuple[int | None, int | None, int]]:
    """`fall --eval` on each case: (last impact, fall impact, motion_cg) as C computes them."""
    result = subprocess.run(
        [str(build_dir / "fall"), "--eval"],
        input="".join(_eval_line(*case) + "\n" for case in cases),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = []
    for line in result.stdout.splitlines():
        last, k, cg = line.split()
        answers.append((_index(last), _index(k), int(cg)))
    assert len(answers) == len(cases)
    return answers


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, int, int, FallTrigger]:
    """A window at rest with noise near the moving bound and an impact near the threshold."""
    rate = int(rng.choice([4, 25, 32, 64, 125, 250, 255]))
    lsb = int(rng.choice([1, 16, 64, 500, 1000, 4096, 65535]))
    trigger = FallTrigger(
        impact_milli_g=int(rng.choice([1000, 3000, 3000, int(rng.integers(0, 65536))])),
        settle_ms=int(rng.choice([0, 1, 2000, int(rng.integers(0, 4000))])),
        still_ms=int(rng.choice([0, 2000, int(rng.integers(0, 4000))])),
        block_ms=int(rng.choice([1, 1000, int(rng.integers(1, 3000))])),
        moving_milli_g=int(rng.choice([0, 150, 150, int(rng.integers(0, 65536))])),
    )
    n = int(rng.integers(0, min(8 * rate, 2040) + 1)) if rng.random() < 0.1 else min(8 * rate, 2040)
    acc = np.zeros((n, 3), dtype=np.int64)
    acc[:, 2] = min(lsb, 32767)
    # Uniform noise in [-a, a] on three axes has a spread of about a: put it near the bound.
    bound = trigger.moving_milli_g * lsb / 1000
    noise = int(min(32767, bound * rng.uniform(0.2, 1.1) + rng.integers(0, 3)))
    acc += rng.integers(-noise, noise + 1, size=(n, 3))
    if n:
        level = min(32767, trigger.impact_milli_g * lsb // 1000 + int(rng.integers(-2, 3)))
        acc[int(rng.integers(0, max(1, n // 3)))] = (0, 0, level)
    return np.clip(acc, -32768, 32767).astype(np.int16), lsb, rate, trigger


def _python_decides(
    cases: list[tuple[np.ndarray, int, int, FallTrigger]],
) -> list[tuple[int | None, int | None, int]]:
    return [
        (
            last_impact_index(acc, lsb, t.impact_milli_g),
            fall_impact_index(acc, lsb, rate, t),
            motion_cg(acc, lsb),
        )
        for acc, lsb, rate, t in cases
    ]


def test_c_decides_random_windows_as_python_does(build_dir: Path) -> None:
    rng = np.random.default_rng(20260101)
    cases = [_random_case(rng) for _ in range(400)]
    answers = _c_decides(build_dir, cases)
    python = _python_decides(cases)
    assert answers == python
    # The cases exercise both answers: candidates, and impacts that are not one.
    assert sum(k is not None for _, k, _ in python) >= 20
    assert sum(last is not None and k is None for last, k, _ in python) >= 20


def _motion_case(rng: np.random.Generator) -> tuple[np.ndarray, int, int, FallTrigger]:
    """A window for motion_cg: any length up to 4096 (fall --eval's limit), any lsb, and samples
    from a still wrist to the int16 extremes, scaled so the answers spread over 0..255."""
    n = int(rng.choice([0, 1, 2, 3, 256, 4096, int(rng.integers(0, 4097))]))
    lsb = int(rng.choice([1, 2, 64, 100, 1000, 4096, 32768, 65535, int(rng.integers(1, 65536))]))
    kind = int(rng.integers(0, 5))
    if kind == 0:  # the int16 extremes on every axis
        acc = rng.choice(np.array([-32768, 32767]), size=(n, 3))
    elif kind == 1:  # anywhere in int16
        acc = rng.integers(-32768, 32768, size=(n, 3))
    elif kind == 2:  # a still wrist in some orientation, with or without a glitch
        acc = np.tile(rng.integers(-32768, 32768, size=3), (n, 1))
        if n and rng.random() < 0.5:
            acc[int(rng.integers(0, n))] += rng.integers(-3, 4, size=3)
    else:  # gravity plus noise aimed at an RMS of 0..3 g (uniform [-a, a]: about a on 3 axes)
        a = int(min(32767, lsb * rng.uniform(0.0, 3.0)))
        acc = rng.integers(-a, a + 1, size=(n, 3)) + np.array([0, 0, min(lsb, 32767)])
    acc = np.clip(acc, -32768, 32767).astype(np.int16).reshape(n, 3)
    return acc, lsb, 32, FallTrigger()


def _rounding_cases() -> list[tuple[np.ndarray, int, int, FallTrigger]]:
    """Windows where the rounding of (2q + nL) // (2nL) is tight (test_gwfw.c's cases)."""
    half = np.array([[0, 0, 0], [1, 0, 0]], dtype=np.int16)  # V = 1, q = 100: 0.5 at lsb 100
    ramp = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=np.int16)  # q = 244 < 244.95
    return [(half, lsb, 32, FallTrigger()) for lsb in (1, 99, 100, 101)] + [
        (ramp, lsb, 32, FallTrigger()) for lsb in (1, 163)
    ]


def test_c_motion_cg_equals_python_on_random_windows(build_dir: Path) -> None:
    rng = np.random.default_rng(20260419)
    cases = [_motion_case(rng) for _ in range(300)] + _rounding_cases()
    answers = _c_decides(build_dir, cases)
    python = _python_decides(cases)
    assert answers == python
    motion = [cg for _, _, cg in python]
    assert motion[-6:] == [50, 1, 1, 0, 81, 0]
    # 0 (still, empty, one sample), 255 (saturated) and many values in between.
    assert {0, 255} <= set(motion)
    assert len({cg for cg in motion if 0 < cg < 255}) >= 50
    assert any(acc.shape[0] == 0 for acc, *_ in cases)
    assert any(acc.shape[0] == 4096 for acc, *_ in cases)


@pytest.mark.needs_data
def test_c_decides_real_windows_as_python_does(build_dir: Path) -> None:
    if not TROIKA.is_dir():
        pytest.skip(f"TROIKA recordings not found at {TROIKA}")
    from gatewayd.datasets import find_recordings, load
    from gatewayd.emulator.wearable import quantise

    cases = []
    for source in find_recordings(TROIKA):
        acc = quantise(load(source).acc, 1.0, SampleFormat.INT16).reshape(-1, 3)
        for start in range(0, acc.shape[0] - 256 + 1, 64):
            cases.append((acc[start : start + 256], 64, 32, FallTrigger()))
    if not cases:
        pytest.skip(f"no TROIKA recordings in {TROIKA}")
    python = _python_decides(cases)
    assert _c_decides(build_dir, cases) == python
    assert len({cg for _, _, cg in python}) >= 10, "real wrists move in many ways"


# ---- the demo program ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--mtu", "23", "--seed", "7"], ["--mtu", "517"]])
def test_demo_output_parses_and_decodes(build_dir: Path, args: list[str]) -> None:
    result = _run([build_dir / "demo", *args])
    assert result.returncode == 0, result.stderr
    (vec,) = parse_vectors(result.stdout)
    assert vec.name == "demo"
    check_fragments(vec)
    check_reassembly(vec)
    decoded = check_decode(vec)
    assert isinstance(decoded, Window)
    assert decoded.bvp.shape == (512,)
    assert decoded.acc.shape == (256, 3)
    check_entropy_and_policy(vec, decoded)
    check_motion(decoded)
    assert decoded.summary.motion_g is not None, "the demo reports its window's motion"
    assert _run([build_dir / "demo", *args]).stdout == result.stdout, "demo is deterministic"


def test_demo_seed_changes_the_window(build_dir: Path) -> None:
    one = parse_vectors(_run([build_dir / "demo", "--seed", "1"]).stdout)[0]
    two = parse_vectors(_run([build_dir / "demo", "--seed", "2"]).stdout)[0]
    assert one.message != two.message


@pytest.mark.parametrize("args", [["--mtu", "22"], ["--mtu", "518"], ["--seed", "-1"], ["-x"]])
def test_demo_rejects_bad_arguments(build_dir: Path, args: list[str]) -> None:
    result = _run([build_dir / "demo", *args])
    assert result.returncode == 2
    assert "usage" in result.stderr


# ---- the vector parser ------------------------------------------------------------------------

_GOOD = "# c\nvector v\nmtu 23\nmessage 0102\nfragment 0000000101\nfragment 0000010102\nend\n"


def test_parse_vectors_reads_every_line_kind() -> None:
    text = (
        "vector a.b-c_1\n  # indented comment\n\nmtu 247\nmessage 00ff\nfragment 0000000100ff\n"
        "entropy 3.6293432628869025\npolicy 3500 6000 3\ninfo 01\ncontrol 0103 reject\n"
        "control 010328 ok\nend\n" + _GOOD
    )
    a, v = parse_vectors(text)
    assert a == GoldenVector(
        name="a.b-c_1",
        mtu=247,
        message=b"\x00\xff",
        fragments=(b"\x00\x00\x00\x01\x00\xff",),
        entropy=3.6293432628869025,
        policy=(3500, 6000, 3),
        info=b"\x01",
        controls=((b"\x01\x03", False), (b"\x01\x03\x28", True)),
    )
    assert (v.entropy, v.policy, v.info, v.controls) == (None, None, None, ())
    assert parse_vectors("") == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("mtu 23\n", 1),
        ("vector a\nvector b\n", 2),
        ("vector a\nmtu 23\n", 2),
        ("vector a\nmtu 23\nend\n", 3),
        ("vector a b\n", 1),
        ("vector a\nmtu 22\n", 2),
        ("vector a\nmtu 0x17\n", 2),
        ("vector a\nmtu 23\nmtu 23\n", 3),
        ("vector a\nmessage 0A\n", 2),
        ("vector a\nmessage 012\n", 2),
        ("vector a\nfragment\n", 2),
        ("vector a\nentropy nan\n", 2),
        ("vector a\nentropy 1e999\n", 2),
        ("vector a\npolicy 1 2\n", 2),
        ("vector a\npolicy 1 2 4\n", 2),
        ("vector a\npolicy 1 65536 0\n", 2),
        ("vector a\ncontrol 01 maybe\n", 2),
        ("vector a\nsomething 1\n", 2),
        ("vector a\nend now\n", 2),
        (_GOOD + "vector v\n", 8),
    ],
)
def test_parse_vectors_names_the_bad_line(text: str, line: int) -> None:
    with pytest.raises(ValueError, match=rf"^line {line}: "):
        parse_vectors(text)


# ---- `gatewayd demo`, what `make demo` runs -----------------------------------------------------


def test_gatewayd_demo_prints_the_decoded_window(build_dir: Path) -> None:
    result = _run(
        [sys.executable, "-m", "gatewayd", "demo", "--firmware", build_dir / "demo", "--mtu", "23"]
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "sent      WINDOW of 2604 bytes in 163 fragments at MTU 23" in out
    assert "BVP       512 samples at 64 Hz (INT16)" in out
    assert "firmware and gateway agree" in out


def test_gatewayd_demo_json_matches_the_firmware(build_dir: Path) -> None:
    result = _run([sys.executable, "-m", "gatewayd", "demo", "--firmware", build_dir / "demo",
                   "--json", "--seed", "3"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (vector,) = parse_vectors(_run([build_dir / "demo", "--seed", "3"]).stdout)
    message = decode_message(vector.message)
    assert isinstance(message, Window)
    assert report["seq"] == message.seq == 3
    assert report["bytes"] == len(vector.message)
    assert report["entropy_bits_python"] == window_entropy_bits(message.bvp)
    assert abs(report["entropy_bits_c"] - report["entropy_bits_python"]) <= 1e-9
    assert report["bvp"]["shape"] == [512]
    assert report["agree"] is True
