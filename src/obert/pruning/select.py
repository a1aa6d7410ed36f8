"""Which groups to remove in a pruning step: global or per-tensor ranking of saliency scores."""

from __future__ import annotations

import torch
from torch import Tensor


def select_prune(scores: dict[str, Tensor], sparsity: float, scope: str = "global") -> dict[str, Tensor]:
    """Mark the lowest-scoring groups so that a ``sparsity`` fraction of groups is removed.

    ``scores`` maps each target to a flat tensor of per-group scores. Groups pruned earlier must
    score −∞, so they stay pruned and count toward the target. ``global`` ranks all candidates of
    every target together (one threshold); ``layer`` prunes each target to ``sparsity`` alone.
    Returns boolean tensors shaped like the scores: True where the group is pruned.
    """
    if scope == "layer":
        return {name: _lowest(s, round(sparsity * s.numel())) for name, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}")
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    chosen = _lowest(flat, round(sparsity * flat.numel()))
    return dict(zip(names, chosen.split([scores[n].numel() for n in names]), strict=True))


def _lowest(scores: Tensor, n: int) -> Tensor:
    """Boolean mask of the n lowest scores (ties broken by position; NaN ranks last)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    n = max(n, int(torch.isneginf(scores).sum()))  # never revive a pruned group
    if n > 0:
        s = torch.nan_to_num(scores.float(), nan=float("inf"))
        idx = torch.sort(s.reshape(-1), stable=True).indices[:n]
        out[idx] = True
    return out.view(scores.shape)
