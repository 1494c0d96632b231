"""Is the activity read off the heart rate? The BVP-swap check on held-out rest windows.

A resting wrist with a fast pulse is the tachycardia-at-rest alert the gateway exists for; a
model that calls it "vigorous" because the pulse is fast would hide it. The check takes the
held-out rest windows that have PPG, replaces their BVP channel (a) by the BVP of a held-out
vigorous window of the same fold and (b) by a synthetic fast pulse (140-170 bpm, a generated
waveform, not measured), keeps their ACC, and records how often the predicted group changes.
Any change of input flips some windows near a decision boundary, so each test has a control
that changes the BVP without raising the rate: (a') the BVP of another held-out rest window,
(b') the same generator at 55-75 bpm. What the pulse rate itself does is the test minus its
control.
The BVP channel of the model input depends on the BVP alone (`preprocess_window` filters and
z-scores it by itself), so replacing the channel is the same as preprocessing the swapped
window. The HR head's estimate before and after is recorded too: it should follow the new pulse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from gatewayd.signals.preprocess import preprocess_window
from training.data import BVP_CHANNEL, WindowSet
from training.model import hr_estimate_np

REST: Final = 0
VIGOROUS: Final = 2
#: The synthetic pulses' rate ranges, bpm: fast (the test) and resting (its control).
FAST_PULSE_BPM: Final = (140.0, 170.0)
SLOW_PULSE_BPM: Final = (55.0, 75.0)


def synthetic_fast_pulse(n: int, seed: int) -> npt.NDArray[np.float32]:
    """Return ``n`` preprocessed BVP channels (n, 256) of a generated 140-170 bpm pulse."""
    return synthetic_pulse(n, seed, FAST_PULSE_BPM)


def synthetic_pulse(n: int, seed: int, bpm_range: tuple[float, float]) -> npt.NDArray[np.float32]:
    """Return ``n`` preprocessed BVP channels (n, 256) of a generated pulse in ``bpm_range``."""
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 64.0
    out = np.empty((n, 256), dtype=np.float32)
    still = np.zeros((256, 3))
    for i in range(n):
        bpm = rng.uniform(*bpm_range)
        # A slowly wandering rate and a pulse shape with two harmonics, like a wrist BVP.
        rate = bpm / 60.0 * (1.0 + 0.02 * np.sin(2 * np.pi * 0.1 * t + rng.uniform(0, 6.3)))
        phase = 2 * np.pi * np.cumsum(rate) / 64.0 + rng.uniform(0, 2 * np.pi)
        wave = np.sin(phase) + 0.45 * np.sin(2 * phase + 0.8) + 0.15 * np.sin(3 * phase + 1.6)
        wave += 0.05 * rng.standard_normal(t.shape)
        out[i] = preprocess_window(wave, still)[BVP_CHANNEL]
    return out


def _predict(
    model: nn.Module, x: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    model.eval()
    groups, rates = [np.zeros(0, np.int64)], [np.zeros(0)]
    with torch.no_grad():
        for i in range(0, len(x), 256):
            a, h = model(torch.from_numpy(np.ascontiguousarray(x[i : i + 256])))
            groups.append(a.numpy().argmax(1).astype(np.int64))
            rates.append(hr_estimate_np(h.numpy()))
    return np.concatenate(groups), np.concatenate(rates)


@dataclass(frozen=True)
class LeakageResult:
    """Per tested rest window: its source, the predicted group and HR before and after."""

    source: npt.NDArray[np.str_]
    before: npt.NDArray[np.int64]
    #: -1 where the fold held out no vigorous PPG window to take the BVP from.
    after_real: npt.NDArray[np.int64]
    after_synthetic: npt.NDArray[np.int64]
    #: The controls: another rest window's BVP (-1 if none), a generated resting pulse.
    after_control_real: npt.NDArray[np.int64]
    after_control_synthetic: npt.NDArray[np.int64]
    hr_before: npt.NDArray[np.float64]
    hr_after_real: npt.NDArray[np.float64]
    hr_after_synthetic: npt.NDArray[np.float64]
    #: The reference HR of the window whose BVP was put in (NaN if none).
    donor_ref_bpm: npt.NDArray[np.float64]

    @staticmethod
    def concat(parts: Sequence[LeakageResult]) -> LeakageResult:
        """Join the results of several folds."""
        names = (
            "source",
            "before",
            "after_real",
            "after_synthetic",
            "after_control_real",
            "after_control_synthetic",
            "hr_before",
            "hr_after_real",
            "hr_after_synthetic",
            "donor_ref_bpm",
        )
        if not parts:
            return LeakageResult.empty()
        return LeakageResult(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})

    @staticmethod
    def empty() -> LeakageResult:
        """Return a result with no windows."""
        i, f = np.zeros(0, np.int64), np.zeros(0)
        return LeakageResult(np.zeros(0, np.str_), i, i, i, i, i, f, f, f, f)

    def summary(self) -> dict[str, dict[str, float | None]]:
        """Return, per source and over all, how often the group changes and where it goes."""
        out: dict[str, dict[str, float | None]] = {}
        for name in (*sorted(set(self.source.tolist())), "all"):
            sel = np.ones(len(self.source), bool) if name == "all" else self.source == name
            real = sel & (self.after_real >= 0)
            row: dict[str, float | None] = {
                "rest_windows": float(sel.sum()),
                "predicted_rest_before": _share(self.before[sel] == REST),
            }
            for key, after, hr_after, mask in (
                ("real", self.after_real, self.hr_after_real, real),
                ("synthetic_pulse", self.after_synthetic, self.hr_after_synthetic, sel),
            ):
                row[f"{key}_windows"] = float(mask.sum())
                row[f"{key}_changed"] = _share(after[mask] != self.before[mask])
                row[f"{key}_to_vigorous"] = _share(
                    (after[mask] == VIGOROUS) & (self.before[mask] != VIGOROUS)
                )
                row[f"{key}_predicted_rest_after"] = _share(after[mask] == REST)
                row[f"{key}_hr_before_bpm"] = _mean(self.hr_before[mask])
                row[f"{key}_hr_after_bpm"] = _mean(hr_after[mask])
            control = sel & (self.after_control_real >= 0)
            row["control_real_windows"] = float(control.sum())
            row["control_real_changed"] = _share(
                self.after_control_real[control] != self.before[control]
            )
            row["control_real_to_vigorous"] = _share(
                (self.after_control_real[control] == VIGOROUS) & (self.before[control] != VIGOROUS)
            )
            row["control_synthetic_changed"] = _share(
                self.after_control_synthetic[sel] != self.before[sel]
            )
            row["control_synthetic_to_vigorous"] = _share(
                (self.after_control_synthetic[sel] == VIGOROUS) & (self.before[sel] != VIGOROUS)
            )
            row["real_donor_ref_bpm"] = _mean(self.donor_ref_bpm[real])
            out[name] = row
        return out


def _share(mask: npt.NDArray[np.bool_]) -> float | None:
    return float(np.mean(mask)) if mask.size else None


def _mean(values: npt.NDArray[np.float64]) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def leakage_check(model: nn.Module, held_out: WindowSet, seed: int) -> LeakageResult:
    """Swap the BVP of ``held_out``'s rest windows with PPG; record predictions before/after."""
    rng = np.random.default_rng(seed)
    rest = np.flatnonzero((held_out.activity == REST) & held_out.has_bvp)
    donors = np.flatnonzero((held_out.activity == VIGOROUS) & held_out.has_bvp)
    x = held_out.x[rest]
    before, hr_before = _predict(model, x)
    after_real = np.full(len(rest), -1, np.int64)
    hr_real = np.full(len(rest), np.nan)
    donor_ref = np.full(len(rest), np.nan)
    if len(donors) and len(rest):
        pick = donors[rng.integers(len(donors), size=len(rest))]
        swapped = x.copy()
        swapped[:, BVP_CHANNEL] = held_out.x[pick, BVP_CHANNEL]
        after_real, hr_real = _predict(model, swapped)
        donor_ref = held_out.hr_bpm[pick].astype(np.float64)
    control_real = np.full(len(rest), -1, np.int64)
    if len(rest) >= 2:
        # Another rest window's BVP: a derangement, so no window keeps its own.
        other = rest[(np.arange(len(rest)) + 1 + rng.integers(len(rest) - 1)) % len(rest)]
        swapped = x.copy()
        swapped[:, BVP_CHANNEL] = held_out.x[other, BVP_CHANNEL]
        control_real, _ = _predict(model, swapped)
    synthetic = x.copy()
    slow = x.copy()
    if len(rest):
        synthetic[:, BVP_CHANNEL] = synthetic_fast_pulse(len(rest), seed)
        slow[:, BVP_CHANNEL] = synthetic_pulse(len(rest), seed, SLOW_PULSE_BPM)
    after_syn, hr_syn = _predict(model, synthetic)
    control_syn, _ = _predict(model, slow)
    return LeakageResult(
        source=held_out.source_names()[rest],
        before=before,
        after_real=after_real,
        after_synthetic=after_syn,
        after_control_real=control_real,
        after_control_synthetic=control_syn,
        hr_before=hr_before,
        hr_after_real=hr_real,
        hr_after_synthetic=hr_syn,
        donor_ref_bpm=donor_ref,
    )
