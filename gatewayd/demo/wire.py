"""`gatewayd demo --wire`: one window from the C firmware stub through the gateway's decoder.

The C firmware stub encodes a synthetic 8 s window and cuts it into BLE notifications; the
gateway's decoder reassembles, checks and decodes them and prints what arrived, recomputing the
entropy and the offload decision to show both sides agree (docs/protocol.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from gatewayd.errors import GatewayError, NotYetAvailableError
from gatewayd.protocol.fragments import FrameDecoder
from gatewayd.protocol.messages import MessageFlags, Summary, Window
from gatewayd.protocol.sequencing import Delivered, Sequencer
from gatewayd.protocol.vectors import GoldenVector, parse_vectors
from gatewayd.signals.entropy import window_entropy_bits
from gatewayd.signals.offload import decide_offload, offload_confidence_e4

SPARK = "▁▂▃▄▅▆▇█"


def run(args: argparse.Namespace) -> int:
    """Run the firmware -> decoder demo and print what arrived."""
    program = args.firmware or _build_firmware_demo()
    vector = _run_firmware(program, args.mtu, args.seed)
    report = _decode(vector)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_report(report, vector, sys.stdout)
    return 0 if report["agree"] else 1


def _firmware_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "firmware_stub"


def _build_firmware_demo() -> Path:
    source = _firmware_dir()
    if not (source / "Makefile").is_file():
        raise NotYetAvailableError(
            "the firmware stub sources are not installed with the package; "
            "run `make demo` from a clone of the repository"
        )
    if shutil.which("make") is None or shutil.which("gcc") is None:
        raise NotYetAvailableError("the demo compiles the C firmware stub: install gcc and make")
    # Blocking is fine here: this is a one-shot command, not the daemon.
    done = subprocess.run(  # noqa: S603
        ["make", "-s", "-C", str(source), "all"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise GatewayError(f"building the firmware stub failed:\n{done.stderr.strip()}")
    return source / "build" / "demo"


def _run_firmware(program: Path, mtu: int, seed: int) -> GoldenVector:
    try:
        done = subprocess.run(  # noqa: S603
            [str(program), "--mtu", str(mtu), "--seed", str(seed)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GatewayError(f"could not run the firmware demo {program}: {exc}") from exc
    if done.returncode != 0:
        raise GatewayError(f"the firmware demo {program} failed: {done.stderr.strip()}")
    try:
        (vector,) = parse_vectors(done.stdout)
    except ValueError as exc:
        raise GatewayError(f"the firmware demo printed something unexpected: {exc}") from exc
    return vector


def _decode(vector: GoldenVector) -> dict[str, Any]:
    decoder = FrameDecoder()
    sequencer = Sequencer()
    arrived: list[Summary | Window] = []
    for now, frag in enumerate(vector.fragments):
        message = decoder.feed(frag, now=now * 0.001)
        if message is not None:
            arrived += [
                e.message for e in sequencer.push(message, now * 0.001) if isinstance(e, Delivered)
            ]
    if len(arrived) != 1:
        raise GatewayError(f"expected one message from the firmware, {len(arrived)} arrived")
    (message,) = arrived
    summary = message.summary if isinstance(message, Window) else message
    report: dict[str, Any] = {
        "fragments": len(vector.fragments),
        "mtu": vector.mtu,
        "bytes": len(vector.message),
        "crc32": f"{zlib.crc32(vector.message[:-4]):#010x}",
        "type": "WINDOW" if isinstance(message, Window) else "SUMMARY",
        "seq": summary.seq,
        "t": _timestamp(summary),
        "activity": summary.activity_name,
        "activity_confidence": summary.activity_confidence,
        "hr_bpm": summary.hr_bpm,
        "signal_quality_pct": summary.signal_quality,
        "battery_pct": summary.battery,
        "entropy_bits_wire": summary.entropy_bits,
        "flags": _flag_names(summary.flags),
    }
    agree = True
    if isinstance(message, Window):
        h_py = window_entropy_bits(message.bvp)
        report |= {
            "bvp": _stats(message.bvp, message.bvp_rate_hz, message.sample_format.name),
            "acc": _stats(message.acc, message.acc_rate_hz, message.sample_format.name),
            "acc_g_mean_magnitude": float(
                np.linalg.norm(message.acc.astype(np.float64), axis=1).mean()
                / message.acc_lsb_per_g
            ),
            "entropy_bits_c": vector.entropy,
            "entropy_bits_python": h_py,
        }
        agree = vector.entropy is not None and abs(h_py - vector.entropy) <= 1e-9
    if vector.policy is not None:
        tau, min_conf, c_reason = vector.policy
        confidence = offload_confidence_e4(
            summary.activity_conf_e4, summary.signal_quality, summary.hr_cbpm, summary.activity
        )
        py_reason = int(decide_offload(summary.entropy_mbits, confidence, tau, min_conf))
        report["policy"] = {
            "tau_mbits": tau,
            "min_conf_e4": min_conf,
            "reason_c": c_reason,
            "reason_python": py_reason,
        }
        agree = agree and c_reason == py_reason == int(summary.offload_reason)
    report["agree"] = agree
    return report


def _timestamp(s: Summary) -> str:
    if s.flags & MessageFlags.CLOCK_SYNCED:
        return datetime.fromtimestamp(s.t_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return f"{s.t_ms / 1000:.3f} s since device boot (clock not synced)"


def _flag_names(flags: MessageFlags) -> list[str]:
    return [f.name for f in MessageFlags if f and f in flags and f.name]


def _stats(x: NDArray[np.signedinteger], rate: int, fmt: str) -> dict[str, Any]:
    return {
        "shape": list(x.shape),
        "rate_hz": rate,
        "format": fmt,
        "min": int(x.min()),
        "max": int(x.max()),
        "mean": round(float(x.mean()), 2),
    }


def _sparkline(x: NDArray[np.signedinteger], width: int = 64) -> str:
    values = x[:width].astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return SPARK[0] * len(values)
    idx = ((values - lo) / (hi - lo) * (len(SPARK) - 1)).round().astype(int)
    return "".join(SPARK[i] for i in idx)


def _print_report(r: dict[str, Any], vector: GoldenVector, out: TextIO) -> None:
    w = out.write
    w("gatewayd demo: C firmware stub -> BLE notifications -> gateway decoder\n")
    w("(the full pipeline, with emulated wearables, MQTT and alerts: `gatewayd demo`)\n\n")
    w(
        f"sent      {r['type']} of {r['bytes']} bytes in {r['fragments']} fragments "
        f"at MTU {r['mtu']}\n"
    )
    w(f"arrived   seq {r['seq']}, window starting {r['t']}, CRC-32 {r['crc32']} ok\n")
    w(f"activity  {r['activity']} (local confidence {r['activity_confidence']:.2f})\n")
    hr = f"{r['hr_bpm']:.2f} bpm" if r["hr_bpm"] is not None else "none"
    w(f"heart     {hr} (wearable's local estimate)\n")
    battery = f"{r['battery_pct']} %" if r["battery_pct"] is not None else "unknown"
    w(f"device    signal quality {r['signal_quality_pct']} %, battery {battery}\n")
    w(f"flags     {', '.join(r['flags']) or 'none'}\n")
    if "bvp" in r:
        b, a = r["bvp"], r["acc"]
        w(
            f"BVP       {b['shape'][0]} samples at {b['rate_hz']} Hz ({b['format']}), "
            f"range {b['min']}..{b['max']}\n"
        )
        message = vector.message
        bvp = np.frombuffer(
            message, dtype="<i2" if b["format"] == "INT16" else "i1", count=b["shape"][0], offset=40
        )
        w(f"          {_sparkline(bvp)}  (first second)\n")
        w(
            f"ACC       {a['shape'][0]}x3 samples at {a['rate_hz']} Hz, "
            f"mean |a| = {r['acc_g_mean_magnitude']:.2f} g\n"
        )
        w(f"entropy   H(X) = {r['entropy_bits_c']:.12f} bits computed in C\n")
        w(f"          H(X) = {r['entropy_bits_python']:.12f} bits recomputed by the gateway\n")
    if "policy" in r:
        p = r["policy"]
        decision = "offload" if p["reason_c"] else "keep local"
        w(
            f"policy    tau {p['tau_mbits']} mbits, min confidence {p['min_conf_e4'] / 1e4:.2f}: "
            f"{decision} (C reason {p['reason_c']}, Python reason {p['reason_python']})\n"
        )
    verdict = "firmware and gateway agree" if r["agree"] else "MISMATCH between them"
    w(f"\n{verdict}\n")
