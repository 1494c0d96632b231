"""Losses, masks, modality dropout, the training loop and subject-wise cross-validation.

Activity: cross-entropy over the 3 intensity groups, windows of unknown group masked out,
groups weighted so that they count evenly as drawn (`training.data.group_weights`). Heart
rate: cross-entropy against a Gaussian-smoothed target over the 200 1-bpm bins (sigma
`HR_SIGMA_BPM`), masked wherever the window has no reference or no PPG (a set without PPG, or
a PPG dropped or swapped by the augmentation below). The estimate is the expected bin centre.

Windows are drawn with replacement, sources balanced by `training.data.sample_probabilities`.
Two augmentations of PPG-bearing windows, so that the activity head reads the motion and not
the pulse, and "no PPG" names neither a dataset nor a label:

- *modality dropout* (``ppg_dropout``): the BVP and ``ppg`` channels are zeroed exactly as for a
  set without PPG (`preprocess_window(..., has_bvp=False)`), HR loss masked;
- *BVP swap* (``ppg_swap``): the BVP channel is replaced by the BVP of another PPG window of the
  batch (any activity), the activity label kept, HR loss masked. A resting wrist with a fast
  pulse must stay "rest" (the tachycardia-at-rest alert depends on it).

Pruned models are fine-tuned by distillation from the full model: the hard-label loss plus
T^2 * KL between the teacher's and the student's softened logits (activity on every window,
HR on the windows whose PPG is present).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import nn
from tqdm import tqdm

from gatewayd.activity import GROUP_NAMES
from gatewayd.inference.cards import HR_BIN_COUNT
from training.baseline import fit_hgb, fit_logistic, hgb_proba
from training.data import (
    BVP_CHANNEL,
    NO_ACTIVITY,
    PPG_FLAG_CHANNEL,
    SOURCE_BALANCE_POWER,
    WindowSet,
    group_weights,
    sample_probabilities,
    show_progress,
    split,
    subject_folds,
)
from training.leakage import LeakageResult, leakage_check
from training.model import HR_CENTRES, MobileNetV2_1D
from training.nets import DEFAULT_ARCH, build_model

log = logging.getLogger(__name__)

#: Standard deviation of the Gaussian HR target in bpm (bins are 1 bpm wide).
HR_SIGMA_BPM: Final = 2.0
#: Distillation temperature and the weight of the distillation term.
KD_TEMPERATURE: Final = 2.0
KD_WEIGHT: Final = 1.0
N_GROUPS: Final = len(GROUP_NAMES)

__all__ = [
    "CvResult",
    "FoldResult",
    "History",
    "TrainConfig",
    "augment_batch",
    "cross_validate",
    "hard_loss",
    "hr_target",
    "kd_loss",
    "predict",
    "seed_everything",
    "show_progress",
    "train_model",
]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)  # legacy global state, for third-party code
    torch.manual_seed(seed)
    # Cheap on CPU: every op this model uses has a deterministic kernel.
    torch.use_deterministic_algorithms(True)


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained."""

    epochs: int
    lr: float = 3e-3
    batch: int = 64
    seed: int = 0
    #: Share of PPG windows whose PPG is dropped, and share whose BVP is swapped, per batch.
    ppg_dropout: float = 0.3
    ppg_swap: float = 0.3
    source_power: float = SOURCE_BALANCE_POWER
    balance_groups: bool = True
    #: Weight of the HR loss against the activity loss.
    hr_weight: float = 1.0


def hr_target(hr_bpm: torch.Tensor, sigma: float = HR_SIGMA_BPM) -> torch.Tensor:
    """Return Gaussian-smoothed target distributions (N, 200) centred on ``hr_bpm``."""
    centres = HR_CENTRES.to(hr_bpm.device)
    clamped = hr_bpm.clamp(float(centres[0]), float(centres[-1]))
    logits = -0.5 * ((centres[None, :] - clamped[:, None]) / sigma) ** 2
    return torch.softmax(logits, dim=1)


def hard_loss(
    act_logits: torch.Tensor,
    hr_logits: torch.Tensor,
    activity: torch.Tensor,
    hr: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (activity loss, HR loss), each over the windows that have the label (NaN HR: none)."""
    act_mask = activity != NO_ACTIVITY
    hr_mask = ~torch.isnan(hr)
    zero = act_logits.sum() * 0.0 + hr_logits.sum() * 0.0
    if act_mask.any():
        act_loss = F.cross_entropy(act_logits[act_mask], activity[act_mask], weight=class_weights)
    else:
        act_loss = zero
    if hr_mask.any():
        target = hr_target(hr[hr_mask])
        hr_loss = -(target * F.log_softmax(hr_logits[hr_mask], dim=1)).sum(1).mean()
    else:
        hr_loss = zero
    return act_loss, hr_loss


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, t: float = KD_TEMPERATURE
) -> torch.Tensor:
    """Return T^2 * KL(teacher || student) on logits softened by temperature ``t``."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def augment_batch(
    x: torch.Tensor,
    hr: torch.Tensor,
    has_bvp: torch.Tensor,
    *,
    ppg_dropout: float,
    ppg_swap: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop or swap the PPG of a share of a batch's PPG windows.

    Returns the new inputs, the HR labels (NaN wherever the window's own PPG is not in its
    input) and a mask of the windows whose own PPG is there (for HR distillation).
    """
    n = x.shape[0]
    u = torch.rand(n, generator=generator)
    drop = has_bvp & (u < ppg_dropout)
    swap = has_bvp & ~drop & (u < ppg_dropout + ppg_swap)
    out = x.clone()
    donors = torch.nonzero(has_bvp).flatten()
    if bool(swap.any()) and len(donors) >= 2:
        pick = donors[torch.randint(len(donors), (int(swap.sum()),), generator=generator)]
        out[swap, BVP_CHANNEL] = x[pick, BVP_CHANNEL]
    out[drop, BVP_CHANNEL] = 0.0
    out[drop, PPG_FLAG_CHANNEL] = 0.0
    own_ppg = has_bvp & ~drop & ~swap
    hr_out = torch.where(own_ppg, hr, torch.full_like(hr, float("nan")))
    return out, hr_out, own_ppg


@dataclass
class History:
    """Per-epoch mean losses: training (augmented, weighted) and held out (as recorded)."""

    train: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        """Return the curves as JSON-ready lists."""
        return {"train": list(self.train), "val": list(self.val)}


def predict(
    model: nn.Module, x: npt.NDArray[np.float32], batch: int = 256
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return (activity logits, hr logits) of windows (N, 7, 256) in eval mode."""
    model.eval()
    acts, hrs = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            a, h = model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])))
            acts.append(a.numpy())
            hrs.append(h.numpy())
    if not acts:
        return np.zeros((0, N_GROUPS), np.float32), np.zeros((0, HR_BIN_COUNT), np.float32)
    return np.concatenate(acts), np.concatenate(hrs)


def eval_loss(model: nn.Module, ws: WindowSet) -> float:
    """Return the unweighted activity + HR loss of ``ws`` as it is (no augmentation)."""
    act, hr = predict(model, ws.x)
    with torch.no_grad():
        a, h = hard_loss(
            torch.from_numpy(act),
            torch.from_numpy(hr),
            torch.from_numpy(ws.activity),
            torch.from_numpy(ws.hr_bpm),
        )
    return float(a + h)


def train_model(
    model: nn.Module,
    train: WindowSet,
    val: WindowSet | None,
    cfg: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    desc: str = "train",
) -> History:
    """Train ``model`` in place (AdamW, one-cycle schedule); distil from ``teacher`` if given."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(train.x))
    act = torch.from_numpy(train.activity)
    hr = torch.from_numpy(train.hr_bpm)
    has_bvp = torch.from_numpy(train.has_bvp)
    probs = sample_probabilities(train, cfg.source_power)
    weights = (
        torch.from_numpy(group_weights(train.activity, probs)).float()
        if cfg.balance_groups
        else None
    )
    draw = torch.from_numpy(probs)
    steps = max(1, -(-len(train) // cfg.batch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    if teacher is not None:
        teacher.eval()
    history = History()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.multinomial(draw, steps * cfg.batch, replacement=True, generator=gen)
        total, seen = 0.0, 0
        bar = tqdm(
            range(steps),
            desc=f"{desc} {epoch + 1}/{cfg.epochs}",
            disable=not show_progress(),
            leave=False,
        )
        for s in bar:
            idx = order[s * cfg.batch : (s + 1) * cfg.batch]
            xb, hrb, own = augment_batch(
                x[idx],
                hr[idx],
                has_bvp[idx],
                ppg_dropout=cfg.ppg_dropout,
                ppg_swap=cfg.ppg_swap,
                generator=gen,
            )
            a_logits, h_logits = model(xb)
            a_loss, h_loss = hard_loss(a_logits, h_logits, act[idx], hrb, weights)
            loss = a_loss + cfg.hr_weight * h_loss
            if teacher is not None:
                with torch.no_grad():
                    ta, th = teacher(xb)
                kd = kd_loss(a_logits, ta) + kd_loss(h_logits[own], th[own])
                loss = loss + KD_WEIGHT * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            opt.step()
            sched.step()
            value = float(loss.detach())
            total += value * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{value:.3f}")
        history.train.append(total / max(seen, 1))
        if val is not None and len(val):
            history.val.append(eval_loss(model, val))
        log.info(
            "%s epoch %d/%d: train loss %.4f%s",
            desc,
            epoch + 1,
            cfg.epochs,
            history.train[-1],
            f", held-out loss {history.val[-1]:.4f}" if history.val else "",
        )
    model.eval()
    return history


Pruner = Callable[[MobileNetV2_1D, float], MobileNetV2_1D]


@dataclass
class FoldResult:
    """One fold: who was held out, which windows, and the loss curves of its models."""

    held_out: tuple[str, ...]
    val_idx: npt.NDArray[np.int64]
    history: History
    prune_history: dict[int, History] = field(default_factory=dict)
    #: The fold's trained models by pruning percentage (0: the full model), when kept.
    models: dict[int, nn.Module] = field(default_factory=dict)


@dataclass
class CvResult:
    """Every fold, and the out-of-fold (held-out) outputs of every window.

    Each window is held out in exactly one fold; its row in the arrays below comes from that
    fold's models, which never saw its subject.
    """

    folds: list[FoldResult]
    description: str
    #: Fold index of every window, (N,).
    fold_of: npt.NDArray[np.int64]
    #: Per pruning percentage (0: the full model): activity (N, 3) and HR (N, 200) logits.
    act_logits: dict[int, npt.NDArray[np.float32]]
    hr_logits: dict[int, npt.NDArray[np.float32]]
    #: Per baseline ("hgb", "logistic"): class probabilities (N, 3); "majority": a class (N,).
    baseline_probs: dict[str, npt.NDArray[np.float64]]
    majority: npt.NDArray[np.int64]
    #: Per pruning percentage: the BVP-swap check on held-out rest windows.
    leakage: dict[int, LeakageResult]


def cross_validate(
    ws: WindowSet,
    cfg: TrainConfig,
    *,
    folds: int,
    width: float,
    arch: str = DEFAULT_ARCH,
    prune_pcts: Sequence[int] = (),
    prune_cfg: TrainConfig | None = None,
    pruner: Pruner | None = None,
    baselines: bool = True,
    keep_models: bool = False,
) -> CvResult:
    """Train one model per subject-wise fold and score it (and its pruned copies) held out.

    ``arch`` names the network (`training.nets.ARCHITECTURES`); only MobileNetV2-1D is pruned.
    ``keep_models`` keeps each fold's models in its `FoldResult` (to export them).
    """
    if prune_pcts and arch != DEFAULT_ARCH:
        raise ValueError(f"pruning is for {DEFAULT_ARCH} only, not {arch}")
    groups = subject_folds(ws.subjects, folds, cfg.seed)
    n = len(ws)
    fold_of = np.full(n, -1, dtype=np.int64)
    pcts = (0, *prune_pcts)
    act_out = {p: np.full((n, N_GROUPS), np.nan, np.float32) for p in pcts}
    hr_out = {p: np.full((n, HR_BIN_COUNT), np.nan, np.float32) for p in pcts}
    base_out = {k: np.full((n, N_GROUPS), np.nan) for k in ("hgb", "logistic")}
    majority = np.full(n, -1, dtype=np.int64)
    leak_parts: dict[int, list[LeakageResult]] = {p: [] for p in pcts}
    results = []
    for k, held in enumerate(groups):
        train_idx, val_idx = split(ws, held)
        train, val = ws.subset(train_idx), ws.subset(val_idx)
        fold_of[val_idx] = k
        log.info("fold %d/%d: held out %s (%d windows)", k + 1, len(groups), held, len(val))
        fold_cfg = replace(cfg, seed=cfg.seed + k)
        torch.manual_seed(cfg.seed + k)
        model = build_model(arch, width, in_channels=int(ws.x.shape[1]))
        history = train_model(model, train, val, fold_cfg, desc=f"fold {k + 1}")
        fold = FoldResult(held, val_idx, history)
        models: dict[int, nn.Module] = {0: model}
        for pct in prune_pcts:
            assert pruner is not None
            assert prune_cfg is not None
            assert isinstance(model, MobileNetV2_1D)
            student = pruner(model, pct / 100.0)
            p_cfg = replace(prune_cfg, seed=cfg.seed + k)
            fold.prune_history[pct] = train_model(
                student, train, val, p_cfg, teacher=model, desc=f"fold {k + 1} p{pct}"
            )
            models[pct] = student
        for pct, m in models.items():
            a, h = predict(m, val.x)
            act_out[pct][val_idx] = a
            hr_out[pct][val_idx] = h
            leak_parts[pct].append(leakage_check(m, val, seed=cfg.seed + k))
            labelled = val.activity != NO_ACTIVITY
            acc = float(np.mean(a.argmax(1)[labelled] == val.activity[labelled]))
            log.info("fold %d p%d held out: group accuracy %.3f", k + 1, pct, acc)
        if keep_models:
            fold.models = models
        labelled = train.activity != NO_ACTIVITY
        majority[val_idx] = int(np.bincount(train.activity[labelled], minlength=N_GROUPS).argmax())
        if baselines:
            hgb = fit_hgb(train, cfg.seed, cfg.source_power)
            base_out["hgb"][val_idx] = hgb_proba(hgb, val.features)
            lin = fit_logistic(train, cfg.source_power)
            base_out["logistic"][val_idx] = lin.predict_proba(val.features)
        results.append(fold)
    kind = "leave-one-subject-out" if len(groups) == len(ws.subjects) else f"{len(groups)} folds"
    return CvResult(
        folds=results,
        description=f"{kind} by subject ({len(ws.subjects)} subjects)",
        fold_of=fold_of,
        act_logits=act_out,
        hr_logits=hr_out,
        baseline_probs=base_out if baselines else {},
        majority=majority,
        leakage={p: LeakageResult.concat(parts) for p, parts in leak_parts.items()},
    )
