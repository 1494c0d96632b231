"""The wearable's energy model (gatewayd/energy.py): its arithmetic, by hand, from its constants."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from gatewayd import energy
from gatewayd.energy import (
    Battery,
    Burst,
    EnergyModel,
    Link,
    Mcu,
    Radio,
    battery_hours,
    burst_from_notifications,
    inference_j,
    inference_s,
    local_window,
    message_burst,
    mixed_window_j,
    offloaded_window,
    radio_window,
    window_message_bytes,
)
from gatewayd.protocol.messages import SampleFormat, encode_message
from tests.test_protocol_messages import make_window

MCU = Mcu()
RADIO = Radio()
#: The wearable's default model: pruned 40 %, int8 (its card's MACs).
P40_MACS = 8_549_240


def test_constants_are_the_documented_datasheet_figures() -> None:
    assert MCU.mcu_active_w == pytest.approx(3.3e-3 * 3.0)
    assert MCU.mcu_sleep_w == pytest.approx(3.16e-6 * 3.0)
    assert RADIO.radio_tx_w == pytest.approx(6.40e-3 * 3.0)
    assert RADIO.radio_rx_w == pytest.approx(6.26e-3 * 3.0)
    # 8 µs an octet at 1 Msym/s: 19.2 mW x 8 µs.
    assert RADIO.radio_tx_j_per_byte == pytest.approx(1.536e-7)


def test_inference_time_is_macs_times_cycles_over_clock() -> None:
    assert inference_s(64_000_000, int8=True) == pytest.approx(2.0)  # 2 cycles/MAC, 64 MHz
    assert inference_s(64_000_000, int8=False) == pytest.approx(6.0)
    assert inference_s(P40_MACS, int8=True) == pytest.approx(P40_MACS * 2 / 64e6)
    assert inference_s(0, int8=True) == 0.0
    fast = Mcu(clock_hz=128e6, cycles_per_mac_int8=1.0)
    assert inference_s(64_000_000, int8=True, mcu=fast) == pytest.approx(0.5)


def test_inference_energy_is_active_power_times_time() -> None:
    assert inference_j(P40_MACS, int8=True) == pytest.approx(9.9e-3 * P40_MACS * 2 / 64e6)
    assert inference_j(1_000_000, int8=False) == pytest.approx(
        3 * inference_j(1_000_000, int8=True)
    )


def test_a_bigger_model_costs_more_time_and_energy() -> None:
    assert inference_s(2_000_000, int8=True) > inference_s(1_000_000, int8=True)
    assert local_window(2_000_000, int8=True).total_j > local_window(1_000_000, int8=True).total_j
    # Same MACs: fp32 costs more than int8.
    assert local_window(P40_MACS, int8=False).total_j > local_window(P40_MACS, int8=True).total_j


def test_window_message_size_matches_the_codec() -> None:
    assert window_message_bytes() == 2604 == len(encode_message(make_window()))
    int8 = make_window(SampleFormat.INT8)
    assert window_message_bytes(sample_bytes=1) == 1324 == len(encode_message(int8))


def test_fragment_counts_follow_the_protocol() -> None:
    # docs/protocol.md §3: at MTU 247 a chunk is 240 bytes; 2604 bytes travel in 11 notifications.
    window = message_burst(2604, 247)
    assert (window.notifications, window.ll_packets) == (11, 11)
    # Ten full notifications of 244-byte values and a last one of 4 + 204 bytes; each LL packet
    # carries the value, the ATT (3) and L2CAP (4) headers and 14 octets of framing.
    assert window.air_bytes == 10 * (244 + 7 + 14) + (208 + 7 + 14)
    summary = message_burst(32, 247)
    assert summary == Burst(1, 1, 36 + 7 + 14)
    # MTU 23: 16-byte chunks, so 163 notifications for the window.
    assert message_burst(2604, 23).notifications == 163


def test_a_notification_longer_than_the_ll_payload_needs_more_packets() -> None:
    no_dle = Radio(ll_max_payload=27)
    burst = burst_from_notifications([244], no_dle)
    assert burst.ll_packets == 10  # 251 bytes of L2CAP PDU in 27-byte payloads
    assert burst.air_bytes == 251 + 10 * 14
    assert burst_from_notifications([244]).ll_packets == 1


def test_radio_energy_by_hand() -> None:
    link = Link(conn_interval_s=0.5, max_packets_per_event=4)
    burst = Burst(notifications=1, ll_packets=1, air_bytes=100)
    joules, active = radio_window(burst, 2.0, link=link)
    # 4 events: one with the packet, three keep-alives with an empty packet each.
    tx_bytes = 100 + 3 * 10
    exchanges, events = 4, 4
    rx_on = events * 140e-6 + exchanges * 80e-6 + (2 * exchanges - events) * 150e-6
    expected = tx_bytes * 1.536e-7 + rx_on * 6.26e-3 * 3 + events * 200e-6 * 9.9e-3
    assert joules == pytest.approx(expected)
    assert active == pytest.approx(rx_on + tx_bytes * 8e-6 + events * 200e-6)


def test_energy_of_n_more_bytes_is_n_times_the_per_byte_energy() -> None:
    link = Link(conn_interval_s=1.0)
    small, _ = radio_window(Burst(1, 1, 100), 2.0, link=link)
    large, _ = radio_window(Burst(1, 1, 350), 2.0, link=link)
    assert large - small == pytest.approx(250 * RADIO.radio_tx_j_per_byte)


def test_a_burst_longer_than_the_keepalives_adds_events() -> None:
    link = Link(conn_interval_s=1.0, max_packets_per_event=2)
    one, _ = radio_window(Burst(2, 2, 0), 2.0, link=link)  # 1 data event + 1 keep-alive
    many, _ = radio_window(Burst(6, 6, 0), 2.0, link=link)  # 3 data events, no keep-alive
    per_event = RADIO.rampup_s * RADIO.radio_rx_w + RADIO.event_cpu_s * MCU.mcu_active_w
    per_exchange = (
        RADIO.empty_packet_bytes * RADIO.s_per_byte * RADIO.radio_rx_w
        + 2 * RADIO.t_ifs_s * RADIO.radio_rx_w
    )
    keepalive_tx = RADIO.empty_packet_bytes * RADIO.radio_tx_j_per_byte
    # From (2 events, 3 exchanges) to (3 events, 6 exchanges); the keep-alive's empty packet goes.
    ifs_correction = -(3 - 2) * RADIO.t_ifs_s * RADIO.radio_rx_w
    expected = per_event + 3 * per_exchange + ifs_correction - keepalive_tx
    assert many - one == pytest.approx(expected)


def test_peripheral_latency_skips_keepalive_events() -> None:
    busy, _ = radio_window(Burst(0, 0, 0), 2.0, link=Link(conn_interval_s=0.05))
    lazy, _ = radio_window(
        Burst(0, 0, 0), 2.0, link=Link(conn_interval_s=0.05, peripheral_latency=3)
    )
    assert lazy == pytest.approx(busy / 4)


def test_window_totals_by_part() -> None:
    model = EnergyModel()
    w = local_window(P40_MACS, int8=True, model=model)
    compute_s = 100_000 / 64e6 + inference_s(P40_MACS, int8=True)
    assert w.compute_j == pytest.approx(compute_s * 9.9e-3)
    radio_j, radio_s = radio_window(message_burst(32, 247), 2.0)
    assert w.radio_j == pytest.approx(radio_j)
    assert w.active_s == pytest.approx(compute_s + radio_s)
    assert w.idle_j == pytest.approx((2.0 - compute_s - radio_s) * 3.16e-6 * 3.0)
    assert w.total_j == pytest.approx(w.compute_j + w.radio_j + w.idle_j)
    assert w.average_w == pytest.approx(w.total_j / 2.0)
    assert w.feasible


def test_offloading_sends_the_window_and_may_skip_the_model() -> None:
    local = local_window(P40_MACS, int8=True)
    offloaded = offloaded_window(P40_MACS, int8=True)
    skipped = offloaded_window(P40_MACS, int8=True, infer=False)
    # The model ran in both: the difference is the radio (and the idle time it took).
    assert offloaded.compute_j == pytest.approx(local.compute_j)
    assert offloaded.radio_j > local.radio_j
    assert skipped.compute_j == pytest.approx(100_000 / 64e6 * 9.9e-3)
    assert skipped.total_j < local.total_j  # sending 2604 bytes is cheaper than 8.5 M MACs
    assert offloaded_window(0, int8=True).total_j == pytest.approx(skipped.total_j)


def test_a_model_slower_than_the_period_is_not_feasible() -> None:
    w = local_window(64_000_000, int8=True)  # 2 s of inference in a 2 s period
    assert not w.feasible
    assert w.idle_j == 0.0


def test_mixed_energy_is_linear_and_monotonic_in_the_offload_ratio() -> None:
    assert mixed_window_j(1.0, 3.0, 0.0) == 1.0
    assert mixed_window_j(1.0, 3.0, 1.0) == 3.0
    assert mixed_window_j(1.0, 3.0, 0.25) == pytest.approx(1.5)
    local = local_window(P40_MACS, int8=True).total_j
    raw = offloaded_window(P40_MACS, int8=True).total_j
    sweep = [mixed_window_j(local, raw, r / 10) for r in range(11)]
    assert sweep == sorted(sweep)
    assert sweep[0] < sweep[-1]
    gated = offloaded_window(P40_MACS, int8=True, infer=False).total_j
    falling = [mixed_window_j(local, gated, r / 10) for r in range(11)]
    assert falling == sorted(falling, reverse=True)


def test_battery_life_arithmetic() -> None:
    cell = Battery()
    assert cell.energy_j == pytest.approx(225 * 3.6 * 3.0)  # 2430 J
    assert battery_hours(2430 / 3600) == pytest.approx(1.0)
    assert battery_hours(1e-3, Battery("test", capacity_mah=100, voltage_v=3.7)) == pytest.approx(
        100 * 3.6 * 3.7 / 1e-3 / 3600
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: inference_s(-1, int8=True),
        lambda: inference_s(math.nan, int8=True),
        lambda: inference_j(-5, int8=False),
        lambda: local_window(-1, int8=True),
        lambda: offloaded_window(-1, int8=True, infer=False),
        lambda: message_burst(-1, 247),
        lambda: message_burst(32, 10),  # MTU below 23
        lambda: burst_from_notifications([-3]),
        lambda: radio_window(Burst(1, -1, 10), 2.0),
        lambda: radio_window(Burst(1, 1, 10), -2.0),
        lambda: mixed_window_j(-1.0, 1.0, 0.5),
        lambda: mixed_window_j(1.0, 1.0, -0.1),
        lambda: mixed_window_j(1.0, 1.0, 1.5),
        lambda: battery_hours(-1.0),
        lambda: battery_hours(0.0),
        lambda: window_message_bytes(-2),
        lambda: Link(conn_interval_s=0),
        lambda: Link(max_packets_per_event=0),
        lambda: Link(peripheral_latency=-1),
        lambda: EnergyModel(period_s=0),
        lambda: EnergyModel(base_cycles=-1),
    ],
)
def test_negative_or_impossible_inputs_are_rejected(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=r"must|MTU"):
        call()


def test_the_module_is_pure() -> None:
    text = Path(energy.__file__).read_text(encoding="utf-8")
    for forbidden in ("import time", "import os", "open(", "datetime", "asyncio", "logging"):
        assert forbidden not in text
