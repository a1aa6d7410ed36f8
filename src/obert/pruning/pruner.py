"""Pruners: score groups of target weights, remove the lowest, update the survivors.

The surface is small, after torch.ao.pruning: a pruner works on a ``MaskSet`` (the one owner of
the masks and of the weights they cover); feed it gradients if it wants them (``needs_grads``),
then ``step(sparsity)``. The math lives in ``fisher``, ``obs`` and ``select``; the layout of the
Fisher over ranks in ``distributed``; this module only wires them to tensors that change.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from obert.pruning import fisher as fisher_mod
from obert.pruning.config import StepConfig
from obert.pruning.distributed import Comm, FisherShards
from obert.pruning.masks import MaskSet
from obert.pruning.obs import magnitude_saliency, obs_update, saliency
from obert.pruning.select import select_prune


class Pruner:
    """Global or per-tensor pruning of the weights in ``masks`` (modified in place).

    ``masks.k`` is the group size: 1 for unstructured, 4 for blocks of 4 along the input
    dimension (consecutive in the row-major flattening of a Linear weight [out, in]).
    """

    needs_grads = False  # True: feed it gradients (begin, add_grads) before each step

    def __init__(self, masks: MaskSet, comm: Comm | None = None) -> None:
        self.masks, self.weights, self.k = masks, masks.weights, masks.k
        self.comm = comm or Comm()

    def sparsity(self) -> float:
        return self.masks.sparsity()

    def scores(self) -> dict[str, Tensor]:
        """Flat per-group scores, equal on every rank; pruned groups get −∞ (stay pruned)."""
        raise NotImplementedError

    def step(self, sparsity: float, scope: str = "global") -> None:
        """Prune to ``sparsity`` (of all target groups, or of each tensor)."""
        prune = select_prune(self.scores(), sparsity, scope)
        with torch.no_grad():
            self.update(prune)
            self.masks.prune_groups(prune)
            self.masks.apply()  # pruned weights are exactly 0

    def update(self, prune: dict[str, Tensor]) -> None:
        """Change the surviving weights to compensate for ``prune`` (nothing, for magnitude)."""

    def _masked(self, name: str, scores: Tensor) -> Tensor:
        return scores.masked_fill(~self.masks.group_keep(name).to(scores.device), float("-inf"))


class MagnitudePruner(Pruner):
    """GMP's scorer: |w| (or a group's L2 norm), no weight update. Over several ranks it scores
    rank 0's weights, broadcast first, so every rank takes the same decision."""

    def scores(self) -> dict[str, Tensor]:
        with torch.no_grad():
            for w in self.weights.values():
                self.comm.broadcast(w)
        return {
            n: self._masked(n, magnitude_saliency(w.detach().reshape(-1, self.k), self.k).reshape(-1))
            for n, w in self.weights.items()
        }


class OBSPruner(Pruner):
    """oBERT: collects the block-diagonal empirical Fisher from gradients, then prunes by OBS
    saliency and applies the OBS update to the surviving weights.

    Call ``begin()``, ``add_grads()`` once per gradient round, then ``step()``; repeat for each
    recomputation. Over R ranks this rank holds only its shard of the Fisher blocks; which
    shard, and the collectives that feed it and share its results, are ``self.shards``
    (``distributed.FisherShards``). Every rank must make the same calls.
    """

    needs_grads = True

    def __init__(self, masks: MaskSet, block_size: int = 50, damp: float = 1e-7, chunk: int = 4,
                 comm: Comm | None = None) -> None:
        if block_size % masks.k:
            raise ValueError(f"Fisher block size {block_size} is not a multiple of group size "
                             f"{masks.k}")
        super().__init__(masks, comm)
        self.block_size, self.damp, self.chunk = block_size, damp, chunk
        self.shards = FisherShards({n: w.numel() for n, w in self.weights.items()}, block_size,
                                   self.comm)
        self._fishers: dict[str, fisher_mod.EmpiricalFisher] = {}
        self._finv: dict[str, Tensor] = {}
        self.failures: list[dict] = []  # factorisations that needed more damping, last estimate

    def memory_bytes(self) -> int:
        """This rank's bytes for the Fisher accumulators and gradient buffers (float64), plus
        the all-to-all buffers over several ranks; computed before allocation."""
        mine = [b - a for a, b in (self.shards.own(n) for n in self.weights)]
        return (fisher_mod.fisher_memory_bytes(mine, self.block_size) + 8 * self.chunk * sum(mine)
                + self.shards.buffer_bytes())

    def begin(self) -> None:
        """Start a fresh Fisher estimate (one per recomputation)."""
        self._finv, self.failures = {}, []
        self._fishers = {}
        for n, w in self.weights.items():
            a, b = self.shards.own(n)
            self._fishers[n] = fisher_mod.EmpiricalFisher(b - a, self.block_size, self.damp,
                                                          self.chunk, w.device)

    def add_grads(self, grads: dict[str, Tensor] | None) -> None:
        """One gradient round: this rank's mini-batch gradient per target, or None when it has
        none left. Gradients of pruned weights are masked to 0 before they enter the Fisher."""
        masked = None if grads is None else {
            n: (grads[n] * self.masks.masks[n]).reshape(-1) for n in self._fishers}
        for part in self.shards.exchange_grads(masked):
            for n, f in self._fishers.items():
                f.add_grad(part[n].to(self.weights[n].device))

    @property
    def num_grads(self) -> int:
        return next(iter(self._fishers.values())).num_grads if self._fishers else 0

    def fisher_inv(self, damp: float | None = None, keep: bool = False) -> dict[str, Tensor]:
        """F⁻¹ of this rank's shard of every target, from the gradients added so far."""
        out = {n: f.fisher_inv(damp, keep) for n, f in self._fishers.items()}
        self.failures = [{"tensor": n, **x} for n, f in self._fishers.items() for x in f.failures]
        return out

    def fisher_state(self) -> dict[str, fisher_mod.EmpiricalFisher]:
        """A copy of the gradient statistics so far (to branch, e.g. m-sweeps from one pass)."""
        return copy.deepcopy(self._fishers)

    def load_fisher_state(self, state: dict[str, fisher_mod.EmpiricalFisher]) -> None:
        self._fishers, self._finv = copy.deepcopy(state), {}

    def load_fisher_inv(self, finv: dict[str, Tensor]) -> None:
        """Use these F⁻¹ blocks (this rank's shard) for the next ``step``."""
        self._fishers, self._finv = {}, dict(finv)

    def current_fisher_inv(self) -> dict[str, Tensor]:
        """F⁻¹ for the next step: inverted now from the gradients if not yet done."""
        if not self._fishers and not self._finv:
            raise RuntimeError("OBSPruner.step() needs gradients: call begin() and add_grads()")
        if self._fishers:
            self._finv, self._fishers = self.fisher_inv(), {}
        return self._finv

    def _shard_blocks(self, name: str, finv: Tensor) -> Tensor:
        a, b = self.shards.own(name)
        w = self.weights[name].detach().reshape(-1)[a:b].to(finv.dtype)
        return fisher_mod.to_blocks(w, self.block_size)

    def scores(self) -> dict[str, Tensor]:
        finv = self.current_fisher_inv()
        local = []
        for name in self.weights:
            a, b = self.shards.own(name)
            s = saliency(self._shard_blocks(name, finv[name]), finv[name], self.k)
            local.append(s.reshape(-1)[: (b - a) // self.k].float())
        whole = self.shards.assemble_all(local, unit=self.k)
        return {n: self._masked(n, s.to(self.weights[n].device)) for n, s in whole.items()}

    def update(self, prune: dict[str, Tensor]) -> None:
        finv, new = self._finv, []
        for name, w in self.weights.items():
            a, b = self.shards.own(name)
            wb = self._shard_blocks(name, finv[name])
            p = torch.zeros(wb.numel() // self.k, dtype=torch.bool, device=wb.device)
            p[: (b - a) // self.k] = prune[name].reshape(-1)[a // self.k : b // self.k]
            delta = obs_update(wb, finv[name], p.view(wb.shape[0], -1), self.k)
            new.append((wb.reshape(-1)[: b - a] + delta.reshape(-1)[: b - a]).to(w.dtype))
        # every rank takes each shard's new weights from the rank that owns it
        for name, x in self.shards.assemble_all(new).items():
            self.weights[name].view(-1).copy_(x)
        self._finv = {}  # F⁻¹ belongs to the weights it was estimated at


def build_pruner(cfg: StepConfig, masks: MaskSet, comm: Comm | None = None) -> Pruner:
    """The pruner a step config asks for, over ``masks`` (whose k must be the config's)."""
    if masks.k != cfg.k:
        raise ValueError(f"masks are in groups of {masks.k}, the config's mask {cfg.mask} of {cfg.k}")
    if cfg.method == "magnitude":
        return MagnitudePruner(masks, comm)
    if cfg.method == "obert":
        return OBSPruner(masks, cfg.block_size, cfg.fisher.damp, comm=comm)
    raise ValueError(f"method must be 'obert' or 'magnitude', not {cfg.method!r}")


def sparsity_schedule(start: float, target: float, recomputations: int) -> list[float]:
    """The r sub-step sparsities of one step, interpolated linearly: s₀ + (s − s₀)·i/r."""
    return [start + (target - start) * i / recomputations for i in range(1, recomputations + 1)]
