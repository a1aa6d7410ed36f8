"""Pruners: score groups of target weights, remove the lowest, keep masks as data.

The surface is small, after torch.ao.pruning: build a pruner over named weights, feed it
gradients if it wants them (``needs_grads``), ``step(sparsity)``, read ``masks``. The math lives
in ``fisher``, ``obs`` and ``select``; this module only wires them to tensors that change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor

from obert.pruning import fisher as fisher_mod
from obert.pruning.obs import magnitude_saliency, obs_update, saliency
from obert.pruning.select import select_prune


def mask_sparsity(masks: dict[str, Tensor]) -> float:
    """The fraction of pruned (False) entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total


def group_mask(mask: Tensor, k: int) -> Tensor:
    """Per-group keep flags from a per-weight mask: a group is kept if its first weight is."""
    return mask.reshape(-1, k)[:, 0]


def weight_mask(group_keep: Tensor, shape: torch.Size, k: int) -> Tensor:
    return group_keep.repeat_interleave(k).view(shape)


class Pruner:
    """Global/per-layer pruner over a dict of named weight tensors (modified in place).

    ``k`` is the group size: 1 for unstructured, 4 for blocks of 4 along the input dimension
    (consecutive in the row-major flattening of a Linear weight [out, in]).
    """

    needs_grads = False

    def __init__(
        self, weights: dict[str, Tensor], masks: dict[str, Tensor] | None = None, k: int = 1
    ) -> None:
        for name, w in weights.items():
            if w.dim() != 2 or w.shape[1] % k:
                raise ValueError(
                    f"{name}: input dimension {tuple(w.shape)[-1]} is not a multiple of the "
                    f"group size {k}"
                )
        self.weights, self.k = weights, k
        self.masks = masks or {n: _nonzero_groups(w, k) for n, w in weights.items()}

    def sparsity(self) -> float:
        return mask_sparsity(self.masks)

    def scores(self) -> dict[str, Tensor]:
        """Flat per-group scores; pruned groups get −∞ so they stay pruned."""
        raise NotImplementedError

    def step(self, sparsity: float, scope: str = "global") -> dict[str, Tensor]:
        """Prune to ``sparsity`` (of all target groups, or of each tensor) and return the masks."""
        scores = self.scores()
        prune = select_prune(scores, sparsity, scope)
        with torch.no_grad():
            self.update(prune)
            for name, w in self.weights.items():
                keep = group_mask(self.masks[name], self.k) & ~prune[name]
                self.masks[name] = weight_mask(keep, w.shape, self.k)
                w.mul_(self.masks[name])  # pruned weights are exactly 0
        return self.masks

    def update(self, prune: dict[str, Tensor]) -> None:
        """Change the surviving weights to compensate for ``prune`` (nothing, for magnitude)."""

    def _masked(self, name: str, scores: Tensor) -> Tensor:
        keep = group_mask(self.masks[name], self.k)
        return scores.masked_fill(~keep, float("-inf"))


def _nonzero_groups(w: Tensor, k: int) -> Tensor:
    keep = (w.reshape(-1, k) != 0).any(-1)
    return weight_mask(keep, w.shape, k)


class MagnitudePruner(Pruner):
    """GMP's scorer: |w| (or a group's L2 norm), no weight update."""

    def scores(self) -> dict[str, Tensor]:
        return {
            n: self._masked(n, magnitude_saliency(w.detach().reshape(-1, self.k), self.k).reshape(-1))
            for n, w in self.weights.items()
        }


class OBSPruner(Pruner):
    """oBERT: collects the block-diagonal empirical Fisher from gradients, then prunes by OBS
    saliency and applies the OBS update to the surviving weights.

    Call ``begin()``, ``add_grads()`` m times, then ``step()``; repeat for each recomputation.
    """

    needs_grads = True

    def __init__(
        self,
        weights: dict[str, Tensor],
        masks: dict[str, Tensor] | None = None,
        k: int = 1,
        block_size: int = 50,
        damp: float = 1e-7,
        chunk: int = 4,
    ) -> None:
        if block_size % k:
            raise ValueError(f"Fisher block size {block_size} is not a multiple of group size {k}")
        super().__init__(weights, masks, k)
        self.block_size, self.damp, self.chunk = block_size, damp, chunk
        self._fishers: dict[str, fisher_mod.EmpiricalFisher] = {}
        self._finv: dict[str, Tensor] = {}

    def memory_bytes(self) -> int:
        """Bytes of the Fisher accumulators plus their gradient buffers, before allocation."""
        numels = [w.numel() for w in self.weights.values()]
        fisher = fisher_mod.fisher_memory_bytes(numels, self.block_size)
        return fisher + 4 * self.chunk * sum(numels)

    def begin(self) -> None:
        """Start a fresh Fisher estimate (one per recomputation)."""
        self._finv = {}
        self._fishers = {
            n: fisher_mod.EmpiricalFisher(w.numel(), self.block_size, self.damp, self.chunk, w.device)
            for n, w in self.weights.items()
        }

    def add_grads(self, grads: dict[str, Tensor]) -> None:
        """One mini-batch gradient per target; gradients of pruned weights are masked to 0."""
        for name, f in self._fishers.items():
            f.add_grad(grads[name] * self.masks[name])

    def fisher_inv(self, damp: float | None = None, keep: bool = False) -> dict[str, Tensor]:
        """F⁻¹ of every target from the gradients added so far (see ``EmpiricalFisher``)."""
        return {n: f.fisher_inv(damp, keep) for n, f in self._fishers.items()}

    def fisher_state(self) -> dict[str, fisher_mod.EmpiricalFisher]:
        """A copy of the gradient statistics so far (to branch, e.g. m-sweeps from one pass)."""
        return copy.deepcopy(self._fishers)

    def load_fisher_state(self, state: dict[str, fisher_mod.EmpiricalFisher]) -> None:
        self._fishers, self._finv = copy.deepcopy(state), {}

    def load_fisher_inv(self, finv: dict[str, Tensor]) -> None:
        """Use these F⁻¹ blocks for the next ``step`` instead of collected gradients."""
        self._fishers, self._finv = {}, dict(finv)

    @property
    def num_grads(self) -> int:
        return next(iter(self._fishers.values())).num_grads if self._fishers else 0

    def _blocks(self, name: str) -> tuple[Tensor, Tensor]:
        w = self.weights[name].detach().float()
        return fisher_mod.to_blocks(w, self.block_size), self._finv[name]

    def scores(self) -> dict[str, Tensor]:
        if not self._fishers and not self._finv:
            raise RuntimeError("OBSPruner.step() needs gradients: call begin() and add_grads()")
        if self._fishers:
            self._finv, self._fishers = self.fisher_inv(), {}
        out = {}
        for name in self.weights:
            wb, finv = self._blocks(name)
            s = saliency(wb, finv, self.k).reshape(-1)[: self.weights[name].numel() // self.k]
            out[name] = self._masked(name, s)
        return out

    def update(self, prune: dict[str, Tensor]) -> None:
        for name, w in self.weights.items():
            wb, finv = self._blocks(name)
            nq = wb.numel() // self.k
            p = torch.zeros(nq, dtype=torch.bool, device=w.device)
            p[: prune[name].numel()] = prune[name]
            delta = obs_update(wb, finv, p.view(wb.shape[0], -1), self.k)
            w.add_(fisher_mod.from_blocks(delta, w.shape).to(w.dtype))
        self._finv = {}  # F⁻¹ belongs to the weights it was estimated at


def build_pruner(
    method: str,
    weights: dict[str, Tensor],
    masks: dict[str, Tensor] | None = None,
    k: int = 1,
    **obs_kwargs,
) -> Pruner:
    if method == "magnitude":
        return MagnitudePruner(weights, masks, k)
    if method == "obert":
        return OBSPruner(weights, masks, k, **obs_kwargs)
    raise ValueError(f"method must be 'obert' or 'magnitude', not {method!r}")


def sparsity_schedule(start: float, target: float, recomputations: int) -> Iterable[float]:
    """The r sub-step sparsities of one step, interpolated linearly: s₀ + (s − s₀)·i/r."""
    return [start + (target - start) * i / recomputations for i in range(1, recomputations + 1)]
