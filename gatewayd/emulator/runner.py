"""`gatewayd emulate`: a private bus, the fake BlueZ and virtual wearables, until stopped.

It prints the two environment lines a gateway (or `gatewayd pair`) needs to talk to it, then a
status line every few seconds. SIGTERM stops it as Ctrl-C does. The wearables start at random
phases of the 2 s window hop unless ``lockstep``; with ``stamps`` the time each new message starts
going out is appended to that file (`gatewayd bench scale` matches them with what it receives).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from gatewayd.datasets import FORMATS, find_recordings, load
from gatewayd.datasets.recording import Recording
from gatewayd.datasets.synthetic import generate_recording, write_synthetic_dataset
from gatewayd.errors import EmulatorError
from gatewayd.lifecycle import settle_heap
from gatewayd.protocol.messages import SampleFormat

from .bluez import FakeBluez, install_bluetoothctl_shim
from .bus import SYSTEM_BUS_CONNECTIONS_PER_USER, BusLimits, PrivateBus
from .faults import parse_faults
from .virtual import (
    Fleet,
    FleetSetup,
    SendStamps,
    build_fleet,
    format_stamps,
    load_wearable_model,
    run_fleet,
)

#: How often send stamps are appended to the stamps file.
STAMPS_FLUSH_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class EmulateOptions:
    """What `gatewayd emulate` was asked for."""

    #: Files or folders of recordings to replay (none: synthetic subjects).
    datasets: tuple[Path, ...] = ()
    devices: int = 2
    adapters: int = 1
    slots: int = 5
    heart_rate_straps: int = 0
    speed: float = 1.0
    faults: str = ""
    mtu: int = 247
    minutes: float = 10.0
    seed: int = 1
    int8: bool = False
    bus: str | None = None
    #: max_connections_per_user of the bus it starts (the system bus's by default).
    bus_connections_per_user: int = SYSTEM_BUS_CONNECTIONS_PER_USER
    #: Stop after this many seconds (None: when interrupted).
    duration_s: float | None = None
    status_every_s: float = 5.0
    #: The wearables' pruning level: their local model is the shipped one pruned this much.
    pruning_pct: int = 40
    #: Where the wearable models are (None: the installed gatewayd/models).
    models_dir: Path | None = None
    #: Run the wearables without a local model (activity unknown).
    no_model: bool = False
    #: Every wearable switched on at once (windows complete in lock-step); default: staggered.
    lockstep: bool = False
    #: BlueZ holds a bond with every device from the start (as after `gatewayd pair`).
    bonded: bool = False
    #: Append each new message's send time (CLOCK_MONOTONIC ns) to this file.
    stamps: Path | None = None
    #: Replay the recordings endlessly, each wearable from its own window (FleetSetup.loop).
    loop: bool = False


def load_recordings(options: EmulateOptions) -> list[Recording]:
    """The recordings to replay: those under every --dataset (in order, at most one per
    wearable), else synthetic subjects (labelled so).

    A set without PPG (``has_bvp`` False: the HAR sets) replays with a flat BVP.
    """
    if not options.datasets:
        subjects = max(1, min(options.devices, 4))
        return [
            generate_recording(i + 1, options.minutes, options.seed + i) for i in range(subjects)
        ]
    sources = list(dict.fromkeys(s for d in options.datasets for s in find_recordings(d)))
    if not sources:
        named = ", ".join(str(d) for d in options.datasets)
        raise EmulatorError(f"{named}: no recordings found (recognised: {FORMATS})")
    wanted = min(len(sources), max(1, options.devices))
    return [load(s) for s in itertools.islice(sources, wanted)]


def _status(fleet: Fleet) -> str:
    connected = sum(d.connected for d, _ in fleet.wearables)
    sent = sum(w.messages_sent for _, w in fleet.wearables)
    windows = sum(w.core.counters.windows for _, w in fleet.wearables)
    resent = sum(w.core.counters.resent for _, w in fleet.wearables)
    done = sum(w.done.is_set() for _, w in fleet.wearables)
    return (
        f"wearables {len(fleet.wearables)} ({connected} connected, {done} finished), "
        f"messages sent {sent} ({windows} offloaded windows), resent {resent}"
    )


async def run_emulator(options: EmulateOptions, out: TextIO) -> int:
    """Run until interrupted (or ``duration_s``); return the exit code."""
    faults = parse_faults(options.faults)
    recordings = await asyncio.to_thread(load_recordings, options)  # file reads: off the loop
    model, why_not = (
        (None, "--no-model")
        if options.no_model
        else await asyncio.to_thread(load_wearable_model, options.pruning_pct, options.models_dir)
    )
    setup = FleetSetup(
        devices=options.devices,
        adapters=options.adapters,
        slots=options.slots,
        heart_rate_straps=options.heart_rate_straps,
        speed=options.speed,
        mtu=options.mtu,
        seed=options.seed,
        sample_format=SampleFormat.INT8 if options.int8 else SampleFormat.INT16,
        faults=faults,
        local_model=model,
        pruning_pct=options.pruning_pct,
        # `gatewayd pair` bonds with them, as with real devices (unless --bonded).
        bonded=options.bonded,
        stagger=not options.lockstep,
        stamps=SendStamps() if options.stamps is not None else None,
        loop=options.loop,
    )
    with tempfile.TemporaryDirectory(prefix="gatewayd-emulator-") as tmp:
        shim_dir = Path(tmp) / "bin"
        install_bluetoothctl_shim(shim_dir)
        stop = asyncio.Event()
        async with (
            _stop_on_sigterm(stop),
            PrivateBus(
                options.bus,
                limits=BusLimits.for_connections_per_user(options.bus_connections_per_user),
            ) as address,
            FakeBluez(address) as fake,
        ):
            fleet = await build_fleet(fake, recordings, setup)
            settle_heap()  # the fleet and its recordings live as long as the emulator
            kinds = sorted({r.source for r in recordings})
            timing = "lock-step" if options.lockstep else "staggered"
            replay = ", looped, each from its own point" if options.loop else ""
            out.write(
                f"emulating {len(fleet.wearables)} {timing} wearables, {len(fleet.straps)}"
                " heart-rate "
                f"straps and {'a decoy' if fleet.decoy else 'no decoy'} on {options.adapters} "
                f"adapter(s) with {options.slots} slots, at {options.speed:g}x real time, "
                f"from {len(recordings)} {', '.join(kinds)} recordings{replay}"
                f"{' (synthetic data)' if kinds == ['synthetic'] else ''}\n"
                f"wearable model: {model.model_id if model else f'none ({why_not})'}\n"
                "point a gateway at it with:\n"
                f"  export DBUS_SYSTEM_BUS_ADDRESS='{address}'\n"
                f'  export PATH="{shim_dir}:$PATH"   # answers bleak\'s BlueZ version probe\n'
            )
            out.flush()
            runner = asyncio.create_task(run_fleet(fleet, options.speed))
            if faults.hang_after_s > 0:
                asyncio.get_running_loop().call_later(faults.hang_after_s, fake.hang)
            try:
                async with (
                    _stamps_writer(setup.stamps, options.stamps),
                    asyncio.timeout(options.duration_s),
                ):
                    while not runner.done() and not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), options.status_every_s)
                        out.write(_status(fleet) + "\n")
                        out.flush()
            except TimeoutError:
                pass
            finally:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            out.write(_status(fleet) + "\n")
    return 0


@contextlib.asynccontextmanager
async def _stop_on_sigterm(stop: asyncio.Event) -> AsyncIterator[None]:
    """SIGTERM sets ``stop`` (an orderly end: the last stamps are written, the bus stopped)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="ascii") as f:
        f.write(text)


async def _write_stamps(stamps: SendStamps, path: Path) -> None:
    while True:
        await asyncio.sleep(STAMPS_FLUSH_S)
        if rows := stamps.take():
            await asyncio.to_thread(_append, path, format_stamps(rows))


@contextlib.asynccontextmanager
async def _stamps_writer(stamps: SendStamps | None, path: Path | None) -> AsyncIterator[None]:
    """Append ``stamps`` to ``path`` every STAMPS_FLUSH_S while the block runs, and at its end."""
    if stamps is None or path is None:
        yield
        return
    await asyncio.to_thread(path.write_text, "", "ascii")
    task = asyncio.create_task(_write_stamps(stamps, path), name="emulator-stamps")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if rows := stamps.take():
            await asyncio.to_thread(_append, path, format_stamps(rows))


def synthesise(out_dir: Path, subjects: int, minutes: float, seed: int, out: TextIO) -> int:
    """`gatewayd emulate synth`: write synthetic subjects in the PPG-DaLiA layout."""
    paths = write_synthetic_dataset(out_dir, subjects, minutes, seed)
    for p in paths:
        out.write(f"{p}\n")
    out.write(f"wrote {len(paths)} synthetic subject(s) of {minutes:g} min (PPG-DaLiA layout)\n")
    return 0
