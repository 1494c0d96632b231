"""Parser of the golden-vector text format (docs/protocol.md §8) that firmware_stub writes.

The C stub (``firmware_stub/build/golden``, ``firmware_stub/build/demo``) prints what the wearable
really sends; tests feed these vectors to the Python decoder byte for byte. The format is line
based: ``vector <name>`` opens a block, ``end`` closes it, ``#`` starts a comment line, and blank
lines are ignored. Inside a block: ``mtu``, ``message`` and at least one ``fragment`` are required;
``entropy``, ``policy`` and ``info`` are optional and appear at most once; ``control`` lines repeat.
Hex is lowercase without separators. Pure: text in, frozen dataclasses out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["GoldenVector", "parse_vectors"]

MTU_MIN: Final = 23
MTU_MAX: Final = 517
_U16_MAX: Final = 0xFFFF
_REASON_MAX: Final = 3  # OFFLOAD_ENTROPY | OFFLOAD_CONFIDENCE

_HEX: Final = re.compile(r"(?:[0-9a-f]{2})+")
_UINT: Final = re.compile(r"[0-9]+")
_FLOAT: Final = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_NAME: Final = re.compile(r"[A-Za-z0-9._-]+")
_VERDICTS: Final = {"ok": True, "reject": False}


@dataclass(frozen=True, slots=True)
class GoldenVector:
    """One vector: a message, its fragments at one MTU, and what the C side computed about it."""

    name: str
    mtu: int
    message: bytes
    fragments: tuple[bytes, ...]
    #: H(X) in bits as C computed it in double (WINDOW vectors).
    entropy: float | None
    #: (tau_mbits, min_conf_e4, reason): the offload decision C made; reason = flag bits 0-1.
    policy: tuple[int, int, int] | None
    #: An info characteristic value.
    info: bytes | None
    #: Control writes and whether the C decoder accepted each (True = ok, False = reject).
    controls: tuple[tuple[bytes, bool], ...]


class _LineError(ValueError):
    """A malformed line; parse_vectors adds the line number."""


def _hex(token: str, what: str) -> bytes:
    """Decode lowercase hex with an even, non-zero number of digits."""
    if _HEX.fullmatch(token) is None:
        raise _LineError(f"{what}: expected lowercase hex bytes, got {token[:40]!r}")
    return bytes.fromhex(token)


def _uint(token: str, what: str, low: int, high: int) -> int:
    """Decode a decimal integer in [low, high]."""
    if _UINT.fullmatch(token) is None:
        raise _LineError(f"{what}: expected a decimal integer, got {token!r}")
    value = int(token)
    if not low <= value <= high:
        raise _LineError(f"{what}: {value} is outside {low}..{high}")
    return value


@dataclass(slots=True)
class _Block:
    """The vector being read, between its ``vector`` and ``end`` lines."""

    name: str
    start_line: int
    mtu: int | None = None
    message: bytes | None = None
    fragments: list[bytes] = field(default_factory=list)
    entropy: float | None = None
    policy: tuple[int, int, int] | None = None
    info: bytes | None = None
    controls: list[tuple[bytes, bool]] = field(default_factory=list)

    def set_mtu(self, args: list[str]) -> None:
        """Handle ``mtu <n>``."""
        if self.mtu is not None:
            raise _LineError("duplicate mtu line")
        self.mtu = _uint(args[0], "mtu", MTU_MIN, MTU_MAX)

    def set_message(self, args: list[str]) -> None:
        """Handle ``message <hex>``."""
        if self.message is not None:
            raise _LineError("duplicate message line")
        self.message = _hex(args[0], "message")

    def add_fragment(self, args: list[str]) -> None:
        """Handle ``fragment <hex>``."""
        self.fragments.append(_hex(args[0], "fragment"))

    def set_entropy(self, args: list[str]) -> None:
        """Handle ``entropy <%.17g>``."""
        if self.entropy is not None:
            raise _LineError("duplicate entropy line")
        if _FLOAT.fullmatch(args[0]) is None:
            raise _LineError(f"entropy: expected a finite decimal number, got {args[0]!r}")
        value = float(args[0])
        if not math.isfinite(value):
            raise _LineError(f"entropy: {args[0]!r} is not finite")
        self.entropy = value

    def set_policy(self, args: list[str]) -> None:
        """Handle ``policy <tau_mbits> <min_conf_e4> <reason>``."""
        if self.policy is not None:
            raise _LineError("duplicate policy line")
        self.policy = (
            _uint(args[0], "policy tau_mbits", 0, _U16_MAX),
            _uint(args[1], "policy min_conf_e4", 0, _U16_MAX),
            _uint(args[2], "policy reason", 0, _REASON_MAX),
        )

    def set_info(self, args: list[str]) -> None:
        """Handle ``info <hex>``."""
        if self.info is not None:
            raise _LineError("duplicate info line")
        self.info = _hex(args[0], "info")

    def add_control(self, args: list[str]) -> None:
        """Handle ``control <hex> ok|reject``."""
        verdict = _VERDICTS.get(args[1])
        if verdict is None:
            raise _LineError(f"control: expected 'ok' or 'reject', got {args[1]!r}")
        self.controls.append((_hex(args[0], "control"), verdict))

    def finish(self) -> GoldenVector:
        """Check the required lines and freeze the block."""
        if self.mtu is None or self.message is None or not self.fragments:
            missing = [
                what
                for what, absent in (
                    ("mtu", self.mtu is None),
                    ("message", self.message is None),
                    ("fragment", not self.fragments),
                )
                if absent
            ]
            raise _LineError(
                f"vector {self.name!r} (line {self.start_line}) lacks: {', '.join(missing)}"
            )
        return GoldenVector(
            name=self.name,
            mtu=self.mtu,
            message=self.message,
            fragments=tuple(self.fragments),
            entropy=self.entropy,
            policy=self.policy,
            info=self.info,
            controls=tuple(self.controls),
        )


#: keyword -> (number of arguments, handler)
_KEYWORDS: Final[dict[str, tuple[int, Callable[[_Block, list[str]], None]]]] = {
    "mtu": (1, _Block.set_mtu),
    "message": (1, _Block.set_message),
    "fragment": (1, _Block.add_fragment),
    "entropy": (1, _Block.set_entropy),
    "policy": (3, _Block.set_policy),
    "info": (1, _Block.set_info),
    "control": (2, _Block.add_control),
}


class _Parser:
    """The state between lines: finished vectors and the block being read."""

    def __init__(self) -> None:
        self.vectors: list[GoldenVector] = []
        self.names: set[str] = set()
        self.block: _Block | None = None

    def feed(self, tokens: list[str], lineno: int) -> None:
        """Apply one non-comment line."""
        keyword, args = tokens[0], tokens[1:]
        block = self.block
        if keyword == "vector":
            if block is not None:
                raise _LineError(f"vector {block.name!r} (line {block.start_line}) has no end")
            if len(args) != 1 or _NAME.fullmatch(args[0]) is None:
                raise _LineError("expected 'vector <name>' with a name of [A-Za-z0-9._-]")
            if args[0] in self.names:
                raise _LineError(f"duplicate vector name {args[0]!r}")
            self.names.add(args[0])
            self.block = _Block(name=args[0], start_line=lineno)
            return
        if block is None:
            raise _LineError(f"{keyword!r} outside a vector block")
        if keyword == "end":
            if args:
                raise _LineError("'end' takes no arguments")
            self.vectors.append(block.finish())
            self.block = None
            return
        spec = _KEYWORDS.get(keyword)
        if spec is None:
            raise _LineError(f"unknown keyword {keyword!r}")
        arity, handler = spec
        if len(args) != arity:
            raise _LineError(f"{keyword!r} takes {arity} argument(s), got {len(args)}")
        handler(block, args)


def parse_vectors(text: str) -> list[GoldenVector]:
    """Parse golden-vector text; raise ValueError naming the line of the first problem."""
    parser = _Parser()
    lineno = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            parser.feed(tokens, lineno)
        except _LineError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
    if parser.block is not None:
        block = parser.block
        raise ValueError(
            f"line {lineno}: end of text inside vector {block.name!r} (line {block.start_line})"
        )
    return parser.vectors
