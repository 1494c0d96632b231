"""Losses, the training loop, evaluation, subject-wise cross-validation and the plots.

Activity: cross-entropy over the 9 PPG-DaLiA classes, windows without a label (TROIKA) masked
out. Heart rate: cross-entropy against a Gaussian-smoothed target over the 200 1-bpm bins
(sigma `HR_SIGMA_BPM`), windows without a reference masked out; the estimate is the expected
bin centre. Pruned models are fine-tuned by distillation from the full model: the hard-label
loss plus T^2 * KL between the teacher's and the student's softened logits on both heads.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import nn
from tqdm import tqdm

from gatewayd.inference.cards import ACTIVITY_CLASSES, HR_BIN_COUNT
from training.data import NO_ACTIVITY, WindowSet, split, subject_folds
from training.model import HR_CENTRES, MobileNetV2_1D, hr_estimate_np

log = logging.getLogger(__name__)

#: Standard deviation of the Gaussian HR target in bpm (bins are 1 bpm wide).
HR_SIGMA_BPM: Final = 2.0
#: Distillation temperature and the weight of the distillation term.
KD_TEMPERATURE: Final = 2.0
KD_WEIGHT: Final = 1.0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)  # legacy global state, for third-party code
    torch.manual_seed(seed)
    # Cheap on CPU: every op this model uses has a deterministic kernel.
    torch.use_deterministic_algorithms(True)


def show_progress() -> bool:
    """Return True when progress bars should be drawn (stderr is a terminal)."""
    return sys.stderr.isatty() and not os.environ.get("GATEWAYD_NO_PROGRESS")


def hr_target(hr_bpm: torch.Tensor, sigma: float = HR_SIGMA_BPM) -> torch.Tensor:
    """Return Gaussian-smoothed target distributions (N, 200) centred on ``hr_bpm``."""
    centres = HR_CENTRES.to(hr_bpm.device)
    clamped = hr_bpm.clamp(float(centres[0]), float(centres[-1]))
    logits = -0.5 * ((centres[None, :] - clamped[:, None]) / sigma) ** 2
    return torch.softmax(logits, dim=1)


def hard_loss(
    act_logits: torch.Tensor, hr_logits: torch.Tensor, activity: torch.Tensor, hr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (activity loss, HR loss), each averaged over the windows that have the label."""
    act_mask = activity != NO_ACTIVITY
    hr_mask = ~torch.isnan(hr)
    zero = act_logits.sum() * 0.0
    act_loss = F.cross_entropy(act_logits[act_mask], activity[act_mask]) if act_mask.any() else zero
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


@dataclass
class History:
    """Per-epoch mean losses."""

    train: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)


def _tensors(ws: WindowSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(ws.x)),
        torch.from_numpy(ws.activity),
        torch.from_numpy(ws.hr_bpm),
    )


def predict(
    model: nn.Module, x: npt.NDArray[np.float32], batch: int = 256
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return (activity logits, hr logits) of windows (N, 4, 512) in eval mode."""
    model.eval()
    acts, hrs = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            a, h = model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])))
            acts.append(a.numpy())
            hrs.append(h.numpy())
    if not acts:
        return np.zeros((0, len(ACTIVITY_CLASSES)), np.float32), np.zeros(
            (0, HR_BIN_COUNT), np.float32
        )
    return np.concatenate(acts), np.concatenate(hrs)


@dataclass(frozen=True)
class Evaluation:
    """Held-out figures of one model on one set of windows."""

    loss: float
    activity_top1: float | None
    hr_mae_bpm: float | None
    activity_true: npt.NDArray[np.int64]
    activity_pred: npt.NDArray[np.int64]
    windows: int
    #: |HR estimate - reference| of every window with a reference, and its source.
    hr_abs_err: npt.NDArray[np.float64]
    hr_source: npt.NDArray[np.str_]

    def hr_mae_by_source(self) -> dict[str, float]:
        """Return the HR MAE of each source ("troika", "synthetic", ...)."""
        return {
            str(src): float(self.hr_abs_err[self.hr_source == src].mean())
            for src in np.unique(self.hr_source)
        }

    def as_dict(self) -> dict[str, float]:
        """Return the figures that are defined, for a model card's per-fold list."""
        out = {"windows": float(self.windows)}
        if self.activity_top1 is not None:
            out["activity_top1"] = self.activity_top1
        if self.hr_mae_bpm is not None:
            out["hr_mae_bpm"] = self.hr_mae_bpm
        for src, mae in self.hr_mae_by_source().items():
            out[f"hr_mae_bpm_{src}"] = mae
        return out


def evaluate_logits(
    act_logits: npt.NDArray[np.float32], hr_logits: npt.NDArray[np.float32], ws: WindowSet
) -> Evaluation:
    """Score logits against the labels of ``ws``."""
    with torch.no_grad():
        a, h = hard_loss(
            torch.from_numpy(act_logits),
            torch.from_numpy(hr_logits),
            torch.from_numpy(ws.activity),
            torch.from_numpy(ws.hr_bpm),
        )
    labelled = ws.activity != NO_ACTIVITY
    has_hr = ~np.isnan(ws.hr_bpm)
    pred = act_logits.argmax(1).astype(np.int64)
    top1 = float(np.mean(pred[labelled] == ws.activity[labelled])) if labelled.any() else None
    err = np.abs(hr_estimate_np(hr_logits[has_hr]) - ws.hr_bpm[has_hr])
    sources = np.array([key.split(":", 1)[0] for key in ws.subjects], dtype=np.str_)
    return Evaluation(
        loss=float(a + h),
        activity_top1=top1,
        hr_mae_bpm=float(err.mean()) if has_hr.any() else None,
        activity_true=ws.activity[labelled],
        activity_pred=pred[labelled],
        windows=len(ws),
        hr_abs_err=err,
        hr_source=sources[ws.subject[has_hr]] if len(sources) else np.array([], np.str_),
    )


def evaluate(model: nn.Module, ws: WindowSet) -> Evaluation:
    """Score ``model`` on ``ws``."""
    return evaluate_logits(*predict(model, ws.x), ws)


def train_model(
    model: nn.Module,
    train: WindowSet,
    val: WindowSet | None,
    *,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch: int = 64,
    teacher: nn.Module | None = None,
    desc: str = "train",
) -> History:
    """Train ``model`` in place (AdamW, one-cycle schedule); distil from ``teacher`` if given."""
    gen = torch.Generator().manual_seed(seed)
    x, act, hr = _tensors(train)
    steps = max(1, -(-len(train) // batch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    if teacher is not None:
        teacher.eval()
    history = History()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        bar = tqdm(
            range(steps),
            desc=f"{desc} {epoch + 1}/{epochs}",
            disable=not show_progress(),
            leave=False,
        )
        for s in bar:
            idx = order[s * batch : (s + 1) * batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            a_logits, h_logits = model(x[idx])
            a_loss, h_loss = hard_loss(a_logits, h_logits, act[idx], hr[idx])
            loss = a_loss + h_loss
            if teacher is not None:
                with torch.no_grad():
                    ta, th = teacher(x[idx])
                loss = loss + KD_WEIGHT * (kd_loss(a_logits, ta) + kd_loss(h_logits, th))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            opt.step()
            sched.step()
            value = float(loss.detach())
            total += value * len(idx)
            bar.set_postfix(loss=f"{value:.3f}")
        history.train.append(total / len(train))
        if val is not None and len(val):
            history.val.append(evaluate(model, val).loss)
        log.info(
            "%s epoch %d/%d: train loss %.4f%s",
            desc,
            epoch + 1,
            epochs,
            history.train[-1],
            f", val loss {history.val[-1]:.4f}" if history.val else "",
        )
    model.eval()
    return history


@dataclass
class FoldResult:
    """One fold: who was held out, the losses, and the held-out figures per pruning level."""

    held_out: tuple[str, ...]
    history: History
    evaluations: dict[int, Evaluation]


@dataclass
class CvResult:
    """All folds."""

    folds: list[FoldResult]
    description: str

    def summary(self, pct: int = 0) -> dict[str, float | None]:
        """Return held-out activity top-1 and HR MAE (overall and per source), pooled."""
        evals = [f.evaluations[pct] for f in self.folds if pct in f.evaluations]
        true = np.concatenate([e.activity_true for e in evals])
        pred = np.concatenate([e.activity_pred for e in evals])
        err = np.concatenate([e.hr_abs_err for e in evals])
        src = np.concatenate([e.hr_source for e in evals])
        out: dict[str, float | None] = {
            "activity_top1": float(np.mean(true == pred)) if len(true) else None,
            "activity_windows": float(len(true)),
            "hr_mae_bpm": float(err.mean()) if len(err) else None,
            "hr_windows": float(len(err)),
        }
        for s in np.unique(src):
            out[f"hr_mae_bpm_{s}"] = float(err[src == s].mean())
            out[f"hr_windows_{s}"] = float(np.sum(src == s))
        return out


Pruner = Callable[[MobileNetV2_1D, float], MobileNetV2_1D]


def cross_validate(
    ws: WindowSet,
    *,
    folds: int,
    epochs: int,
    width: float,
    seed: int,
    prune_pcts: Sequence[int] = (),
    prune_epochs: int = 1,
    pruner: Pruner | None = None,
) -> CvResult:
    """Train one model per subject-wise fold and score it (and its pruned copies) held out."""
    groups = subject_folds(ws.subjects, folds, seed)
    results = []
    for k, held in enumerate(groups):
        train_idx, val_idx = split(ws, held)
        train, val = ws.subset(train_idx), ws.subset(val_idx)
        log.info("fold %d/%d: held out %s (%d windows)", k + 1, len(groups), held, len(val))
        torch.manual_seed(seed + k)
        model = MobileNetV2_1D(width)
        history = train_model(model, train, val, epochs=epochs, seed=seed + k, desc=f"fold {k + 1}")
        evals = {0: evaluate(model, val)}
        for pct in prune_pcts:
            assert pruner is not None
            student = pruner(model, pct / 100.0)
            train_model(
                student,
                train,
                None,
                epochs=prune_epochs,
                seed=seed + k,
                teacher=model,
                lr=1e-3,
                desc=f"fold {k + 1} p{pct}",
            )
            evals[pct] = evaluate(student, val)
        for pct, e in evals.items():
            log.info("fold %d p%d held out: %s", k + 1, pct, e.as_dict())
        results.append(FoldResult(held, history, evals))
    kind = "leave-one-subject-out" if len(groups) == len(ws.subjects) else f"{len(groups)} folds"
    return CvResult(results, f"{kind} by subject ({len(ws.subjects)} subjects)")
