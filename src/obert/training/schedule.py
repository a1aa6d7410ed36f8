"""Gradual-pruning schedules: when to prune, to what sparsity, and the learning rate per step.

Pure functions of numbers (no model, no Trainer), so each equation can be read and tested
alone. Epochs are mapped to optimizer steps by ``epoch_to_step``; everything after that is in
optimizer steps, which is what the training loop counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def pruning_epochs(start: float, end: float, frequency: float) -> list[float]:
    """The epochs of the pruning steps: start, start + f, …, up to and always including end."""
    if end <= start:
        return [start]
    tol = 1e-3  # epochs: rounding in a YAML file must not add or drop a step
    n = math.floor((end - start + tol) / frequency)
    epochs = [start + i * frequency for i in range(n + 1)]
    if end - epochs[-1] > tol:
        epochs.append(end)
    else:
        epochs[-1] = end
    return epochs


def cubic_sparsity(t: float, s_0: float, s_f: float) -> float:
    """s_t = s_f + (s_0 − s_f)(1 − t)³ for t ∈ [0, 1] (Zhu & Gupta's cubic schedule).

    t = 0 gives the initial step s_0 (the large first jump), t = 1 gives exactly s_f.
    """
    t = min(max(t, 0.0), 1.0)
    return s_f if t == 1.0 else s_f + (s_0 - s_f) * (1.0 - t) ** 3


def linear_sparsity(t: float, s_0: float, s_f: float) -> float:
    """s_t = s_0 + (s_f − s_0)·t."""
    t = min(max(t, 0.0), 1.0)
    return s_f if t == 1.0 else s_0 + (s_f - s_0) * t


def sparsity_targets(
    start: float, end: float, frequency: float, s_0: float, s_f: float, interpolation: str = "cubic"
) -> list[tuple[float, float]]:
    """(epoch, sparsity) of every pruning step; the last one is exactly ``s_f``."""
    fn = {"cubic": cubic_sparsity, "linear": linear_sparsity}[interpolation]
    epochs = pruning_epochs(start, end, frequency)
    span = end - start
    return [(e, fn((e - start) / span if span > 0 else 1.0, s_0, s_f)) for e in epochs]


def epoch_to_step(epoch: float, steps_per_epoch: int) -> int:
    """The optimizer step at which ``epoch`` ends (a pruning step fires after that many steps)."""
    return int(round(epoch * steps_per_epoch))


def lr_at(
    step: int,
    cycle_starts: list[int],
    total_steps: int,
    lr_max: float,
    lr_min: float,
    warmup_steps: int = 0,
) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under cyclic linear decay.

    Each cycle [a, b) starts at ``lr_max`` (a pruning step rewinds it) and decays linearly to
    ``lr_min`` at b, the next cycle's start or ``total_steps``. ``cycle_starts = [0]`` is plain
    linear decay. The first ``warmup_steps`` of the run ramp linearly up to ``lr_max``.
    """
    if step < warmup_steps:
        return lr_max * (step + 1) / warmup_steps
    starts = sorted({s for s in cycle_starts if 0 <= s < total_steps} | {0})
    a = max(s for s in starts if s <= step)
    later = [s for s in starts if s > step]
    b = later[0] if later else total_steps
    a = max(a, warmup_steps) if a == 0 else a  # decay begins after the warm-up
    if b <= a:
        return lr_min
    return lr_max - (lr_max - lr_min) * (step - a) / (b - a)


@dataclass(frozen=True)
class StepPlan:
    """A recipe turned into optimizer steps."""

    steps_per_epoch: int
    total_steps: int
    prune_at: dict[int, float]  # optimizer step -> target sparsity after that step
    cycle_starts: list[int]
    qat_start: int | None = None  # optimizer steps from here on train INT8 (fake quant)

    @property
    def pretrain_steps(self) -> int:
        """The steps before QAT (all of them without QAT)."""
        return self.total_steps if self.qat_start is None else self.qat_start

    @property
    def final_sparsity(self) -> float:
        return self.prune_at[max(self.prune_at)] if self.prune_at else 0.0


def plan_steps(
    steps_per_epoch: int,
    epochs: float,
    targets: list[tuple[float, float]],
    cyclic: bool,
) -> StepPlan:
    """Map (epoch, sparsity) pruning steps to optimizer steps; rewind points if ``cyclic``.
    ``epochs`` 0 (QAT alone) plans no step."""
    total = max(1, int(math.ceil(epochs * steps_per_epoch - 1e-9))) if epochs > 0 else 0
    prune_at: dict[int, float] = {}
    for epoch, s in targets:
        step = min(epoch_to_step(epoch, steps_per_epoch), total)
        prune_at[step] = max(s, prune_at.get(step, 0.0))  # two epochs on one step: the later
    starts = sorted(s for s in prune_at if s < total) if cyclic else []
    return StepPlan(steps_per_epoch, total, prune_at, [0, *starts])
