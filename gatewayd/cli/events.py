"""`gatewayd events`: the event log, read-only."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gatewayd.cli.common import (
    EXIT_OK,
    load_config_from_args,
    positive_int,
)
from gatewayd.errors import (
    EXIT_UNAVAILABLE,
)

#: `gatewayd events` shows this many of the newest matching events unless told otherwise.
DEFAULT_EVENT_LIMIT = 100


def cmd_events(args: argparse.Namespace) -> int:
    """Print the event log, read-only; exit 69 when there is none yet (docs/store.md)."""
    # Imported here: the store pulls in structlog and its threads, which most commands skip.
    from gatewayd.store.report import (  # noqa: PLC0415
        EventLogMissingError,
        EventLogReader,
        EventQuery,
        events_json,
        format_events,
    )

    config = load_config_from_args(args)
    query = EventQuery(
        device=args.device,
        since=args.since,
        kinds=tuple(args.kind),
        min_severity=args.severity,
        limit=args.limit + 1,  # one more than shown: tells whether older events match too
    )
    try:
        with EventLogReader.open(config.store.path) as log:
            events = log.events(query)
    except EventLogMissingError as exc:
        print(f"gatewayd events: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    more = len(events) > args.limit
    if more:
        events = events[1:]  # oldest first: drop the extra, oldest one
    if args.json:
        from gatewayd.publish.topics import Topics  # noqa: PLC0415

        topics = Topics(config.mqtt.topic_root, config.gateway.id)
        topic_of = lambda d: topics.gateway_alerts if d is None else topics.alerts(d)  # noqa: E731
        print(json.dumps(events_json(events, topic_of=topic_of), indent=2))
    elif not events:
        filtered = any((args.device, args.since is not None, args.kind, args.severity))
        print(
            f"No events{' match these filters' if filtered else ' yet'}"
            f" in the event log {config.store.path}."
        )
    else:
        print(format_events(events))
    if more:
        print(
            f"gatewayd events: showing the newest {args.limit}; older events match too"
            " (--limit N or --since WHEN)",
            file=sys.stderr,
        )
    return EXIT_OK


def since_arg(text: str) -> float:
    """argparse type of --since: a duration back from now or an ISO-8601 date or time."""
    from gatewayd.store.report import parse_since  # noqa: PLC0415

    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_events_options(events: argparse.ArgumentParser) -> None:
    events.add_argument(
        "--device", metavar="ID", help="only this device ('gateway': the gateway's own events)"
    )
    events.add_argument(
        "--since",
        metavar="WHEN",
        type=since_arg,
        help="only events since WHEN: a duration back from now (15m, 2h, 7d) or an ISO-8601"
        " date or time (2026-11-25, 2026-11-25T08:00; local unless it ends in Z or +HH:MM)",
    )
    events.add_argument(
        "--kind", metavar="KIND", action="append", default=[], help="only this kind (repeatable)"
    )
    events.add_argument(
        "--severity",
        choices=("info", "warning", "critical"),
        type=str.lower,
        help="only this severity and worse (info < warning < critical)",
    )
    events.add_argument(
        "--limit",
        metavar="N",
        type=positive_int,
        default=DEFAULT_EVENT_LIMIT,
        help=f"the newest N matching events (default: {DEFAULT_EVENT_LIMIT})",
    )
    events.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array, oldest first: full events with evidence, ids and delivery",
    )
