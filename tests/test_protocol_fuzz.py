"""Fuzz: 100,000+ random and mutated fragments. Only DecodeError comes out; memory stays bounded."""

from __future__ import annotations

import random
import tracemalloc
import zlib

import numpy as np

from gatewayd.errors import DecodeError
from gatewayd.protocol.fragments import FrameDecoder, fragment
from gatewayd.protocol.messages import (
    MAX_MESSAGE_SIZE,
    MessageFlags,
    SampleFormat,
    Summary,
    Window,
    decode_message,
    encode_message,
)
from gatewayd.protocol.sequencing import Sequencer

N_FRAGMENTS = 100_000


def _corpus(rng: random.Random) -> list[bytes]:
    """Valid messages of both kinds and formats to mutate."""
    out = []
    for seq in range(40):
        activity = (0, 1, 2, 255)[seq % 4]  # the activity groups' wire codes
        s = Summary(seq, rng.getrandbits(40), MessageFlags(rng.getrandbits(6)), activity, 20,
                    rng.randrange(10001), rng.randrange(5000), 7000, 90, 50)  # fmt: skip
        if seq % 2:
            fmt = SampleFormat.INT16 if seq % 4 == 1 else SampleFormat.INT8
            g = np.random.default_rng(seq)
            out.append(encode_message(Window(
                s, fmt, 64, 32, 64,
                g.integers(-100, 100, 512).astype(fmt.dtype),
                g.integers(-100, 100, (256, 3)).astype(fmt.dtype),
            )))  # fmt: skip
        else:
            out.append(encode_message(s))
    return out


def _mutate(rng: random.Random, frag: bytes) -> bytes:
    b = bytearray(frag)
    match rng.randrange(8):
        case 0:  # flip bits
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        case 1:  # truncate
            del b[rng.randrange(len(b)) :]
        case 2:  # extend with junk
            b += rng.randbytes(rng.randint(1, 600))
        case 3:  # random header
            b[:4] = rng.randbytes(4)
        case 4:  # index/count confusion on a live tag
            b[2], b[3] = rng.randrange(256), rng.randrange(256)
        case 5:  # splice two halves
            cut = rng.randrange(len(b))
            b = b[:cut] + rng.randbytes(rng.randrange(40))
        case 6:  # pure noise
            b = bytearray(rng.randbytes(rng.randint(0, 520)))
        case _:  # untouched: duplicates and late fragments
            pass
    return bytes(b)


def test_fuzz_reassembler_decoder_and_sequencer() -> None:
    rng = random.Random(20261125)
    corpus = _corpus(rng)
    decoder = FrameDecoder()
    sequencer = Sequencer()
    max_pending = max_bytes = max_held = 0
    decoded = rejected = 0
    now = 0.0
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    fed = 0
    while fed < N_FRAGMENTS:
        # a fresh seq each time, as a device would (a reused tag is a late duplicate)
        seq = fed % 2**32
        body = bytearray(rng.choice(corpus)[:-4])
        body[4:8] = seq.to_bytes(4, "little")
        msg = bytes(body) + zlib.crc32(body).to_bytes(4, "little")
        frags = fragment(msg, seq, rng.choice([23, 64, 185, 247]))
        rng.shuffle(frags)
        for f in frags:
            now += 0.001
            data = _mutate(rng, f) if rng.random() < 0.1 else f
            fed += 1
            try:
                m = decoder.feed(data, now)
            except DecodeError:
                rejected += 1
                continue
            if m is not None:
                decoded += 1
                sequencer.push(m, now)
                sequencer.expire(now)
            r = decoder.reassembler
            max_pending = max(max_pending, r.pending)
            max_bytes = max(max_bytes, r.buffered_bytes)
            max_held = max(max_held, sequencer.held)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print(f"fed={fed} decoded={decoded} rejected={rejected} {dict(decoder.rejected)}")
    assert fed >= N_FRAGMENTS
    assert decoded > 100, "the fuzz must also exercise the success path"
    assert rejected > 1000, "the fuzz must exercise the error paths"
    assert set(decoder.rejected) <= {
        "too_short", "too_long", "bad_fragment", "inconsistent_fragment", "tag_mismatch",
        "unsupported_version", "unknown_type", "bad_crc", "bad_length", "bad_field",
    }  # fmt: skip
    assert max_pending <= 8
    assert max_bytes <= 8 * MAX_MESSAGE_SIZE
    assert max_held <= 64
    # Everything held is bounded: the whole loop peaks far below what unbounded growth would use.
    assert peak - baseline < 4 * 1024 * 1024


def test_fuzz_decode_message_directly() -> None:
    rng = random.Random(7)
    corpus = _corpus(rng)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(20_000):
        raw = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(raw))
            raw[i] = rng.randrange(256)
        if rng.random() < 0.3:
            # fix the CRC so the field checks behind it are reached
            raw[-4:] = zlib.crc32(raw[:-4]).to_bytes(4, "little")
        try:
            decode_message(bytes(raw))
            outcomes["ok"] += 1
        except DecodeError:
            outcomes["error"] += 1
    assert outcomes["ok"] > 0
    assert outcomes["error"] > 0
