"""Energy model of the wearable, per window: MCU inference, the BLE radio and the idle floor.

Pure arithmetic: no I/O, no clock. Every constant's value and source, and the formulas, are in
docs/energy.md. The MCU is a Nordic nRF52840 (Cortex-M4F at 64 MHz, DC/DC, 3.0 V); the link is
BLE 1M PHY, encrypted, the wearable the peripheral. Energies are joules, times seconds, powers
watts.

A window is one message every ``period_s`` (the 2 s window step). Both modes run the wearable's
own cheap work (``base_cycles``: preprocessing, entropy, heart-rate tracker, offload rule):

- *local*: inference on the MCU, then a SUMMARY;
- *offloaded*: a WINDOW (the raw samples). The protocol's confidence rule needs the local model's
  output, so by default the model still ran (``infer=True``); ``infer=False`` is a wearable that
  decides on entropy alone and skips the model when it offloads.

The link costs energy in both modes: every connection event has the wearable wake and answer,
with data or with an empty packet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from gatewayd.protocol.fragments import fragment
from gatewayd.protocol.messages import SUMMARY_SIZE, WINDOW_HEADER_END
from gatewayd.signals.windows import ACC_RATE_HZ, BVP_RATE_HZ, STEP_S, WINDOW_S

#: L2CAP basic header: length and channel id (Bluetooth Core v5.x, Vol 3 Part A §3.1).
L2CAP_HEADER_SIZE: Final = 4
#: ATT notification header: opcode and handle (Vol 3 Part F §3.4.7.1).
ATT_NOTIFY_HEADER_SIZE: Final = 3
#: The CRC-32 that ends every message (docs/protocol.md §2.4).
MESSAGE_CRC_SIZE: Final = 4
_SECONDS_PER_HOUR: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Mcu:
    """The wearable's MCU: nRF52840, CPU from flash at 64 MHz, DC/DC, VDD 3.0 V."""

    clock_hz: float = 64e6
    supply_v: float = 3.0
    #: ICPU0, CoreMark from flash at 64 MHz, HFXO, DC/DC (nRF52840 PS v1.x §5.2).
    active_a: float = 3.3e-3
    #: ION_RAMON_RTC, System ON, all 256 kB RAM retained, wake on RTC (PS v1.x §5.2).
    sleep_a: float = 3.16e-6
    #: Assumption: whole-network cycles per MAC, fp32 on the FPv4-SP (VFMA.F32 is 3 cycles).
    cycles_per_mac_fp32: float = 6.0
    #: Assumption: CMSIS-NN-style int8 kernels (SMLAD does two 16-bit MACs a cycle: 0.5).
    cycles_per_mac_int8: float = 2.0

    @property
    def mcu_active_w(self) -> float:
        """CPU running, W."""
        return self.active_a * self.supply_v

    @property
    def mcu_sleep_w(self) -> float:
        """The idle floor: System ON sleep with the RTC, W."""
        return self.sleep_a * self.supply_v


@dataclass(frozen=True, slots=True)
class Radio:
    """The nRF52840 radio on BLE 1M PHY, DC/DC, VDD 3.0 V, and the link-layer framing."""

    supply_v: float = 3.0
    #: IRADIO_TX1, 0 dBm, 1 Mbps BLE, HFXO, DC/DC (PS, Radio transmitting/receiving).
    tx_a: float = 6.40e-3
    #: IRADIO_RX0, 1 Mbps BLE, HFXO, DC/DC.
    rx_a: float = 6.26e-3
    #: LE 1M: 1 Msym/s, one bit a symbol: 8 µs an octet on air (Core Vol 6 Part B §2.1).
    s_per_byte: float = 8e-6
    #: Preamble 1, access address 4, header 2, MIC 4 (encrypted link), CRC 3.
    ll_overhead_bytes: int = 14
    #: An empty PDU on air: 1 + 4 + 2 + 3 (a zero-length payload carries no MIC).
    empty_packet_bytes: int = 10
    #: Largest LL data payload with Data Length Extension (Core 4.2+); 27 without.
    ll_max_payload: int = 251
    #: Inter frame space (Core Vol 6 Part B §4.1.1); the radio is counted on (RX) through it.
    t_ifs_s: float = 150e-6
    #: Radio ramp-up before the event, default mode (PS RADIO tRXEN; 40 µs in fast mode).
    rampup_s: float = 140e-6
    #: Assumption: CPU time of the BLE stack per connection event (pre- and post-processing).
    event_cpu_s: float = 200e-6

    @property
    def radio_tx_w(self) -> float:
        """Transmitting at 0 dBm, W."""
        return self.tx_a * self.supply_v

    @property
    def radio_rx_w(self) -> float:
        """Receiving, W."""
        return self.rx_a * self.supply_v

    @property
    def radio_tx_j_per_byte(self) -> float:
        """Energy of one octet transmitted on air, J."""
        return self.radio_tx_w * self.s_per_byte


@dataclass(frozen=True, slots=True)
class Link:
    """The connection's parameters (what the central and the wearable agreed)."""

    #: ATT MTU (the emulator's default, 247: one 244-byte notification value per LL packet).
    mtu: int = 247
    #: Linux's default LE connection interval is 30-50 ms (hci_core.c); the longest is used.
    conn_interval_s: float = 0.050
    #: Peripheral latency (Linux's default 0): connection events the wearable may skip.
    peripheral_latency: int = 0
    #: Assumption: LL packets the wearable sends in one connection event at most.
    max_packets_per_event: int = 4

    def __post_init__(self) -> None:
        if not self.conn_interval_s > 0 or self.max_packets_per_event < 1:
            raise ValueError("conn_interval_s must be > 0 and max_packets_per_event >= 1")
        _non_negative(peripheral_latency=self.peripheral_latency)


@dataclass(frozen=True, slots=True)
class Battery:
    """A named battery: capacity at its nominal voltage (the chip runs from it directly)."""

    name: str = "CR2032 coin cell"
    capacity_mah: float = 225.0
    voltage_v: float = 3.0

    @property
    def energy_j(self) -> float:
        """Nominal energy, J (mAh x 3.6 C/mAh x V)."""
        return self.capacity_mah * 3.6 * self.voltage_v


def window_message_bytes(sample_bytes: int = 2) -> int:
    """Size of a WINDOW message of the default 8 s window (2604 bytes with int16 samples)."""
    _non_negative(sample_bytes=sample_bytes)
    n_bvp = round(BVP_RATE_HZ * WINDOW_S)
    n_acc = round(ACC_RATE_HZ * WINDOW_S)
    return WINDOW_HEADER_END + (n_bvp + 3 * n_acc) * sample_bytes + MESSAGE_CRC_SIZE


@dataclass(frozen=True, slots=True)
class EnergyModel:
    """All the constants of one wearable, and the per-window workload."""

    mcu: Mcu = field(default_factory=Mcu)
    radio: Radio = field(default_factory=Radio)
    link: Link = field(default_factory=Link)
    #: One message per window step.
    period_s: float = STEP_S
    #: Assumption: the work both modes do per window (preprocessing, entropy, HR tracker).
    base_cycles: float = 100_000.0
    summary_bytes: int = SUMMARY_SIZE
    window_bytes: int = field(default_factory=window_message_bytes)

    def __post_init__(self) -> None:
        if not self.period_s > 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s!r}")
        _non_negative(base_cycles=self.base_cycles)


@dataclass(frozen=True, slots=True)
class Burst:
    """What one message costs the link layer: notifications, LL packets, octets on air."""

    notifications: int
    ll_packets: int
    #: On-air octets of those LL packets, framing included.
    air_bytes: int


@dataclass(frozen=True, slots=True)
class WindowEnergy:
    """One window's energy on the wearable, by part, J."""

    compute_j: float
    radio_j: float
    idle_j: float
    #: Seconds the MCU or the radio was active in the window.
    active_s: float
    period_s: float

    @property
    def total_j(self) -> float:
        """All of it, J."""
        return self.compute_j + self.radio_j + self.idle_j

    @property
    def average_w(self) -> float:
        """Mean power over the window's period, W."""
        return self.total_j / self.period_s

    @property
    def feasible(self) -> bool:
        """The work fits in the period (else the wearable falls behind its windows)."""
        return self.active_s <= self.period_s


def _non_negative(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def inference_s(macs: float, *, int8: bool, mcu: Mcu | None = None) -> float:
    """Modelled latency of one inference of ``macs`` multiply-accumulates on the MCU, s."""
    _non_negative(macs=macs)
    mcu = mcu or Mcu()
    cycles = mcu.cycles_per_mac_int8 if int8 else mcu.cycles_per_mac_fp32
    return macs * cycles / mcu.clock_hz


def inference_j(macs: float, *, int8: bool, mcu: Mcu | None = None) -> float:
    """Energy of one inference: MCU active power x the modelled time, J."""
    mcu = mcu or Mcu()
    return mcu.mcu_active_w * inference_s(macs, int8=int8, mcu=mcu)


def burst_from_notifications(values: Sequence[int], radio: Radio | None = None) -> Burst:
    """The LL packets and on-air octets of notifications with these value sizes (bytes)."""
    radio = radio or Radio()
    packets = air = 0
    for value in values:
        _non_negative(notification_bytes=value)
        pdu = value + ATT_NOTIFY_HEADER_SIZE + L2CAP_HEADER_SIZE
        n = -(-pdu // radio.ll_max_payload)
        packets += n
        air += pdu + n * radio.ll_overhead_bytes
    return Burst(len(values), packets, air)


def message_burst(message_bytes: int, mtu: int, radio: Radio | None = None) -> Burst:
    """A message cut by the protocol's fragmenter at ``mtu``, on the link layer."""
    _non_negative(message_bytes=message_bytes)
    frags = fragment(bytes(message_bytes), 0, mtu)
    return burst_from_notifications([len(f) for f in frags], radio)


def _events(period_s: float, link: Link) -> int:
    """Connection events the wearable attends in a period (a whole number, rounding up)."""
    every = link.conn_interval_s * (1 + link.peripheral_latency)
    return math.ceil(period_s / every - 1e-9)


def radio_window(
    burst: Burst,
    period_s: float,
    *,
    link: Link | None = None,
    radio: Radio | None = None,
    mcu: Mcu | None = None,
) -> tuple[float, float]:
    """(energy J, radio-active s) of one period's link: the message's burst and keep-alives.

    Each exchange: the central's empty packet received, T_IFS, the wearable's packet sent; two
    exchanges in one event are T_IFS apart. Each event also pays ramp-up and stack CPU time. A
    period attends the keep-alive events anyway; a burst needing more events adds the rest.
    """
    link, radio, mcu = link or Link(), radio or Radio(), mcu or Mcu()
    _non_negative(period_s=period_s, packets=burst.ll_packets, air_bytes=burst.air_bytes)
    data_events = -(-burst.ll_packets // link.max_packets_per_event)
    idle_events = max(0, _events(period_s, link) - data_events)
    events = data_events + idle_events
    exchanges = burst.ll_packets + idle_events
    tx_bytes = burst.air_bytes + idle_events * radio.empty_packet_bytes
    rx_s = exchanges * radio.empty_packet_bytes * radio.s_per_byte
    ifs_s = (2 * exchanges - events) * radio.t_ifs_s
    on_rx_s = events * radio.rampup_s + rx_s + ifs_s
    energy = (
        tx_bytes * radio.radio_tx_j_per_byte
        + on_rx_s * radio.radio_rx_w
        + events * radio.event_cpu_s * mcu.mcu_active_w
    )
    active = on_rx_s + tx_bytes * radio.s_per_byte + events * radio.event_cpu_s
    return energy, active


def _window(model: EnergyModel, macs: float, int8: bool, message_bytes: int) -> WindowEnergy:
    mcu = model.mcu
    compute_s = model.base_cycles / mcu.clock_hz + inference_s(macs, int8=int8, mcu=mcu)
    burst = message_burst(message_bytes, model.link.mtu, model.radio)
    radio_j, radio_s = radio_window(
        burst, model.period_s, link=model.link, radio=model.radio, mcu=mcu
    )
    active_s = compute_s + radio_s
    idle_j = max(0.0, model.period_s - active_s) * mcu.mcu_sleep_w
    return WindowEnergy(compute_s * mcu.mcu_active_w, radio_j, idle_j, active_s, model.period_s)


def local_window(macs: float, *, int8: bool, model: EnergyModel | None = None) -> WindowEnergy:
    """A window decided on the wearable: base work, inference, a SUMMARY, idle."""
    model = model or EnergyModel()
    return _window(model, macs, int8, model.summary_bytes)


def offloaded_window(
    macs: float, *, int8: bool, infer: bool = True, model: EnergyModel | None = None
) -> WindowEnergy:
    """A window sent raw: base work, the model only if ``infer``, a WINDOW, idle."""
    model = model or EnergyModel()
    _non_negative(macs=macs)
    return _window(model, macs if infer else 0.0, int8, model.window_bytes)


def mixed_window_j(local_j: float, offloaded_j: float, offload_ratio: float) -> float:
    """Mean energy per window when a fraction ``offload_ratio`` of windows is offloaded, J."""
    _non_negative(local_j=local_j, offloaded_j=offloaded_j, offload_ratio=offload_ratio)
    if offload_ratio > 1:
        raise ValueError(f"offload_ratio must be in [0, 1], got {offload_ratio!r}")
    return (1 - offload_ratio) * local_j + offload_ratio * offloaded_j


def battery_hours(average_w: float, battery: Battery | None = None) -> float:
    """Hours a battery lasts at this mean power (its nominal energy, no losses)."""
    _non_negative(average_w=average_w)
    if average_w == 0:
        raise ValueError("average_w must be > 0")
    return (battery or Battery()).energy_j / average_w / _SECONDS_PER_HOUR
