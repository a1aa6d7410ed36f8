"""Optimal Brain Surgeon saliency and weight update for single weights and k-blocks (PAPER.md §1).

All functions work on one tensor cut into Fisher blocks: ``w`` is [nb, B] (see
``fisher.to_blocks``) and ``finv`` is the matching [nb, B, B] block-diagonal F⁻¹. A group Q is
k consecutive weights of the flattened tensor; k = 1 is the single-weight case. B must be a
multiple of k, so no group straddles two Fisher blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _groups(x: Tensor, k: int) -> Tensor:
    nb, b = x.shape
    if b % k:
        raise ValueError(f"Fisher block size {b} is not a multiple of the group size {k}")
    return x.view(nb, b // k, k)


def finv_diag_blocks(finv: Tensor, k: int) -> Tensor:
    """[F⁻¹]_QQ for every group Q: the k×k blocks on F⁻¹'s diagonal, [nb, B/k, k, k]."""
    nb, b, _ = finv.shape
    nq = b // k
    # view [nb, nq, k, nq, k] and keep the (q, q) pairs
    return finv.view(nb, nq, k, nq, k).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)


def _finv_qq_solve(w: Tensor, finv: Tensor, k: int) -> Tensor:
    """([F⁻¹]_QQ)⁻¹ w_Q for every group, [nb, B/k, k]."""
    wq = _groups(w, k)
    if k == 1:
        return wq / finv.diagonal(dim1=1, dim2=2).unsqueeze(-1)
    sub = finv_diag_blocks(finv, k)
    return torch.linalg.solve(sub, wq.unsqueeze(-1)).squeeze(-1)


def saliency(w: Tensor, finv: Tensor, k: int = 1) -> Tensor:
    """The loss increase of removing each group, [nb, B/k].

    Single weight:  ρ_j = w_j² / (2·[F⁻¹]_jj)
    Group Q:        ρ_Q = ½·w_Qᵀ ([F⁻¹]_QQ)⁻¹ w_Q
    """
    return 0.5 * (_groups(w, k) * _finv_qq_solve(w, finv, k)).sum(-1)


def obs_update(w: Tensor, finv: Tensor, prune: Tensor, k: int = 1) -> Tensor:
    """The summed optimal update δw for removing all groups where ``prune`` [nb, B/k] is True.

    Single weight:  δw = −(w_j / [F⁻¹]_jj)·F⁻¹ e_j
    Group Q:        δw = −F⁻¹ E_Qᵀ ([F⁻¹]_QQ)⁻¹ w_Q
    Several groups in one step: the sum of their updates (cross-terms ignored). The caller
    then sets the pruned weights to exactly 0.
    """
    v = _finv_qq_solve(w, finv, k) * prune.unsqueeze(-1)
    return -torch.bmm(finv, v.reshape(w.shape).unsqueeze(-1)).squeeze(-1)


def magnitude_saliency(w: Tensor, k: int = 1) -> Tensor:
    """GMP's score: |w_j| for single weights, the group's L2 norm for k-blocks, [nb, B/k]."""
    wq = _groups(w, k)
    return wq.abs().squeeze(-1) if k == 1 else wq.norm(dim=-1)
