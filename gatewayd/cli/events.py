"""`gatewayd events`: the event log, read-only."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gatewayd.cli.common import (
    EXIT_OK,
    load_config_from_args,
    positive_int,
)
from gatewayd.errors import (
    EXIT_UNAVAILABLE,
)

if TYPE_CHECKING:
    from gatewayd.config import Config
    from gatewayd.store.report import EventLogReader, EventQuery, LoggedEvent

#: `gatewayd events` shows this many of the newest matching events unless told otherwise.
DEFAULT_EVENT_LIMIT = 100
#: How often `gatewayd events --follow` looks for new events, seconds.
FOLLOW_POLL_S: Final = 1.0


def cmd_events(args: argparse.Namespace) -> int:
    """Print the event log, read-only; exit 69 when there is none yet (docs/store.md)."""
    # Imported here: the store pulls in structlog and its threads, which most commands skip.
    from gatewayd.store.report import (  # noqa: PLC0415
        EventLogMissingError,
        EventLogReader,
        EventQuery,
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
        log = EventLogReader.open(config.store.path)
    except EventLogMissingError as exc:
        print(f"gatewayd events: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    with log:
        last = log.last_position()  # first: an event appended meanwhile is in `events`
        events = log.events(query)
        if args.follow:
            after = max(last, events[-1].position if events else 0)
            follow = Follow(log.path, replace(query, limit=None), after, args.json)
            return _follow(args, config, log, events, follow)
    return _print(args, config, events)


def _topic_of(config: Config) -> Callable[[str | None], str]:
    """The topic the publisher gives a device's events (None: the gateway's own)."""
    from gatewayd.publish.topics import Topics  # noqa: PLC0415

    topics = Topics(config.mqtt.topic_root, config.gateway.id)
    return lambda d: topics.gateway_alerts if d is None else topics.alerts(d)


def _more(args: argparse.Namespace, events: list[LoggedEvent]) -> list[LoggedEvent]:
    """The events to show of those read (one more than --limit when older ones match too)."""
    if len(events) <= args.limit:
        return events
    print(
        f"gatewayd events: showing the newest {args.limit}; older events match too"
        " (--limit N or --since WHEN)",
        file=sys.stderr,
    )
    return events[1:]  # oldest first: drop the extra, oldest one


def _print(args: argparse.Namespace, config: Config, events: list[LoggedEvent]) -> int:
    from gatewayd.store.report import events_json, format_events  # noqa: PLC0415

    events = _more(args, events)
    if args.json:
        print(json.dumps(events_json(events, topic_of=_topic_of(config)), indent=2))
    elif not events:
        print(
            f"No events{' match these filters' if _filtered(args) else ' yet'}"
            f" in the event log {config.store.path}."
        )
    else:
        print(format_events(events))
    return EXIT_OK


def _filtered(args: argparse.Namespace) -> bool:
    return any((args.device, args.since is not None, args.kind, args.severity))


def _follow(
    args: argparse.Namespace,
    config: Config,
    log: EventLogReader,
    events: list[LoggedEvent],
    follow: Follow,
) -> int:
    """What is there (as JSON Lines with --json), then each new event as it is appended."""
    from gatewayd.store.report import events_json, format_events  # noqa: PLC0415

    events = _more(args, events)
    topic_of = _topic_of(config)
    if args.json:
        for line in events_json(events, topic_of=topic_of):
            print(json.dumps(line))
    else:
        waiting = f"(no{' matching' if _filtered(args) else ''} events yet; waiting for new ones)"
        print(format_events(events) if events else waiting)
    return follow.run(log, topic_of)


class Follow:
    """`gatewayd events --follow`: print each new matching event as the gateway appends it,
    polling the log read-only every `FOLLOW_POLL_S`, until interrupted.

    A file moved aside or replaced (corrupt, restored) is followed to the new file at
    ``path``, which is read from its start; a missing one is waited for.
    """

    def __init__(self, path: Path, query: EventQuery, after: int, as_json: bool) -> None:
        self.path = path
        self.query = query
        #: The position of the last event seen: only later ones are new.
        self.after = after
        self.as_json = as_json

    def run(self, first: EventLogReader, topic_of: Callable[[str | None], str]) -> int:
        """Follow from ``first`` (the reader of what was printed; closed here too)."""
        from gatewayd.store.report import EventLogMissingError, EventLogReader  # noqa: PLC0415

        log: EventLogReader | None = first
        waiting = False
        try:
            while True:
                sys.stdout.flush()
                time.sleep(FOLLOW_POLL_S)
                if log is not None and log.replaced():
                    log.close()
                    log = None
                    self.after = 0  # the new file's events are all new
                    _note(f"the event log at {self.path} was replaced; following the new file")
                if log is None:
                    try:
                        log = EventLogReader.open(self.path)
                    except EventLogMissingError:
                        if not waiting:
                            _note(f"no event log at {self.path}; waiting for one")
                        waiting = True
                        continue
                    waiting = False
                self._show(log, topic_of)
        finally:
            if log is not None:
                log.close()  # `first` too, whose caller closes it again: harmless

    def _show(self, log: EventLogReader, topic_of: Callable[[str | None], str]) -> None:
        from gatewayd.store.report import event_line, events_json  # noqa: PLC0415

        new = log.events(replace(self.query, after=self.after))
        if not new:
            # Retention deleted the newest events (a log idle past store.retention_days):
            # SQLite numbers the next one from the highest left.
            self.after = min(self.after, log.last_position())
            return
        self.after = new[-1].position
        if self.as_json:
            for line in events_json(new, topic_of=topic_of):
                print(json.dumps(line))
        else:
            for e in new:
                print(event_line(e))


def _note(text: str) -> None:
    print(f"gatewayd events: {text}", file=sys.stderr, flush=True)


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
        help="print one JSON array, oldest first: full events with evidence, ids and delivery"
        " (with --follow: one JSON object per line)",
    )
    events.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then keep printing new events as the gateway appends them, until Ctrl-C",
    )
