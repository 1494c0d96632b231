"""The virtual wearable's logic, as its firmware would run it: pure, driven by simulated time.

It cuts a recording into 8 s / 2 s windows and quantises them to the wire's integers (what its
sensors would give), runs the local estimates on those samples (the signal-processing heart-rate
tracker and, when it has one, the pruned activity model), computes the window entropy and looks
for a fall signature, decides to offload with the same integer policy as firmware_stub/ (entropy,
confidence, and a motion event: a fall signature and the hold time after it), and encodes
SUMMARY or WINDOW messages. It obeys control writes (time sync, policy, pruning, resend) and
keeps a bounded ring of recent messages for RESEND. The BLE side (virtual.py) only moves its bytes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from gatewayd.activity import ActivityGroup
from gatewayd.datasets.recording import Recording
from gatewayd.errors import DecodeError
from gatewayd.inference.analysis import model_input, predict
from gatewayd.inference.groups import group_prediction
from gatewayd.inference.session import ModelSession
from gatewayd.protocol.control import (
    DeviceInfo,
    Resend,
    SetPolicy,
    SetPruning,
    SetRestLimit,
    TimeSync,
    decode_control,
    encode_info,
)
from gatewayd.protocol.messages import (
    Message,
    MessageFlags,
    SampleFormat,
    Summary,
    Window,
    encode_message,
    motion_flags,
)
from gatewayd.signals.entropy import entropy_milli_bits, window_entropy_bits
from gatewayd.signals.heart_rate import HrTracker
from gatewayd.signals.offload import (
    DEFAULT_MIN_CONF_E4,
    DEFAULT_REST_LIMIT_CBPM,
    DEFAULT_TAU_MBITS,
    IMPACT_THRESHOLD_MILLI_G,
    MOTION_HOLD_MS,
    FallTrigger,
    confidence_e4,
    decide_offload,
    fall_impact_index,
    motion_cg,
    motion_offload,
    offload_confidence_e4,
)
from gatewayd.signals.windows import STEP_S, WINDOW_S

UNKNOWN_ACTIVITY: Final = 255
#: The info characteristic's model id of a wearable without a local model (its tracker only).
SIGNAL_ONLY_MODEL_ID: Final = "hr-spectral"
FIRMWARE_VERSION: Final = (0, 1, 0)
#: The emulated PPG front end's gain targets this peak magnitude (LSB) per sample format: int16
#: keeps 4x headroom; int8 keeps 2x, trading headroom for resolution (at 8192 it clipped 37-45 %
#: of real BVP samples).
_BVP_TARGET_PEAK: Final = {SampleFormat.INT16: 8192, SampleFormat.INT8: 64}
#: The emulated accelerometer: E4-like, 1/64 g per LSB, 32 Hz (the recording's units and rate).
_ACC_LSB_PER_G: Final = 64
_ACC_RATE_HZ: Final = 32


@dataclass(frozen=True, slots=True)
class WearableSpec:
    """How one virtual wearable is built and set up."""

    address: str
    name: str
    recording: Recording
    boot_id: int
    sample_format: SampleFormat = SampleFormat.INT16
    pruning_pct: int = 40
    tau_mbits: int = DEFAULT_TAU_MBITS
    min_conf_e4: int = DEFAULT_MIN_CONF_E4
    ring_slots: int = 64
    battery_start_pct: float = 100.0
    battery_drain_pct_per_h: float = 4.0
    #: Device clock at boot, Unix ms; until a TIME_SYNC it simply counts from here.
    boot_unix_ms: int = 0
    #: Fault: the device clock runs this many ms/s fast (positive) or slow, before and after sync.
    clock_drift_ms_per_s: float = 0.0
    #: What the info characteristic names as the local model (the pruned model's id when the
    #: core runs one, see `WearableCore`).
    model_id: str = SIGNAL_ONLY_MODEL_ID
    #: Motion offload: a sample whose |a| reaches this (milli-g) is an impact; an impact followed
    #: by settling and no movement is a fall candidate (gatewayd.signals.offload.FallTrigger).
    impact_threshold_milli_g: int = IMPACT_THRESHOLD_MILLI_G
    #: Motion offload: windows starting up to this long after a fall candidate's impact.
    motion_hold_ms: int = MOTION_HOLD_MS
    #: The recording's window the replay starts at: replay window ``i`` is the recording's
    #: window ``(start_window + i) % windows_total`` (wearables sharing a recording start apart).
    start_window: int = 0
    #: Replay endlessly, wrapping to the recording's first window after its last; False: stop
    #: after ``windows_total`` windows.
    loop: bool = False
    #: How many of the recording's windows before ``start_window`` the heart-rate tracker has
    #: already followed (as far as the recording goes back): a wearable worn for a while, not
    #: just switched on, whose tracker has locked on (it takes up to a minute of windows).
    worn_windows: int = 0
    #: The resting limit of the offload confidence until the gateway sends its own (1/100 bpm).
    rest_limit_cbpm: int = DEFAULT_REST_LIMIT_CBPM
    #: False: firmware from before SET_REST_LIMIT, which rejects it as an unknown opcode and
    #: keeps ``rest_limit_cbpm``.
    knows_rest_limit: bool = True


def bvp_gain(recording: Recording, fmt: SampleFormat = SampleFormat.INT16) -> float:
    """Return a power-of-two gain putting the 99.9th-percentile |BVP| under ``fmt``'s target."""
    p = float(np.percentile(np.abs(recording.bvp), 99.9)) if recording.bvp.size else 0.0
    if not math.isfinite(p) or p <= 0:
        return 1.0  # a flat BVP (a set without PPG) stays flat
    return float(2.0 ** math.floor(math.log2(_BVP_TARGET_PEAK[fmt] / p)))


def quantise(x: npt.NDArray[np.floating], gain: float, fmt: SampleFormat) -> npt.NDArray[np.int_]:
    """Scale, round and saturate samples to the wire format (the sensor's ADC)."""
    info = np.iinfo(fmt.dtype)
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * gain), info.min, info.max).astype(
        fmt.dtype
    )


@dataclass(frozen=True, slots=True)
class LocalActivity:
    """The local model's verdict on one window, in wire units."""

    #: `ActivityGroup` code (255 when the classes that belong to no group win).
    activity: int
    #: Probability of that group, 0..10000 (for an unknown verdict: of the likeliest group).
    activity_conf_e4: int


def local_activity(session: ModelSession, bvp: npt.ArrayLike, acc: npt.ArrayLike) -> LocalActivity:
    """Run the pruned model on one window of wire samples (BVP 64 Hz, ACC 32 Hz in 1/64 g).

    One window per call, on the caller's thread: about 1 ms of CPU here (preprocessing and
    the int8 40 % pruned model). The emulator calls it on its event loop, through a
    `SharedLocalModel` per recording, so a window is computed once however many wearables
    replay it.
    """
    x = model_input(
        bvp, acc, bvp_rate_hz=64, acc_rate_hz=_ACC_RATE_HZ, acc_lsb_per_g=_ACC_LSB_PER_G,
        preprocessing=session.card.input.preprocessing,
    )  # fmt: skip
    prediction = predict(session, x[None])
    return activity_on_wire(prediction.activity_probs[0], session.card.outputs.activity_classes)


def activity_on_wire(probs: npt.ArrayLike, classes: Sequence[str]) -> LocalActivity:
    """A model's (calibrated) class probabilities of one window as the summary carries them."""
    groups = group_prediction(np.asarray(probs, dtype=np.float64)[None], classes)
    group = int(groups.group[0])
    if group == int(ActivityGroup.UNKNOWN):
        # Unsure which group: send how likely the best known one is, so that it reads as unsure.
        probability = float(groups.group_probs[0].max())
    else:
        probability = float(groups.confidence[0])
    return LocalActivity(group, confidence_e4(probability))


def wire_window(
    recording: Recording, index: int, gain: float, fmt: SampleFormat
) -> tuple[npt.NDArray[np.signedinteger], npt.NDArray[np.signedinteger]]:
    """The recording's window ``index`` as the sensors give it: BVP (512,) and ACC (256, 3)
    in ``fmt``, BVP scaled by ``gain`` (`bvp_gain`)."""
    bvp_f, acc_f = recording.window(index)
    return quantise(bvp_f, gain, fmt), quantise(acc_f, 1.0, fmt).reshape(-1, 3)


class SharedLocalModel:
    """The pruned model's verdict on each window of one recording, computed once.

    The verdict is a function of the window's wire samples alone, so every wearable replaying
    the same recording in the same sample format gets the same one: a fleet of 500 wearables on
    16 recordings runs the model once per recording window instead of once per wearable and
    window (in `gatewayd emulate` it ran on the emulator's event loop, about 1 ms a window).
    Pass it as a `WearableCore`'s ``local_model``. Verdicts are kept in two small arrays, one
    entry per recording window.
    """

    def __init__(self, session: ModelSession, recording: Recording, fmt: SampleFormat) -> None:
        """Serve ``recording``'s windows in ``fmt`` from ``session`` (not run until asked)."""
        self.session = session
        self.recording = recording
        self._fmt = fmt
        self._gain = bvp_gain(recording, fmt)
        n = recording.window_count()
        self._known = np.zeros(n, dtype=np.bool_)
        self._activity = np.zeros(n, dtype=np.uint8)
        self._conf_e4 = np.zeros(n, dtype=np.uint16)
        #: How many windows the model has run on (each at most once).
        self.computed = 0

    @property
    def model_id(self) -> str:
        """The session's model id (what the info characteristic names)."""
        return self.session.model_id

    def __call__(self, index: int) -> LocalActivity:
        """The verdict on the recording's window ``index`` (run the model the first time)."""
        if not self._known[index]:
            bvp, acc = wire_window(self.recording, index, self._gain, self._fmt)
            local = local_activity(self.session, bvp, acc)
            self._activity[index], self._conf_e4[index] = local.activity, local.activity_conf_e4
            self._known[index] = True
            self.computed += 1
        return LocalActivity(int(self._activity[index]), int(self._conf_e4[index]))


@dataclass
class WearableCounters:
    """What the wearable did, for tests and the emulator's status line."""

    summaries: int = 0
    windows: int = 0
    resent: int = 0
    resend_missing: int = 0
    controls: int = 0


class WearableCore:
    """One wearable's firmware logic. Times are simulated seconds since the recording starts."""

    def __init__(
        self,
        spec: WearableSpec,
        *,
        keep_sent: bool = False,
        local_model: ModelSession | Callable[[int], LocalActivity] | None = None,
    ) -> None:
        """``local_model``: the pruned activity model (one session may serve many cores).

        Without one the activity stays unknown (255) and the offload confidence is the heart-rate
        tracker's alone. A function of the recording's window index may stand for the model:
        `gatewayd eval` gives a training run's out-of-fold answers this way.
        """
        self.spec = spec
        self.local_model = local_model
        self.tau_mbits = spec.tau_mbits
        self.min_conf_e4 = spec.min_conf_e4
        self.rest_limit_cbpm = spec.rest_limit_cbpm
        self.pruning_pct = spec.pruning_pct
        self.counters = WearableCounters()
        #: Every message produced, by seq, when ``keep_sent`` (for tests that check payloads).
        self.sent: dict[int, Message] | None = {} if keep_sent else None
        self._gain = bvp_gain(spec.recording, spec.sample_format)
        self._tracker = HrTracker()
        self._windows_total = spec.recording.window_count()
        start = min(spec.start_window, self._windows_total)
        for i in range(max(0, start - spec.worn_windows), start):
            self._tracker.update(*self.wire_samples(i))
        self._next_window = 0
        self._seq = 0
        self._ring: OrderedDict[int, Message] = OrderedDict()
        self._clock_offset_ms = float(spec.boot_unix_ms)
        self._synced = False
        #: Impact of the newest fall candidate, ms of simulated (monotonic) time: TIME_SYNC must
        #: not move it.
        self._last_fall_ms: int | None = None

    # ---- time ------------------------------------------------------------------------------

    def device_ms(self, sim_s: float) -> int:
        """The device clock at simulated time ``sim_s``, in Unix ms (or ms since boot)."""
        drift = self.spec.clock_drift_ms_per_s * sim_s
        return max(0, int(self._clock_offset_ms + sim_s * 1000.0 + drift))

    def next_window_due_s(self) -> float | None:
        """When the next window is complete (its end), or None when the recording is over."""
        if self.finished:
            return None
        return self._next_window * STEP_S + WINDOW_S

    @property
    def finished(self) -> bool:
        """Every window of the recording has been produced (never when looping, unless the
        recording has no window)."""
        if self.spec.loop and self._windows_total > 0:
            return False
        return self._next_window >= self._windows_total

    @property
    def produced(self) -> int:
        """Windows produced so far (one message each, summary or raw)."""
        return self._next_window

    @property
    def windows_total(self) -> int:
        """How many windows the recording gives (a looping replay goes on past them)."""
        return self._windows_total

    def recording_window(self, index: int) -> int:
        """The recording's window that replay window ``index`` is (start_window, wrapping)."""
        return (self.spec.start_window + index) % self._windows_total

    def battery_pct(self, sim_s: float) -> int:
        """Battery level, draining linearly with simulated time."""
        level = self.spec.battery_start_pct - self.spec.battery_drain_pct_per_h * sim_s / 3600
        return int(min(100, max(0, round(level))))

    # ---- characteristics --------------------------------------------------------------------

    def info(self) -> bytes:
        """The info characteristic value."""
        major, minor, patch = FIRMWARE_VERSION
        return encode_info(
            DeviceInfo(
                major, minor, patch, self.spec.boot_id, self.pruning_pct, 64, _ACC_RATE_HZ,
                self.spec.sample_format, _ACC_LSB_PER_G, self.tau_mbits, self.min_conf_e4,
                self._seq, self.spec.model_id,
            )
        )  # fmt: skip

    def produce(self, sim_s: float) -> list[tuple[int, bytes]]:
        """Messages for every window complete by ``sim_s``: (seq, encoded), in order."""
        out: list[tuple[int, bytes]] = []
        while (due := self.next_window_due_s()) is not None and due <= sim_s:
            message = self._window_message(self._next_window, due)
            self._next_window += 1
            self._remember(message)
            out.append((message.seq, encode_message(message)))
        return out

    def handle_control(self, data: bytes, sim_s: float) -> list[tuple[int, bytes]]:
        """Apply one control write; return messages to send now (a RESEND's answer).

        Raises DecodeError for a write the firmware rejects (answered with an ATT error).
        """
        cmd = decode_control(data)
        if isinstance(cmd, SetRestLimit) and not self.spec.knows_rest_limit:
            raise DecodeError("unknown_opcode", f"control opcode {data[1]:#04x}")
        self.counters.controls += 1
        match cmd:
            case TimeSync(unix_ms):
                drift = self.spec.clock_drift_ms_per_s * sim_s
                self._clock_offset_ms = unix_ms - sim_s * 1000.0 - drift
                self._synced = True
            case SetPolicy(tau, min_conf):
                self.tau_mbits, self.min_conf_e4 = tau, min_conf
            case SetPruning(pct):
                self.pruning_pct = pct
            case SetRestLimit(limit):
                self.rest_limit_cbpm = limit
            case Resend(first, count):
                return self._resend(first, count)
        return []

    # ---- internals -------------------------------------------------------------------------

    def _resend(self, first: int, count: int) -> list[tuple[int, bytes]]:
        out = []
        for i in range(count):
            seq = (first + i) % 2**32
            message = self._ring.get(seq)
            if message is None:
                self.counters.resend_missing += 1
                continue
            self.counters.resent += 1
            out.append((seq, encode_message(_with_flags(message, MessageFlags.RESENT))))
        return out

    def _remember(self, message: Message) -> None:
        self._ring[message.seq] = message
        while len(self._ring) > self.spec.ring_slots:
            self._ring.popitem(last=False)
        if self.sent is not None:
            self.sent[message.seq] = message

    def wire_samples(
        self, index: int
    ) -> tuple[npt.NDArray[np.signedinteger], npt.NDArray[np.signedinteger]]:
        """The recording's window ``index`` as its sensors give it: BVP (512,) and ACC (256, 3)
        in the format."""
        return wire_window(self.spec.recording, index, self._gain, self.spec.sample_format)

    def _window_message(self, replay_index: int, end_s: float) -> Message:
        fmt = self.spec.sample_format
        index = self.recording_window(replay_index)
        bvp, acc = self.wire_samples(index)
        # The firmware only has its samples: the tracker and the model see the wire's integers.
        estimate = self._tracker.update(bvp, acc)
        entropy = entropy_milli_bits(window_entropy_bits(bvp))
        if self.local_model is not None:
            local = (
                local_activity(self.local_model, bvp, acc)
                if isinstance(self.local_model, ModelSession)
                else self.local_model(index)
            )
            activity, activity_conf = local.activity, local.activity_conf_e4
        else:
            # No model: no activity, and the confidence field carries the tracker's (as the
            # offload rule's confidence would be that alone).
            activity, activity_conf = UNKNOWN_ACTIVITY, confidence_e4(estimate.confidence)
        hr = 0 if estimate.bpm is None else min(30000, round(estimate.bpm * 100))
        conf = offload_confidence_e4(
            activity_conf, estimate.quality, hr, activity, rest_limit_cbpm=self.rest_limit_cbpm
        )
        start_s = end_s - WINDOW_S
        reason = decide_offload(
            entropy, conf, self.tau_mbits, self.min_conf_e4, motion=self._motion(acc, start_s)
        )
        flags = MessageFlags(int(reason)) | motion_flags(motion_cg(acc, _ACC_LSB_PER_G))
        if self._synced:
            flags |= MessageFlags.CLOCK_SYNCED
        summary = Summary(
            seq=self._seq,
            t_ms=self.device_ms(start_s),
            flags=flags,
            activity=activity,
            pruning_pct=self.pruning_pct,
            activity_conf_e4=activity_conf,
            entropy_mbits=entropy,
            hr_cbpm=hr,
            signal_quality=estimate.quality,
            battery_pct=self.battery_pct(end_s),
            window_ms=int(WINDOW_S * 1000),
        )
        self._seq = (self._seq + 1) % 2**32
        if not reason:
            self.counters.summaries += 1
            return summary
        self.counters.windows += 1
        return Window(summary, fmt, 64, _ACC_RATE_HZ, _ACC_LSB_PER_G, bvp, acc)

    def _motion(self, acc: npt.NDArray[np.int_], start_s: float) -> bool:
        """Update the last fall candidate from this window's wire samples; offload for motion?"""
        start_ms = round(start_s * 1000)
        trigger = FallTrigger(impact_milli_g=self.spec.impact_threshold_milli_g)
        index = fall_impact_index(acc, _ACC_LSB_PER_G, _ACC_RATE_HZ, trigger)
        if index is not None:
            self._last_fall_ms = start_ms + index * 1000 // _ACC_RATE_HZ
        return motion_offload(start_ms, self._last_fall_ms, hold_ms=self.spec.motion_hold_ms)


def _with_flags(message: Message, extra: MessageFlags) -> Message:
    if isinstance(message, Window):
        return replace(
            message, summary=replace(message.summary, flags=message.summary.flags | extra)
        )
    return replace(message, flags=message.flags | extra)
