"""`gatewayd pair` and `gatewayd devices`: the paired-device list."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from gatewayd.cli.common import (
    CONFIG_ENV,
    EXIT_ERROR,
    EXIT_OK,
    load_config_from_args,
    usage_error,
)
from gatewayd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
)
from gatewayd.errors import (
    GatewayError,
    StoreError,
)
from gatewayd.link.pairing import (
    Candidate,
    PairingError,
    PairingResult,
    forget_bond,
    pair_device,
    scan_candidates,
)
from gatewayd.link.registry import (
    DeviceRegistry,
    PairedDevice,
    RegistryError,
    check_alias,
    normalise_address,
)
from gatewayd.store.lock import lock_holder
from gatewayd.tables import format_table

#: Seconds `devices remove` gives the broker to clear the device's retained topics.
CLEAR_TIMEOUT_S: Final = 10.0


#: `gatewayd pair` scans this long unless told otherwise (wearables advertise every 0.1-1 s).
DEFAULT_SCAN_SECONDS = 10.0
MAX_SCAN_SECONDS = 300.0


def cmd_pair(args: argparse.Namespace) -> int:
    """Scan for devices we speak to, list them, and pair those chosen (--address/--all)."""
    if args.alias is not None and len(args.address) != 1:
        return usage_error("pair", "--alias needs exactly one --address (each device has its id)")
    if args.alias is not None:
        check_alias(args.alias)
    config = load_config_from_args(args)
    registry = _registry(args, config)
    registry.load()  # an unreadable list is an error before the radio is touched
    _check_writable(registry.path)
    adapters = tuple(args.adapter) if args.adapter else config.ble.adapters
    return asyncio.run(
        _pair(args, registry, adapters, config.ble.connect_timeout_s, config.store.path)
    )


async def _pair(
    args: argparse.Namespace,
    registry: DeviceRegistry,
    adapters: tuple[str, ...],
    connect_timeout_s: float,
    store_path: Path,
) -> int:
    candidates = await scan_candidates(adapters, args.scan_seconds)
    # Blocking file read off the loop, like every registry access while bleak runs.
    known = {d.address: d for d in await asyncio.to_thread(registry.load)}
    if not args.json:
        _print_candidates(candidates, known, adapters, args.scan_seconds)
        _print_pair_hint(args, candidates, known)

    chosen, failed = _choose(args, candidates, known, adapters)
    running = await asyncio.to_thread(lock_holder, store_path)
    paired: list[PairingResult] = []
    for candidate in chosen:
        try:
            result = await pair_device(
                candidate,
                registry,
                args.alias,
                connect_timeout_s=connect_timeout_s,
                allow_unbonded=args.allow_unbonded,
            )
        except (PairingError, RegistryError) as exc:
            failed.append((candidate.address, candidate.name, str(exc)))
            print(f"gatewayd pair: error: {exc}", file=sys.stderr)
        else:
            paired.append(result)
            if not args.json:
                print(_describe_paired(result))
    if paired and running is not None and not args.json:
        print(f"the running gateway (pid {running}) connects {'it' if len(paired) == 1 else 'them'}"
              " within seconds")  # fmt: skip

    if args.json:
        doc = {
            "candidates": [_candidate_json(c, known.get(c.address)) for c in candidates],
            "paired": [_paired_json(r) for r in paired],
            "failed": [{"address": a, "name": n, "error": e} for a, n, e in failed],
        }
        print(json.dumps(doc, indent=2))
    if failed:
        total = len(failed) + len(paired)
        print(f"gatewayd pair: {len(failed)} of {total} device(s) not paired", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _choose(
    args: argparse.Namespace,
    candidates: Sequence[Candidate],
    known: Mapping[str, PairedDevice],
    adapters: Sequence[str],
) -> tuple[list[Candidate], list[tuple[str, str, str]]]:
    """The candidates to pair, and (address, name, why) for asked-for devices not found."""
    if args.all:
        # Pairing again is how an untrusted device is trusted again (docs/pairing.md).
        chosen = [c for c in candidates if c.address not in known or known[c.address].untrusted]
        if not chosen and candidates and not args.json:
            print("Nothing to pair: every device found is paired already.")
        return chosen, []
    chosen, failed = [], []
    for address in dict.fromkeys(args.address):  # each once, in the order given
        match = next((c for c in candidates if c.address == address), None)
        if match is not None:
            chosen.append(match)
            continue
        why = (
            f"{address}: not found: nothing with this address advertised the gatewayd service"
            f" or the Heart Rate Service to {', '.join(adapters)} in {args.scan_seconds:g} s"
            " (is it on, in range and not connected to a phone or another gateway?)"
        )
        failed.append((address, "", why))
        print(f"gatewayd pair: error: {why}", file=sys.stderr)
    return chosen, failed


def _print_candidates(
    candidates: Sequence[Candidate],
    known: Mapping[str, PairedDevice],
    adapters: Sequence[str],
    seconds: float,
) -> None:
    if not candidates:
        print(
            f"No devices offering the gatewayd service or the Heart Rate Service were seen by"
            f" {', '.join(adapters)} in {seconds:g} s. Is the device on, in range and not"
            " connected to a phone or another gateway?"
        )
        return
    rows = [
        [
            c.name or "-",
            c.address,
            str(c.rssi),
            c.kind,
            c.adapter,
            f"yes ({known[c.address].device_id})" if c.address in known else "no",
        ]
        for c in candidates
    ]
    print(format_table(["NAME", "ADDRESS", "RSSI", "KIND", "ADAPTER", "PAIRED"], rows, right=()))


def _print_pair_hint(
    args: argparse.Namespace, candidates: Sequence[Candidate], known: Mapping[str, PairedDevice]
) -> None:
    if args.all or args.address:
        return
    unpaired = [c for c in candidates if c.address not in known]
    if not unpaired:
        if candidates:
            print("\nEvery device found is paired already (see `gatewayd devices list`).")
        return
    base = ["gatewayd", *_repeatable_options(args), "pair"]
    one = shlex.join([*base, "--address", unpaired[0].address]) + " --alias <device-id>"
    print("\nTo pair one device, with the id it gets in MQTT topics:")
    print(f"  {one}")
    if len(unpaired) > 1:
        addresses = [arg for c in unpaired for arg in ("--address", c.address)]
        print("To pair several, or every unpaired device listed (ids derived from their names):")
        print(f"  {shlex.join([*base, *addresses])}")
        print(f"  {shlex.join([*base, '--all'])}")


def _repeatable_options(args: argparse.Namespace) -> list[str]:
    """The options a printed command line needs to do the same as this one."""
    out: list[str] = []
    if args.config != (os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG_PATH)):
        out += ["--config", args.config]
    if getattr(args, "state_dir", None):
        out += ["--state-dir", args.state_dir]
    for adapter in args.adapter:
        out += ["--adapter", adapter]
    return out


def _describe_paired(result: PairingResult) -> str:
    device, info = result.device, result.info
    what: str = device.kind
    if info is not None:
        what += (
            f", model {info.model_id or '-'} (pruned {info.pruning_pct}%),"
            f" firmware {info.firmware_version}, protocol {info.protocol_version}"
        )
    return f"paired {device.address} as {device.device_id} ({what})"


def _candidate_json(candidate: Candidate, paired: PairedDevice | None) -> dict[str, Any]:
    return {
        "name": candidate.name,
        "address": candidate.address,
        "rssi": candidate.rssi,
        "kind": candidate.kind,
        "adapter": candidate.adapter,
        "paired": paired is not None,
        "device_id": paired.device_id if paired is not None else None,
        "bonded": candidate.bonded,
    }


def _paired_json(result: PairingResult) -> dict[str, Any]:
    info = result.info
    return {
        **_device_json(result.device),
        "model": info.model_id if info is not None else None,
        "pruning_pct": info.pruning_pct if info is not None else None,
        "firmware": info.firmware_version if info is not None else None,
        "protocol_version": info.protocol_version if info is not None else None,
    }


def _device_json(device: PairedDevice) -> dict[str, Any]:
    return {
        "id": device.device_id,
        "address": device.address,
        "kind": device.kind,
        "name": device.name,
        "paired_at": device.paired_at,
        **_trust_json(device),
    }


def _trust_json(device: PairedDevice) -> dict[str, Any]:
    """How far the gateway trusts a paired device (docs/pairing.md)."""
    return {
        "allow_unbonded": device.allow_unbonded,
        "trusted": not device.untrusted,
        "untrusted_reason": device.untrusted or None,
    }


def _trust_notes(devices: Sequence[PairedDevice]) -> list[str]:
    """One line per device that is accepted unbonded or no longer trusted."""
    notes = []
    for d in devices:
        if d.untrusted:
            notes.append(
                f"{d.device_id}: NOT TRUSTED ({d.untrusted}); no data is taken from it until it"
                f" is paired again: gatewayd pair --address {d.address}"
            )
        elif d.allow_unbonded:
            notes.append(
                f"{d.device_id}: accepted without a bond (--allow-unbonded): its link is not"
                " encrypted and its address is all that identifies it"
            )
    return notes


def cmd_devices_list(args: argparse.Namespace) -> int:
    """List the paired devices (the allowlist), with what the event log knows when it exists."""
    # Imported here: the store pulls in structlog and its threads, which most commands skip.
    from gatewayd.store.report import (  # noqa: PLC0415
        EventLogMissingError,
        EventLogReader,
        devices_json,
        format_devices,
        merge_devices,
    )

    config = load_config_from_args(args)
    devices = _registry(args, config).load()
    code = EXIT_OK
    try:
        with EventLogReader.open(config.store.path) as log:
            activity = log.devices()
    except EventLogMissingError:
        activity = None  # the gateway has not run yet: the registry is all there is
    except StoreError as exc:
        # The paired devices are still worth showing; the exit status tells about the log.
        print(
            f"gatewayd devices list: warning: {exc}; showing the paired devices only",
            file=sys.stderr,
        )
        activity, code = None, EXIT_ERROR
    listings = merge_devices(devices, activity or [])
    by_id = {d.device_id: d for d in devices}
    if args.json:
        doc = devices_json(listings)
        for entry in doc:
            paired = by_id.get(entry["id"])
            entry.update(_trust_json(paired) if paired is not None else {
                "allow_unbonded": None, "trusted": None, "untrusted_reason": None,
            })  # fmt: skip
        print(json.dumps(doc, indent=2))
        return code
    if not listings:
        print("No paired devices; pair one with `gatewayd pair`.")
    elif activity is None:
        rows = [[d.device_id, d.address, d.kind, d.name or "-", d.paired_at] for d in devices]
        print(format_table(["ID", "ADDRESS", "KIND", "NAME", "PAIRED AT"], rows, right=()))
    else:
        print(format_devices(listings, time.time()))
    notes = _trust_notes(devices)
    if notes:
        print("\n" + "\n".join(notes))
    return code


def cmd_devices_rename(args: argparse.Namespace) -> int:
    """Give a paired device a new id (its MQTT topics change with it)."""
    config = load_config_from_args(args)
    device = _registry(args, config).rename(args.device, args.alias)
    running = lock_holder(config.store.path)
    later = "" if running is None else (
        f"; the running gateway (pid {running}) serves it under the new id within seconds,"
        f" and clears what is open under the old one (alerts: reason unpaired)"
    )  # fmt: skip
    print(f"renamed {args.device} to {device.device_id} ({device.address}){later}")
    return EXIT_OK


def cmd_devices_remove(args: argparse.Namespace) -> int:
    """Forget a device and clear its retained MQTT topics; with --unpair also ask BlueZ to
    forget its bond. Both are best effort: a warning, and the device is removed all the same."""
    config = load_config_from_args(args)
    registry = _registry(args, config)
    running = lock_holder(config.store.path)
    # Where the event log stands before the removal: the running gateway's device_removed
    # event comes after it.
    mark = _log_position(config) if running is not None and args.unpair else None
    device = registry.remove(args.device)
    if running is None:
        print(f"removed {device.device_id} ({device.address}): the gateway will not connect to it")
    else:  # docs/pairing.md, "While the gateway runs"
        print(f"removed {device.device_id} ({device.address}): the running gateway (pid"
              f" {running}) disconnects it within seconds and clears its open alerts"
              f" (reason unpaired)")  # fmt: skip
    if args.unpair:
        if running is not None and mark is not None:
            # A bond forgotten while the link still runs: it would reconnect, find no bond
            # and report the device untrusted (not_bonded). So after the gateway let it go.
            _wait_until_let_go(config, device.device_id, mark, running)
        _forget_bond(device.address)
    _clear_device_topics(config, device.device_id)
    return EXIT_OK


#: How long `devices remove --unpair` waits for a running gateway to let the device go: its
#: 2 s look at the list, then stopping the link (bounded by the link's close timeout).
LET_GO_TIMEOUT_S: Final = 15.0


def _log_position(config: Config) -> int | None:
    """The event log's last position, or None when it cannot be read (then nothing waits)."""
    from gatewayd.store.report import EventLogReader  # noqa: PLC0415 - see cmd_devices_list

    try:
        with EventLogReader.open(config.store.path) as log:
            return log.last_position()
    except StoreError:
        return None


def _wait_until_let_go(config: Config, device_id: str, mark: int, pid: int) -> None:
    """Wait (at most `LET_GO_TIMEOUT_S`) for the running gateway's ``device_removed`` event of
    ``device_id`` after position ``mark``; a warning when it does not come."""
    from gatewayd.store.report import EventLogReader, EventQuery  # noqa: PLC0415

    query = EventQuery(device=device_id, kinds=("device_removed",), after=mark)
    print(f"waiting for the running gateway to let {device_id} go before BlueZ forgets its bond",
          flush=True)  # fmt: skip
    deadline = time.monotonic() + LET_GO_TIMEOUT_S
    try:
        with EventLogReader.open(config.store.path) as log:
            while time.monotonic() <= deadline:
                if log.events(query):
                    return
                time.sleep(0.2)
    except StoreError:
        pass
    print(
        f"gatewayd devices remove: warning: the running gateway (pid {pid}) did not say within"
        f" {LET_GO_TIMEOUT_S:g} s that it let {device_id} go; forgetting the bond now, which it"
        " may report as device_untrusted (not_bonded) until it does",
        file=sys.stderr,
    )


def _forget_bond(address: str) -> None:
    try:
        removed = asyncio.run(forget_bond(address))
    except PairingError as exc:
        print(
            f"gatewayd devices remove: warning: the bond with {address} is still in BlueZ:"
            f" {exc}. Remove it with `bluetoothctl remove {address}` as a user in group"
            " 'bluetooth'.",
            file=sys.stderr,
        )
        return
    if removed:
        print(f"BlueZ forgot its bond with {address}")
    else:
        print(f"BlueZ holds no device {address}: no bond to forget")


def _clear_device_topics(config: Config, device_id: str) -> None:
    """Empty the device's retained topics and discovery configs on the broker now (a gateway
    not running would only at its next start); says so only when the broker held something
    besides its state."""
    import aiomqtt  # noqa: PLC0415 - only this command talks MQTT

    from gatewayd.publish.cleanup import clear_retained  # noqa: PLC0415

    broker = f"{config.mqtt.host}:{config.mqtt.port}"
    try:
        cleared = asyncio.run(
            clear_retained(
                config.mqtt, config.gateway.id, device_ids=[device_id], timeout_s=CLEAR_TIMEOUT_S
            )
        )
    except (aiomqtt.MqttError, TimeoutError, GatewayError) as exc:
        cause = str(exc) or f"no answer within {CLEAR_TIMEOUT_S:g} s"
        print(
            f"gatewayd devices remove: warning: could not clear the retained topics of"
            f" {device_id} on the MQTT broker {broker}: {cause}. The gateway clears them when it"
            " next reaches the broker.",
            file=sys.stderr,
        )
        return
    # The device's state topic is always emptied (it marks the end of the read-back).
    if len(cleared) > 1:
        print(f"cleared {len(cleared)} retained topics of {device_id} on the MQTT broker {broker}")


def _registry(args: argparse.Namespace, config: Config) -> DeviceRegistry:
    # --state-dir is already in the config (load_config_from_args).
    return DeviceRegistry.in_state_dir(config.gateway.state_dir)


def _check_writable(path: Path) -> None:
    """Fail before pairing, not after, when the registry cannot be saved."""
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    # The file is replaced, never written in place: the directory is what must be writable.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RegistryError(
            f"{path}: cannot save paired devices here (permission denied); run as the user"
            " gatewayd runs as (e.g. `sudo -u gatewayd gatewayd pair`) or pass --state-dir"
        )


_ADAPTER_RE = re.compile(r"^hci[0-9]{1,3}$")


def _address_arg(value: str) -> str:
    try:
        return normalise_address(value)
    except RegistryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _adapter_arg(value: str) -> str:
    if not _ADAPTER_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected a BlueZ adapter name like hci0, got {value!r}")
    return value


def _scan_seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= MAX_SCAN_SECONDS:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0 and at most {MAX_SCAN_SECONDS:g}, got {value!r}"
        )
    return seconds


def add_pair_options(pair: argparse.ArgumentParser) -> None:
    pair.add_argument(
        "--scan-seconds",
        metavar="S",
        type=_scan_seconds_arg,
        default=DEFAULT_SCAN_SECONDS,
        help=f"how long to scan (default: {DEFAULT_SCAN_SECONDS:g})",
    )
    which = pair.add_mutually_exclusive_group()
    which.add_argument(
        "--address",
        metavar="ADDR",
        type=_address_arg,
        action="append",
        default=[],
        help="pair the device with this Bluetooth address (repeatable)",
    )
    which.add_argument(
        "--all", action="store_true", help="pair every device found that is not paired yet"
    )
    pair.add_argument(
        "--alias",
        metavar="ID",
        help="device id to give the one --address device (default: from its name and address)",
    )
    pair.add_argument(
        "--adapter",
        metavar="hciN",
        type=_adapter_arg,
        action="append",
        default=[],
        help="scan and pair through this adapter (repeatable; default: [ble] adapters)",
    )
    pair.add_argument(
        "--allow-unbonded",
        action="store_true",
        help="accept a heart-rate strap that cannot bond: connect without a bond and remember"
        " that you allowed it (its link is not encrypted; see docs/pairing.md)",
    )
    pair.add_argument("--json", action="store_true", help="print the result as JSON")
