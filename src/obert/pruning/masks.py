"""The one owner of pruning masks: masks as data, per group of k weights.

A ``MaskSet`` holds one boolean keep-mask per target weight (True = kept). Masks are uniform
inside each group of k consecutive weights of the row-major flattening (k = 4: four inputs of
one output row), so a group is either kept or pruned whole. One-shot pruning, gradual pruning,
QAT and sparse transfer all use it: apply it, hook it into gradients, clear the optimizer
state it made stale, save and load it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


def group_keep_from_weight(w: Tensor, k: int) -> Tensor:
    """A group is kept if any of its weights is non-zero, [numel / k] bool."""
    return (w.detach().reshape(-1, k) != 0).any(-1)


class MaskSet:
    """Keep-masks of named weight tensors (usually ``nn.Parameter`` of Linear layers)."""

    def __init__(self, weights: dict[str, Tensor], k: int = 1,
                 masks: dict[str, Tensor] | None = None) -> None:
        for name, w in weights.items():
            if w.dim() != 2 or w.shape[1] % k:
                raise ValueError(f"{name}: input dimension {tuple(w.shape)[-1]} is not a "
                                 f"multiple of the group size {k}")
        self.weights, self.k = weights, k
        if masks is None:  # weights that are exactly 0 (a sparse start) stay pruned
            masks = {n: self._expand(group_keep_from_weight(w, k), w) for n, w in weights.items()}
        self.masks = {n: masks[n].to(device=w.device, dtype=torch.bool)
                      for n, w in weights.items()}
        self._hooks: list = []

    @classmethod
    def from_model(cls, modules: dict[str, nn.Module], k: int = 1) -> MaskSet:
        """Masks over the weights of ``modules`` (name -> module, as ``find_targets`` returns
        them): what the model holds now, exact zeros pruned."""
        return cls({n: m.weight for n, m in modules.items()}, k)

    @classmethod
    def dense(cls, weights: dict[str, Tensor], k: int = 1) -> MaskSet:
        return cls(weights, k, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})

    def _expand(self, keep: Tensor, w: Tensor) -> Tensor:
        return keep.repeat_interleave(self.k).view(w.shape)

    # -- reading --------------------------------------------------------------------------
    def group_keep(self, name: str) -> Tensor:
        """Per-group keep flags, [numel / k] (masks are uniform in a group)."""
        return self.masks[name].reshape(-1, self.k)[:, 0]

    def sparsity(self) -> float:
        """The fraction of pruned weights over all targets."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total

    def clone(self) -> MaskSet:
        return MaskSet(self.weights, self.k, {n: m.clone() for n, m in self.masks.items()})

    def checksum(self) -> str:
        """A digest of the masks (and the weights they hold at 0), to compare across ranks."""
        h = hashlib.sha256()
        for name in sorted(self.masks):
            h.update(name.encode())
            h.update(self.masks[name].cpu().numpy().tobytes())
        return h.hexdigest()

    # -- changing -------------------------------------------------------------------------
    def prune_groups(self, prune: dict[str, Tensor]) -> None:
        """Mark groups pruned (True in ``prune``, [numel / k] per target); never revive one."""
        for name, p in prune.items():
            keep = self.group_keep(name) & ~p.reshape(-1).to(self.masks[name].device)
            self.masks[name] = self._expand(keep, self.weights[name])

    @torch.no_grad()
    def apply(self) -> None:
        """Pruned weights are exactly 0."""
        for name, w in self.weights.items():
            w.mul_(self.masks[name])

    def to(self, device: torch.device | str) -> MaskSet:
        self.masks = {n: m.to(device) for n, m in self.masks.items()}
        return self

    # -- training -------------------------------------------------------------------------
    def attach(self) -> None:
        """Zero the gradient of pruned weights as it is computed (so clipping and DDP see the
        masked gradient). Call once the weights sit on their training device."""
        self.detach()
        self.to(next(iter(self.weights.values())).device)
        for name, w in self.weights.items():
            if w.requires_grad:
                self._hooks.append(w.register_hook(lambda g, n=name: g * self.masks[n]))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def clear_optimizer_state(self, optimizer) -> None:
        """Adam's moments of a pruned weight would move it off 0: zero them.

        Accepts a torch optimizer or a wrapper exposing one as ``.optimizer`` (accelerate's)."""
        if optimizer is None:
            return
        opt = getattr(optimizer, "optimizer", optimizer)
        for name, w in self.weights.items():
            for v in opt.state.get(w, {}).values():
                if isinstance(v, Tensor) and v.shape == w.shape:
                    v.mul_(self.masks[name])

    # -- files ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        save_file({n: m.contiguous().cpu() for n, m in self.masks.items()}, str(path))

    def load(self, path: Path) -> None:
        """Read masks saved by ``save``; every target must be there, shaped as its weight."""
        masks = load_file(str(path))
        for name, w in self.weights.items():
            if name not in masks:
                raise ValueError(f"{path} has no mask for {name}")
            if masks[name].shape != w.shape:
                raise ValueError(f"{path}: the mask of {name} is {tuple(masks[name].shape)}, "
                                 f"the weight {tuple(w.shape)}")
        self.masks = {n: masks[n].to(device=w.device, dtype=torch.bool)
                      for n, w in self.weights.items()}
        self.apply()
